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

/// What a write did.
struct WriteResult {
    /// The log index of the write: usable as `ReadOptions.min_index`.
    1: required i64 index,
    /// `put_many`: entries written; `remove_many`: keys that existed; `put_with`,
    /// `put_bytes`: 1; `remove_with`: 1 if the key existed; `put_if_absent_with`,
    /// `compare_and_put_with`: 1 if it wrote; `increment_with`: 1.
    2: required i32 count,
    /// `increment_with`: the new value.
    3: optional i64 value,
    /// True when this is the answer of an earlier attempt of the same request (same
    /// `WriteOptions.client_id` and `seq`), returned instead of applying it again.
    4: optional bool repeated,
}

/// Makes a write exactly-once across retries. A client picks a random, non-zero `client_id`
/// once, numbers its writes 1, 2, 3, ... (`seq`), and sends a write again after a timeout or
/// an `Unavailable` with the same `client_id` and `seq`, on any node: the cluster applies it
/// once and answers every attempt with the first answer (`WriteResult.repeated`). The answers
/// are kept, replicated and in snapshots, for `--session-ttl-ms` after the client's last write
/// and for at most `--max-sessions` clients (the least recently seen is forgotten first); a
/// retry that comes later is applied again. Without `client_id` a write is applied each time
/// it is sent (the seed's behaviour).
struct WriteOptions {
    1: optional i64 client_id,
    /// Positive; increasing per client id.
    2: optional i64 seq,
    /// Every write of this client numbered below this has had its answer: the cluster may
    /// forget those answers (absent or 0: keep them while they fit, at most
    /// --max-session-answers per client).
    3: optional i64 lowest_unanswered,
}

/// A key and a value of any bytes (`put_bytes`, `get_bytes`): a pickled object, a protobuf.
/// `binary` and `string` are the same bytes on the wire; a value that is not UTF-8 text can
/// only be read back with `get_bytes` (a `get` of it is InvalidRequest).
struct ByteEntry {
    1: required string key,
    2: required binary value,
    /// As in `CacheEntry`.
    3: optional i64 ttl_ms,
}

/// A `watch` asked for changes older than what the node keeps (`--watch-history-bytes` of
/// recent changes, kept in memory since the node started or last installed a snapshot).
/// Read the keys again (`scan`, after noting `stats().applied_index`) and watch from that index.
exception Compacted {
    1: required string message,
    /// The smallest `after_index` the node can answer now.
    2: required i64 oldest_index,
}

enum EventKind {
    /// The key was written (`value` holds the new value).
    PUT = 1,
    /// The key was removed by a client.
    REMOVE = 2,
    /// The key expired (its TTL ran out).
    EXPIRE = 3,
    /// The key was evicted to make room (`--eviction lru`).
    EVICT = 4,
}

/// One change of one key.
struct WatchEvent {
    /// The log entry that made it.
    1: required i64 index,
    /// Its place among the changes of that entry, from 1.
    2: required i32 offset,
    3: required EventKind kind,
    4: required string key,
    /// PUT: the new value (its bytes: decode text as UTF-8).
    5: optional binary value,
    /// PUT with a TTL: when the key expires (milliseconds since the Unix epoch, the leader's
    /// clock).
    6: optional i64 expires_at_ms,
}

/// The changes a `watch` found, and where the next `watch` resumes.
struct WatchResult {
    1: required list<WatchEvent> events,
    /// Pass as the next call's `after_index` and `after_offset`: then nothing is missed and
    /// nothing repeated. It moves on even when no event matched.
    2: required i64 resume_index,
    3: required i32 resume_offset,
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
    /// `put` with `WriteOptions` (exactly-once retries); answers the write's log index.
    WriteResult put_with(1: CacheEntry entry, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// `remove` with `WriteOptions`; `count` is 1 when the key existed.
    WriteResult remove_with(1: string key, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    /// `put_if_absent` with `WriteOptions`; `count` is 1 when it wrote.
    WriteResult put_if_absent_with(1: CacheEntry entry, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// `compare_and_put` with `WriteOptions`; `count` is 1 when it wrote.
    WriteResult compare_and_put_with(1: string key, 2: string expected_value, 3: CacheEntry entry,
            4: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// `increment` with `WriteOptions`; `value` is the sum.
    WriteResult increment_with(1: string key, 2: i64 delta, 3: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// `put_many` with `WriteOptions`.
    WriteResult put_many_with(1: list<CacheEntry> entries, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// `remove_many` with `WriteOptions`.
    WriteResult remove_many_with(1: list<string> keys, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    /// Writes a value of any bytes (see `ByteEntry`).
    WriteResult put_bytes(1: ByteEntry entry, 2: WriteOptions options)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: CacheFull full),
    /// Reads a value as bytes, whatever it holds (text written by `put` too).
    ByteEntry get_bytes(1: string key, 2: ReadOptions options)
        throws (1: KeyNotFound not_found, 2: InvalidRequest invalid, 3: Unavailable unavailable),
    /// The changes to keys starting with `prefix` made after position (`after_index`,
    /// `after_offset`), in log order, from this node's own replica (any node, a follower too).
    /// The position is a `WatchResult`'s resume position, or `after_index` alone (with
    /// `after_offset` 0) for everything after that entry; after one event, it is the event's
    /// `index` and its `offset` + 1 (`after_offset` N: from the entry's change N on). Waits up to `timeout_ms` (at most the
    /// request deadline, --request-deadline-ms) for the first change, then answers with up to
    /// `max_events` (at most --max-scan-items), possibly none. Compacted when the node no
    /// longer holds the changes right after that position.
    WatchResult watch(1: string prefix, 2: i64 after_index, 3: i32 max_events, 4: i32 timeout_ms,
            5: i32 after_offset)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: Compacted compacted),
}
