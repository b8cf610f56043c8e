//! The history-recording clients of the fault suite and the compose tests. Each is a thread
//! with one connection at a time to one node (picked at random among the targets, again after
//! every error), making puts of unique values, removes and linearizable gets on a few hot keys,
//! `put_many`s and linearizable `get_many`s within small fixed families of keys (with single
//! puts, removes and gets of those keys mixed in), and now and then a put of a key of its own
//! that nobody writes again (these make a lost write plain to see). A multi-key operation stays
//! within one family, so the checker searches each family as one model: a `get_many` that mixes
//! two `put_many`s is caught.
//! Every operation it sent is recorded with its invoke and return times on the run's clock and
//! its outcome; one that failed in any way after it may have been sent (timeout, connection
//! lost, an error) is recorded with an unknown outcome, which the checker takes as "possibly
//! applied, at any time after its invoke". An operation that could not even connect was never
//! sent and is not recorded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::linearizability::{Call, Operation, Outcome};
use crate::rng::Rng;
use raftcache::client::CacheClient;
use raftcache::gen::cache::{CacheEntry, Consistency, ReadOptions, TCacheServiceSyncClient};

/// Connect timeout, and how long a call waits for its answer: longer than a node's request
/// deadline (5 s by default), so a node that answers at all answers before the client gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(7);
/// Pause after a failed call before the client picks a node again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Share of operations (in percent) that put a key of the client's own.
const OWN_KEY_PERCENT: u64 = 10;
/// Share of operations (in percent) on the families, when there are any.
const FAMILY_PERCENT: u64 = 30;
/// Keys per family.
pub const FAMILY_KEYS: u64 = 3;

/// The hot key number `i`.
fn hot_key(i: u64) -> String {
    format!("k{i}")
}

/// Key `i` of family `f`.
fn family_key(f: u64, i: u64) -> String {
    format!("f{f}-{i}")
}

/// What the clients share with the run (or test) that started them.
pub struct Shared {
    pub clock: Instant,
    stop: AtomicBool,
    /// Client addresses of the nodes clients may use: the members as the run knows them.
    targets: Mutex<Vec<String>>,
    /// Operations answered with a definite outcome.
    answered: AtomicU64,
}

impl Shared {
    pub fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Whether the clients were told to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The connection in `conn`, or a new one to a node picked at random; `None` (after a
    /// pause) when no node could be reached.
    pub fn connection<'c>(
        &self,
        conn: &'c mut Option<CacheClient>,
        rng: &mut Rng,
    ) -> Option<&'c mut CacheClient> {
        if conn.is_none() {
            let connected = pick_target(self, rng)
                .and_then(|addr| CacheClient::connect(&addr, CALL_TIMEOUT).ok());
            match connected {
                Some(c) => *conn = Some(c),
                None => {
                    std::thread::sleep(RETRY_PAUSE);
                    return None;
                }
            }
        }
        conn.as_mut()
    }

    /// The nodes clients may use.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

/// Limits of one client.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub hot_keys: u64,
    /// Families of `FAMILY_KEYS` keys for `put_many` and `get_many` (0: none).
    pub families: u64,
    /// Most operations a client makes, however long the run.
    pub max_ops: u64,
    /// Pause between two operations of a client.
    pub think: Duration,
}

pub struct Workload {
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<Vec<Operation>>>,
}

impl Workload {
    pub fn start(clients: u64, seed: u64, targets: Vec<String>, limits: ClientLimits) -> Self {
        let shared = Arc::new(Shared {
            clock: Instant::now(),
            stop: AtomicBool::new(false),
            targets: Mutex::new(targets),
            answered: AtomicU64::new(0),
        });
        let threads = (0..clients)
            .map(|id| {
                let shared = shared.clone();
                let seed = seed ^ (id + 1).wrapping_mul(0xa076_1d64_78bd_642f);
                std::thread::Builder::new()
                    .name(format!("client-{id}"))
                    .spawn(move || client(id, seed, &shared, limits))
                    .expect("spawn a client thread")
            })
            .collect();
        Self { shared, threads }
    }

    /// The nodes clients pick from from now on.
    pub fn set_targets(&self, targets: Vec<String>) {
        *self.shared.targets.lock().unwrap() = targets;
    }

    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes the call it is in) and returns every operation.
    pub fn finish(self) -> Vec<Operation> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut history: Vec<Operation> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client thread panicked"))
            .collect();
        history.sort_by_key(|op| op.invoke_us);
        history
    }
}

