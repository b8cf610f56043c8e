//! The Raft type configuration: what a log entry carries (a `Batch` of `Request`s), what
//! applying it returns (a `BatchResponse`), and how a node is addressed (`Node`). Everything
//! that goes through the log or over the peer RPC is defined here, so the on-disk and on-wire
//! formats have one home. Changing one of these types changes both: bump
//! `store::FORMAT_VERSION` with it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster; chosen by the operator (`--id`), never reused for another node.
pub type NodeId = u64;

/// A member as the membership records it: how other nodes reach it (its peer RPC address)
/// and how clients reach it (its client address, so that an operator or a client can be told
/// where a member, the leader say, answers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub peer_addr: String,
    /// Empty when not known: a member bootstrapped by `--initial-cluster` without its client
    /// address (`ID=PEER_ADDR`) is recorded without one; `admin members` asks it for it.
    pub client_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client_addr.is_empty() {
            write!(f, "{}", self.peer_addr)
        } else {
            write!(f, "{} (clients: {})", self.peer_addr, self.client_addr)
        }
    }
}

/// When a written key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Never.
    Never,
    /// This many milliseconds after the leader proposes the write: what a client (and a
    /// follower forwarding its write) sends. The leader turns it into `AtMs` before proposing.
    AfterMs(u64),
    /// At this absolute time (milliseconds since the Unix epoch, by the leader's clock).
    AtMs(u64),
}

impl Expiry {
    /// The absolute expiry, fixing a relative one against `now_ms` (the leader's clock).
    pub fn resolve(self, now_ms: u64) -> Expiry {
        match self {
            Expiry::AfterMs(ttl) => Expiry::AtMs(now_ms.saturating_add(ttl)),
            other => other,
        }
    }

    /// The absolute expiry, if any (a relative one that was never resolved counts as none, the
    /// same way on every replica).
    pub fn at_ms(self) -> Option<u64> {
        match self {
            Expiry::AtMs(at) => Some(at),
            _ => None,
        }
    }
}

/// One key and value to write. A value is any bytes (`put_bytes`); bincode writes `Vec<u8>`
/// exactly as it writes a `String`, so entries written when values were text read the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    pub value: Vec<u8>,
    pub expiry: Expiry,
}

impl Item {
    fn size_bytes(&self) -> usize {
        self.key.len() + self.value.len() + 24
    }
}

/// One client mutation of the cache. Conditional and read-modify-write requests are decided
/// by the state machine when it applies them, so racing clients cannot both win.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Put {
        key: String,
        value: Vec<u8>,
        expiry: Expiry,
    },
    Remove {
        key: String,
    },
    /// All the items, in one step.
    PutMany {
        items: Vec<Item>,
    },
    /// All the keys, in one step; answered with how many existed.
    RemoveMany {
        keys: Vec<String>,
    },
    /// Writes the item only if its key is absent or expired.
    PutIfAbsent {
        item: Item,
    },
    /// Writes the item only if its key holds exactly `expected`.
    CompareAndPut {
        expected: String,
        item: Item,
    },
    /// Adds `delta` to the decimal integer under `key` (absent: 0).
    Increment {
        key: String,
        delta: i64,
    },
    /// Removes those of `keys` that are expired when the entry is applied (proposed by the
    /// leader's expiry sweep).
    Expire {
        keys: Vec<String>,
    },
    /// Removes `keys` to make room (chosen by the leader's LRU, proposed before the writes
    /// that need the room).
    Evict {
        keys: Vec<String>,
    },
    /// `request`, applied at most once per (client, seq): the state machine keeps each
    /// client's recent answers (`store::sessions`) and answers a request it has seen with its
    /// first answer (`Response::Repeated`). Appended last, so entries written before it
    /// existed read the same.
    Tracked {
        session: SessionRequest,
        request: Box<Request>,
    },
}

/// Who sent a tracked request, and how long its answer is kept (`WriteOptions` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// Picked at random by the client, never 0.
    pub client: u64,
    /// The request's number, from 1, increasing per client.
    pub seq: u64,
    /// Every request of the client numbered below this has had its answer (0: unknown).
    pub lowest_unanswered: u64,
    /// The leader's limits when it proposed the request (`--session-ttl-ms`,
    /// `--max-sessions`, `--max-session-answers`): every replica keeps and forgets alike.
    pub limits: SessionLimits,
}

/// How many clients' answers are kept, how many answers each, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// A client's answers are forgotten this long after its last tracked request.
    pub ttl_ms: u64,
    /// Clients whose answers are kept, at most; the least recently seen is forgotten first.
    pub max_sessions: u64,
    /// Answers kept per client, at most; the oldest is forgotten first.
    pub max_answers: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            ttl_ms: 600_000,
            max_sessions: 100_000,
            max_answers: 1_000,
        }
    }
}

