// raftcache client API.
//
// The seed's API (CacheEntry, get, remove) is kept with the same names, field ids and types.
// The seed's `set` is spelled `put` because `set` is a reserved word in Thrift IDL.
// Evolution rule: only new methods, new optional fields and new exceptions are ever added,
// so a client built from an older copy of this file keeps working against a newer server.

namespace py cache
namespace rs cache

struct CacheEntry {
    1: required string key,
    2: required string value,
    /// On writes: time to live in milliseconds (absent: no expiry). On reads: the milliseconds
    /// left (absent for a key without expiry). The leader fixes the absolute expiry when it
    /// proposes the write, so every replica agrees on it.
    3: optional i64 ttl_ms,
}

/// `get` of a key that does not exist.
exception KeyNotFound {
    1: required string key,
}

/// The request itself is wrong (a key or value over its size limit, a bad argument).
/// Retrying the same request will fail the same way.
exception InvalidRequest {
    1: required string message,
}

/// The cluster could not serve the request within the request deadline: no leader, no quorum,
/// or this node is shutting down. A write that failed this way may or may not have been applied.
exception Unavailable {
    1: required string message,
}

enum Consistency {
    /// Read this node's replica as it is now; may be stale on a lagging follower.
    LOCAL = 0,
    /// Return a value at least as new as every write acknowledged before the read started.
    LINEARIZABLE = 1,
}

struct ReadOptions {
    1: optional Consistency consistency = Consistency.LOCAL,
    /// Answer only once this node has applied at least this log index (a `WriteResult.index`),
    /// waiting up to the request deadline, then `Unavailable`: read-your-writes on any replica.
    2: optional i64 min_index,
}

/// A write of several keys, as one log entry.
struct WriteResult {
    /// The log index of the write: usable as `ReadOptions.min_index`.
    1: required i64 index,
    /// `put_many`: entries written; `remove_many`: keys that existed.
    2: required i32 count,
}

/// The cache is at its capacity (`--max-bytes`, `--max-keys`) and evicts nothing
/// (`--eviction none`): the write was not applied.
exception CacheFull {
    1: required string message,
}

/// Counters of one node. Keys and bytes are the replicated state (the same on every replica at
/// the same applied index). Expired and evicted are counted by every replica as it applies the
/// leader's sweeps and evictions, but are not carried in snapshots: a replica that installed a
/// snapshot counts from 0 again. Hits and misses count this node's reads.
struct CacheStats {
    1: required i64 keys,
    2: required i64 bytes,
    3: required i64 hits,
    4: required i64 misses,
    5: required i64 expired,
    6: required i64 evicted,
    7: required i64 applied_index,
}

/// An admin call without the right admin token (`--admin-token` on the server), or a wrong
/// client token given to `authenticate`.
exception Unauthorized {
    1: required string message,
}

/// An admin change that was refused and not made: it would break a safety rule (the message
/// says which, and whether `force` overrides it), another change is in progress, or an
/// argument is wrong.
exception AdminRefused {
    1: required string message,
}

struct Member {
    1: required i64 id,
    2: required string peer_addr,
    3: required bool voter,
    /// Where clients reach this member; absent when the membership does not record it.
    4: optional string client_addr,
}

struct NodeStatus {
    1: required i64 id,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    2: required string role,
    3: optional i64 leader,
    4: required i64 term,
    5: required i64 last_log_index,
    6: required i64 last_applied,
    7: required list<Member> members,
    /// Log flushes (fsyncs) this node has made since it started.
    8: optional i64 log_flushes,
    /// The cluster this node belongs to; absent while it waits to be added to one.
    9: optional string cluster_id,
    /// True when the membership is changing (a joint configuration is in effect).
    10: optional bool membership_changing,
}

/// One member as the leader sees it (`admin_members`).
struct MemberState {
    1: required i64 id,
    2: required string peer_addr,
    /// Empty when neither the membership nor the member itself told it.
    3: required string client_addr,
    4: required bool voter,
    /// Whether its peer port answered the leader just now (the leader itself: true).
    5: required bool reachable,
    /// How many log entries it is behind the leader's last one; absent when the leader has
    /// not replicated anything to it yet.
    6: optional i64 lag,
}

struct Membership {
    1: required i64 leader,
    2: required i64 last_log_index,
    /// True while a change is in progress (joint configuration).
    3: required bool changing,
    4: required list<MemberState> members,
}

enum AdminOp {
    /// Add node `id` at `peer_addr` as a learner (a non-voting replica).
    ADD_LEARNER = 1,
    /// Make learner `id` a voter.
    PROMOTE = 2,
    /// Make voter `id` a learner.
    DEMOTE = 3,
    /// Remove voter or learner `id` (the leader included).
    REMOVE_NODE = 4,
    /// Replace voter `id` by learner `new_id`, in one joint-consensus change.
    REPLACE_NODE = 5,
    /// Hand the leadership to voter `id` (refused for a learner, or a voter more than 1000
    /// entries behind unless `force`); answers once `id` leads.
    TRANSFER_LEADER = 6,
}