fn pick_target(shared: &Shared, rng: &mut Rng) -> Option<String> {
    let targets = shared.targets.lock().unwrap();
    if targets.is_empty() {
        return None;
    }
    Some(targets[rng.below(targets.len() as u64) as usize].clone())
}

fn client(id: u64, seed: u64, shared: &Shared, limits: ClientLimits) -> Vec<Operation> {
    let mut rng = Rng::new(seed);
    let mut conn: Option<CacheClient> = None;
    let mut history = Vec::new();
    let mut own_keys = 0u64;
    for n in 0..limits.max_ops {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(c) = shared.connection(&mut conn, &mut rng) else {
            continue;
        };
        let value = format!("c{id}-{n}");
        let (key, call) = next_call(id, value, &mut own_keys, &mut rng, &limits);
        let invoke_us = shared.now_us();
        let result = send(c, &key, &call);
        let return_us = shared.now_us();
        let outcome = match result {
            Ok(outcome) => {
                shared.answered.fetch_add(1, Ordering::Relaxed);
                outcome
            }
            Err(_) => {
                // The connection may be in any state: start again on a node picked anew.
                conn = None;
                std::thread::sleep(RETRY_PAUSE);
                Outcome::Unknown
            }
        };
        history.push(Operation {
            client: id,
            key,
            call,
            invoke_us,
            return_us,
            outcome,
        });
        if !limits.think.is_zero() {
            std::thread::sleep(limits.think);
        }
    }
    history
}

/// The next operation of client `id`: a put of an own key, an operation on a family, or one on
/// a hot key. With no families, the draws are those of a workload without them.
fn next_call(
    id: u64,
    value: String,
    own_keys: &mut u64,
    rng: &mut Rng,
    limits: &ClientLimits,
) -> (String, Call) {
    let draw = rng.below(100);
    if draw < OWN_KEY_PERCENT {
        *own_keys += 1;
        return (format!("own-c{id}-{own_keys}"), Call::Put(value));
    }
    if limits.families > 0 && draw < OWN_KEY_PERCENT + FAMILY_PERCENT {
        return family_call(value, rng, limits.families);
    }
    let key = hot_key(rng.below(limits.hot_keys));
    let call = match rng.below(20) {
        0..=8 => Call::Put(value),
        9..=11 => Call::Remove,
        _ => Call::Get,
    };
    (key, call)
}

/// An operation on a family picked at random: a `put_many` of all its keys or of all but one
/// (one value for the whole write), a `get_many` of all of them, or a single-key call on one.
fn family_call(value: String, rng: &mut Rng, families: u64) -> (String, Call) {
    let f = rng.below(families);
    let keys: Vec<String> = (0..FAMILY_KEYS).map(|i| family_key(f, i)).collect();
    match rng.below(10) {
        0..=3 => {
            let skip = (rng.below(2) == 0).then(|| rng.below(FAMILY_KEYS) as usize);
            let items = (0..keys.len())
                .filter(|i| Some(*i) != skip)
                .map(|i| (keys[i].clone(), value.clone()))
                .collect();
            (String::new(), Call::PutMany(items))
        }
        4..=6 => (String::new(), Call::GetMany(keys)),
        single => {
            let key = keys[rng.below(FAMILY_KEYS) as usize].clone();
            let call = match single {
                7 => Call::Put(value),
                8 => Call::Remove,
                _ => Call::Get,
            };
            (key, call)
        }
    }
}

/// Sends `call` and turns the answer into an outcome; `Err` when there was none.
fn send(c: &mut CacheClient, key: &str, call: &Call) -> thrift::Result<Outcome> {
    let linearizable = ReadOptions {
        consistency: Some(Consistency::LINEARIZABLE),
        min_index: None,
    };
    match call {
        Call::Put(value) => c.put(key, value).map(|_| Outcome::Written),
        Call::Remove => c.remove(key).map(Outcome::Removed),
        Call::Get => c.get(key, true).map(Outcome::Read),
        Call::PutMany(items) => {
            let entries = items
                .iter()
                .map(|(key, value)| CacheEntry {
                    key: key.clone(),
                    value: value.clone(),
                    ttl_ms: None,
                })
                .collect();
            c.service().put_many(entries).map(|_| Outcome::Written)
        }
        Call::GetMany(keys) => {
            let found = c.service().get_many(keys.clone(), linearizable)?;
            let mut values: std::collections::HashMap<String, String> =
                found.into_iter().map(|e| (e.key, e.value)).collect();
            Ok(Outcome::ReadMany(
                keys.iter().map(|k| values.remove(k)).collect(),
            ))
        }
    }
}
