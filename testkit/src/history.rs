//! The history-recording clients of the fault suite and the compose tests. Each is a thread
//! with one connection at a time to one node (picked at random among the targets, again after
//! every error), making puts of unique values, removes and linearizable gets on a few hot keys,
//! and now and then a put of a key of its own that nobody writes again (these make a lost write
//! plain to see).
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

/// Connect timeout, and how long a call waits for its answer: longer than a node's request
/// deadline (5 s by default), so a node that answers at all answers before the client gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(7);
/// Pause after a failed call before the client picks a node again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Share of operations (in percent) that put a key of the client's own.
const OWN_KEY_PERCENT: u64 = 10;

/// The hot key number `i`.
fn hot_key(i: u64) -> String {
    format!("k{i}")
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
}

/// Limits of one client.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub hot_keys: u64,
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
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let connected = pick_target(shared, &mut rng)
                    .and_then(|addr| CacheClient::connect(&addr, CALL_TIMEOUT).ok());
                match connected {
                    Some(c) => conn.insert(c),
                    None => {
                        std::thread::sleep(RETRY_PAUSE);
                        continue;
                    }
                }
            }
        };
        let value = format!("c{id}-{n}");
        let (key, call) = if rng.below(100) < OWN_KEY_PERCENT {
            own_keys += 1;
            (format!("own-c{id}-{own_keys}"), Call::Put(value))
        } else {
            let key = hot_key(rng.below(limits.hot_keys));
            let call = match rng.below(20) {
                0..=8 => Call::Put(value),
                9..=11 => Call::Remove,
                _ => Call::Get,
            };
            (key, call)
        };
        let invoke_us = shared.now_us();
        let result = match &call {
            Call::Put(value) => c.put(&key, value).map(|_| Outcome::Written),
            Call::Remove => c.remove(&key).map(Outcome::Removed),
            Call::Get => c.get(&key, true).map(Outcome::Read),
        };
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