impl Request {
    /// Approximate encoded size, for bounding batches.
    pub fn size_bytes(&self) -> usize {
        let keys = |keys: &[String]| keys.iter().map(|k| k.len() + 8).sum::<usize>() + 16;
        match self {
            Request::Put { key, value, .. } => key.len() + value.len() + 24,
            Request::Remove { key } => key.len() + 16,
            Request::PutMany { items } => items.iter().map(Item::size_bytes).sum::<usize>() + 16,
            Request::RemoveMany { keys: k }
            | Request::Expire { keys: k }
            | Request::Evict { keys: k } => keys(k),
            Request::PutIfAbsent { item } => item.size_bytes(),
            Request::CompareAndPut { expected, item } => expected.len() + item.size_bytes(),
            Request::Increment { key, .. } => key.len() + 24,
            Request::Tracked { request, .. } => request.size_bytes() + 48,
        }
    }

    /// Whether applying the request twice leaves the same state as applying it once: only those
    /// may be retried when a proposal's outcome is unknown. The answer may differ: a retried
    /// `remove` whose first attempt was applied answers false (`cache.thrift` says so).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::Remove { .. }
                | Request::PutMany { .. }
                | Request::Tracked { .. }
        )
    }

    /// The request itself, without its tracking.
    pub fn inner(&self) -> &Request {
        match self {
            Request::Tracked { request, .. } => request.inner(),
            other => other,
        }
    }

    /// Fixes every relative expiry against the leader's clock, as the leader proposes it.
    pub fn resolve_expiry(&mut self, now_ms: u64) {
        match self {
            Request::Put { expiry, .. } => *expiry = expiry.resolve(now_ms),
            Request::PutMany { items } => {
                for item in items {
                    item.expiry = item.expiry.resolve(now_ms);
                }
            }
            Request::PutIfAbsent { item } | Request::CompareAndPut { item, .. } => {
                item.expiry = item.expiry.resolve(now_ms)
            }
            Request::Tracked { request, .. } => request.resolve_expiry(now_ms),
            _ => {}
        }
    }
}

/// The result of one `Request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A `Put` was stored.
    Put,
    /// A `Remove`: whether the key existed.
    Removed { existed: bool },
    /// `PutMany`: items written; `RemoveMany`, `Expire`: keys removed.
    Count(u64),
    /// `PutIfAbsent`, `CompareAndPut`: whether it wrote.
    Written(bool),
    /// `Increment`: the new value.
    Incremented(i64),
    /// The request was refused and changed nothing (an increment of a value that is not an
    /// integer, or that would overflow).
    Refused(String),
    /// The write would take the data past the entry's `Capacity`: it changed nothing.
    Full(String),
    /// A tracked request seen before: its first answer, and it was not applied again.
    Repeated(Box<Response>),
}

/// A response together with the log index of the entry that carried its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub response: Response,
}

/// The payload of one Raft log entry: requests proposed together (group commit), applied in
/// order, all in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
    /// The leader's clock when it proposed the batch (milliseconds since the Unix epoch):
    /// the time every expiry check of this entry uses, so replicas decide alike.
    pub now_ms: u64,
    /// The leader's capacity limits when it proposed the batch: what every replica enforces
    /// when it applies it, whatever its own flags say.
    pub capacity: Capacity,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch of {} request(s) at {} ms",
            self.requests.len(),
            self.now_ms
        )
    }
}

/// Caps on the data held (`--max-bytes`, `--max-keys`); 0 means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Bytes of keys and values.
    pub max_bytes: u64,
    pub max_keys: u64,
}

impl Capacity {
    /// Whether `keys` keys of `bytes` bytes fit.
    pub fn fits(&self, keys: u64, bytes: u64) -> bool {
        (self.max_keys == 0 || keys <= self.max_keys)
            && (self.max_bytes == 0 || bytes <= self.max_bytes)
    }
}

/// The result of applying one log entry: one `Response` per request of its `Batch` (none for
/// blank and membership entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub responses: Vec<Response>,
}

/// Milliseconds since the Unix epoch by this node's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

openraft::declare_raft_types!(
    /// raftcache's choice of types for openraft.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = Node,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type CommittedLeaderId = openraft::type_config::alias::CommittedLeaderIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::type_config::alias::EntryPayloadOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, Node>;
/// What the storage traits fail with (openraft 0.10 takes plain I/O errors).
pub type StorageError = std::io::Error;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, tokio::fs::File>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