struct AdminChange {
    1: required AdminOp op,
    2: required i64 id,
    3: optional string peer_addr,
    4: optional i64 new_id,
    /// Make the change even though a safety rule refuses it.
    5: optional bool force = false,
}

/// A backup being read from a node (`admin_backup_begin`): the node's snapshot covering
/// everything it had applied when asked, kept for `admin_backup_read` until `admin_backup_end`
/// or until it goes unread for the node's --idle-timeout-ms.
struct BackupInfo {
    1: required string backup_id,
    /// The cluster the data comes from.
    2: required string cluster_id,
    /// The node that serves it.
    3: required i64 node_id,
    /// The log index it covers: every write up to it, none after.
    4: required i64 index,
    /// Length of its data, in bytes.
    5: required i64 bytes,
}

service CacheService {
    CacheEntry get(1: string key)
        throws (1: KeyNotFound not_found, 2: InvalidRequest invalid, 3: Unavailable unavailable),
    bool put(1: CacheEntry entry)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// True when the key existed. A remove that raftcache retried internally after a change of
    /// leader (its first attempt's outcome unknown) answers false if the first attempt had
    /// already removed the key: the key is gone either way.
    bool remove(1: string key)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    CacheEntry get_with(1: string key, 2: ReadOptions options)
        throws (1: KeyNotFound not_found, 2: InvalidRequest invalid, 3: Unavailable unavailable),
    NodeStatus status(),
    /// Builds a snapshot on this node now (and compacts its log behind it); returns the log
    /// index it covers, at least everything applied here when the call was made.
    /// Without a token: refused with Unauthorized when the server has an admin token (use
    /// admin_snapshot_with).
    i64 admin_snapshot()
        throws (1: Unavailable unavailable, 2: Unauthorized unauthorized),
    /// The membership as the leader sees it (asked of the leader if this node does not lead).
    /// `token` is the admin token, empty if the server has none.
    Membership admin_members(1: string token)
        throws (1: Unavailable unavailable, 2: Unauthorized unauthorized),
    /// Changes the membership through the leader (joint consensus); returns the membership
    /// once the change is committed.
    Membership admin_change(1: AdminChange change, 2: string token)
        throws (1: AdminRefused refused, 2: Unavailable unavailable, 3: Unauthorized unauthorized),
    /// admin_snapshot with the admin token (empty if the server has none).
    i64 admin_snapshot_with(1: string token)
        throws (1: Unavailable unavailable, 2: Unauthorized unauthorized),
    /// The entries of `keys` that exist, in request order.
    list<CacheEntry> get_many(1: list<string> keys, 2: ReadOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    /// All or nothing, one log entry; `count` = entries written.
    WriteResult put_many(1: list<CacheEntry> entries)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// All or nothing, one log entry; `count` = keys that existed.
    WriteResult remove_many(1: list<string> keys)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    /// Writes only if the key is absent (or expired); true when it wrote.
    bool put_if_absent(1: CacheEntry entry)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// Writes only if the key exists with exactly `expected_value`; true when it wrote.
    bool compare_and_put(1: string key, 2: string expected_value, 3: CacheEntry entry)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// Adds `delta` to the key's decimal integer value (absent: 0), stores and returns the sum.
    /// A value that is not an integer, or an overflow, is InvalidRequest and changes nothing.
    i64 increment(1: string key, 2: i64 delta)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// Keys with `prefix`, in byte order, after `start_after` (empty: from the start), at most
    /// `limit` (capped by the server's --max-scan-items).
    list<CacheEntry> scan(1: string prefix, 2: string start_after, 3: i32 limit, 4: ReadOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    CacheStats stats(),
    /// Starts a backup of this node's whole data set at one index, taken while writes go on
    /// (`raftcache admin backup`). `token` is the admin token, empty if the server has none.
    BackupInfo admin_backup_begin(1: string token)
        throws (1: Unavailable unavailable, 2: Unauthorized unauthorized),
    /// Up to `max_bytes` (at most 4 MiB) of the backup's data from `offset`; empty at the end.
    binary admin_backup_read(1: string token, 2: string backup_id, 3: i64 offset, 4: i32 max_bytes)
        throws (1: InvalidRequest invalid, 2: Unauthorized unauthorized),
    /// Releases the backup's data on the node.
    void admin_backup_end(1: string token, 2: string backup_id)
        throws (1: Unauthorized unauthorized),
    /// Presents the client token of a node started with `--client-auth token`, once per
    /// connection, before any other call: until then every call on the connection is refused
    /// (InvalidRequest where the method declares it, Unauthorized for admin calls, an
    /// application exception for `status` and `stats`). A wrong token is Unauthorized. A node
    /// without client tokens accepts any, so clients can send one before the nodes require it.
    void authenticate(1: string token)
        throws (1: Unauthorized unauthorized),
}
