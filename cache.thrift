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
}

struct Member {
    1: required i64 id,
    2: required string peer_addr,
    3: required bool voter,
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
}

service CacheService {
    CacheEntry get(1: string key)
        throws (1: KeyNotFound not_found, 2: InvalidRequest invalid, 3: Unavailable unavailable),
    bool put(1: CacheEntry entry)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    /// True when the key existed.
    bool remove(1: string key)
        throws (1: InvalidRequest invalid, 2: Unavailable unavailable),
    CacheEntry get_with(1: string key, 2: ReadOptions options)
        throws (1: KeyNotFound not_found, 2: InvalidRequest invalid, 3: Unavailable unavailable),
    NodeStatus status(),
    /// Builds a snapshot on this node now (and compacts its log behind it); returns the log
    /// index it covers, at least everything applied here when the call was made.
    i64 admin_snapshot()
        throws (1: Unavailable unavailable),
}
