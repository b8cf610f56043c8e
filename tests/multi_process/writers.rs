//! Writers under faults, shared by the tests that kill or cut the power of nodes while clients
//! write (`tests/crash.rs`, `tests/power_cut.rs`): each writer puts, overwrites and removes its
//! own keys, remembers what was acknowledged and what has an unknown outcome, and the test reads
//! every key back at the end (`read_keys`) and checks it against `KeyState::accepts`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use raftcache::client::CacheClient;
use raftcache_testkit::rng::Rng;

use super::{connect, ProcessCluster, Retrying, POLL};

/// A writer stops after this long even if never told to (a test that hangs still ends).
const WRITER_LIMIT: Duration = Duration::from_secs(1800);

pub fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// What a test run may end in: a key's last acknowledged state plus its unknown-outcome writes.
#[derive(Debug, Default, Clone)]
pub struct KeyState {
    /// The last acknowledged state (`None`: absent: removed, or never acknowledged).
    pub acked: Option<String>,
    /// Writes whose outcome is unknown (`Some`: a put of that value; `None`: a remove).
    pub unknown: Vec<Option<String>>,
    /// Where and when the last acknowledged write was answered, for a failure's report.
    pub acked_via: Option<String>,
}

impl KeyState {
    pub fn accepts(&self, found: &Option<String>) -> bool {
        *found == self.acked || self.unknown.contains(found)
    }
}

/// What one writer leaves behind.
#[derive(Default)]
pub struct WriterReport {
    pub keys: BTreeMap<String, KeyState>,
    pub acks: u64,
    pub unknown: u64,
    /// Answers that contradict the writer's own acknowledged history (a wrong `existed`).
    pub violations: Vec<String>,
}

/// Counters shared by the writers and the schedule.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    pub acks: AtomicU64,
    pub unknown: AtomicU64,
}

/// Pause after a failed write before the next one, so a writer does not spin while the
/// cluster has no leader.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// One writer: until `stop`, new keys (60%), overwrites (25%) and removes (15%) of its own keys
/// whose state is known, through `addrs`, moving to the next node after any failure.
pub fn run_writer(w: usize, addrs: &[SocketAddr], seed: u64, shared: &Shared) -> WriterReport {
    let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut out = WriterReport::default();
    // Keys whose state is known (no unknown-outcome write): the only ones touched again.
    let mut known: Vec<String> = Vec::new();
    let mut client: Option<CacheClient> = None;
    let mut target = w % addrs.len();
    let (mut op, mut fresh) = (0u64, 0u64);
    let started = Instant::now();
    'ops: while !shared.stop.load(SeqCst) && started.elapsed() < WRITER_LIMIT {
        op += 1;
        let roll = rng.below(100);
        let (slot, key, value) = if known.is_empty() || roll < 60 {
            fresh += 1;
            (
                None,
                format!("w{w}-k{fresh:06}"),
                Some(format!("w{w}-op{op}")),
            )
        } else {
            let i = rng.below(known.len() as u64) as usize;
            let value = (roll < 85).then(|| format!("w{w}-op{op}"));
            (Some(i), known[i].clone(), value)
        };
        // A connection that cannot be made sent nothing: try the next node.
        let mut c = loop {
            if let Some(c) = client.take() {
                break c;
            }
            if shared.stop.load(SeqCst) {
                break 'ops;
            }
            match connect(addrs[target]) {
                Ok(c) => break c,
                Err(_) => {
                    target = (target + 1) % addrs.len();
                    std::thread::sleep(POLL);
                }
            }
        };
        let result = match &value {
            Some(v) => c.put(&key, v).map(|_| None),
            None => c.remove(&key).map(Some),
        };
        let state = out.keys.entry(key.clone()).or_default();
        match result {
            Ok(existed) => {
                if let Some(existed) = existed {
                    if existed != state.acked.is_some() {
                        out.violations.push(format!(
                            "remove {key} via {} answered existed={existed}, but its last acknowledged state is {:?}",
                            addrs[target], state.acked
                        ));
                    }
                }
                state.acked = value;
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                state.acked_via = Some(format!(
                    "{} at {}.{:06} (unix time)",
                    addrs[target],
                    at.as_secs(),
                    at.subsec_micros()
                ));
                out.acks += 1;
                shared.acks.fetch_add(1, SeqCst);
                if slot.is_none() {
                    known.push(key);
                }
                client = Some(c);
            }
            Err(_) => {
                state.unknown.push(value);
                out.unknown += 1;
                shared.unknown.fetch_add(1, SeqCst);
                if let Some(i) = slot {
                    known.swap_remove(i);
                }
                target = (target + 1) % addrs.len();
                std::thread::sleep(BACKOFF);
            }
        }
    }
    out
}

/// Reads `keys` from every node in `nodes` in parallel (one thread and connection per node,
/// retried until `multi_process::DEADLINE`). With `spread`, each key is read once, from node
/// `i % nodes.len()`; otherwise every key from every node. Returns, per node, key -> value.
pub fn read_keys(
    cluster: &ProcessCluster,
    keys: &[&String],
    linearizable: bool,
    spread: bool,
) -> Vec<BTreeMap<String, Option<String>>> {
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.client_addr).collect();
    let n = addrs.len();
    std::thread::scope(|scope| {
        let readers: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(j, addr)| {
                scope.spawn(move || {
                    let mut reader = Retrying::new(*addr);
                    let mine = keys
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !spread || i % n == j);
                    mine.map(|(_, key)| ((*key).clone(), reader.get(key, linearizable)))
                        .collect()
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// What the writers did, gathered once they stopped, and what reading every key back found.
pub struct Outcome {
    pub acks: u64,
    pub unknown: u64,
    /// Answers that contradict a writer's own acknowledged history.
    pub violations: Vec<String>,
    /// Every key a writer touched (and the test's own probes), with what it may hold.
    pub model: BTreeMap<String, KeyState>,
    /// What a linearizable read of each key found.
    pub found: BTreeMap<String, Option<String>>,
    /// Keys holding something no acknowledged or unknown-outcome write put there.
    pub lost: Vec<String>,
}

/// Stops the writers, joins them, and reads every key they (and `probes`) wrote back from
/// `cluster`, linearizably and spread over the nodes.
pub fn gather(
    cluster: &ProcessCluster,
    shared: &Shared,
    writers: Vec<std::thread::JoinHandle<WriterReport>>,
    probes: BTreeMap<String, KeyState>,
) -> Outcome {
    shared.stop.store(true, SeqCst);
    let mut model = probes;
    let (mut acks, mut unknown, mut violations) = (0, 0, Vec::new());
    for writer in writers {
        let report = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        acks += report.acks;
        unknown += report.unknown;
        violations.extend(report.violations);
        model.extend(report.keys);
    }
    let ids: Vec<u64> = cluster.ids();
    cluster.wait_for_leader(&ids);
    let keys: Vec<&String> = model.keys().collect();
    let found: BTreeMap<String, Option<String>> = read_keys(cluster, &keys, true, true)
        .into_iter()
        .flatten()
        .collect();
    let lost = model
        .iter()
        .filter(|(key, state)| !state.accepts(&found[*key]))
        .map(|(key, state)| format!("{key}: found {:?}, acceptable {state:?}", found[key]))
        .collect();
    Outcome {
        acks,
        unknown,
        violations,
        model,
        found,
        lost,
    }
}
