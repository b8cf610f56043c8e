//! A watcher for the fault suite: one client that follows every change of every key with
//! `watch`, from the first entry on, through whatever node answers, resuming from the position
//! of its last answer. It checks as it goes that positions only move forward (no event twice,
//! none out of order, on any node); the run then checks what it saw against the history and
//! the final state (`WatchReport`).
//!
//! A node keeps its history in memory, since it started or installed a snapshot. When the node
//! asked answers `Compacted`, the watcher asks the others; when every node does (all of them
//! restarted since, a power cut say), it records a gap and goes on from the oldest position
//! they hold. The events before a gap are then not all known, and the checks say so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::history::{Shared, CALL_TIMEOUT};
use crate::linearizability::{Call, Operation, Outcome};
use crate::rng::Rng;
use raftcache::client::CacheClient;
use raftcache::gen::cache::{Compacted, EventKind, TCacheServiceSyncClient};

/// How long one watch call waits for a change.
const POLL_MS: i32 = 1_000;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One change the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub index: i64,
    pub offset: i32,
    pub kind: EventKind,
    pub key: String,
    pub value: Option<String>,
}

/// A stretch of changes no node held any more when the watcher asked.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// The position asked for.
    pub after_index: i64,
    /// Where the watcher went on from.
    pub oldest_index: i64,
    /// When (the run's clock) it went on.
    pub at_us: u64,
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    pub events: Vec<Seen>,
    pub gaps: Vec<Gap>,
    /// Positions that did not move forward, and calls that failed in a way no fault explains.
    pub wrong: Vec<String>,
    /// The last position reached.
    pub resume: (i64, i32),
}

/// The watcher thread, running until `finish`.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    /// Drain up to this index before stopping (0: not yet asked to stop).
    until: Arc<AtomicU64>,
    thread: Option<JoinHandle<WatchReport>>,
}

impl Drop for Watcher {
    /// A watcher dropped unfinished (a run that could not go on) stops too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Watcher {
    pub fn start(seed: u64, shared: Arc<Shared>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let until = Arc::new(AtomicU64::new(0));
        let (s, u) = (stop.clone(), until.clone());
        let thread = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || watch(seed, &shared, &s, &u))
            .expect("spawn the watcher");
        Self {
            stop,
            until,
            thread: Some(thread),
        }
    }

    /// Lets the watcher read every change up to log index `until` (within `within`), then stops
    /// it and returns what it saw.
    pub fn finish(mut self, until: u64, within: Duration) -> WatchReport {
        self.until.store(until.max(1), Ordering::Relaxed);
        let thread = self.thread.take().expect("a watcher is finished once");
        let deadline = Instant::now() + within;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut report = thread.join().expect("the watcher panicked");
        if (report.resume.0 as u64) < until {
            report.wrong.push(format!(
                "the watcher reached index {} of {until} within {within:?} after the faults healed",
                report.resume.0
            ));
        }
        report
    }
}

fn watch(seed: u64, shared: &Shared, stop: &AtomicBool, until: &AtomicU64) -> WatchReport {
    let mut rng = Rng::new(seed ^ 0x5741_5443_4845_5221);
    let mut report = WatchReport::default();
    let (mut index, mut offset) = (0i64, 0i32);
    let mut conn: Option<CacheClient> = None;
    let mut last: Option<(i64, i32)> = None;
    while !stop.load(Ordering::Relaxed) {
        let target = until.load(Ordering::Relaxed);
        if target > 0 && index as u64 >= target {
            break;
        }
        let Some(c) = shared.connection(&mut conn, &mut rng) else {
            continue;
        };
        match c
            .service()
            .watch(String::new(), index, 1000, POLL_MS, offset)
        {
            Ok(result) => {
                for event in result.events {
                    let position = (event.index, event.offset);
                    if last.is_some_and(|last| position <= last) {
                        report.wrong.push(format!(
                            "event at {}.{} after {:?}: repeated or out of order",
                            event.index, event.offset, last
                        ));
                    }
                    last = Some(position);
                    report.events.push(Seen {
                        index: event.index,
                        offset: event.offset,
                        kind: event.kind,
                        key: event.key,
                        value: event
                            .value
                            .map(|v| String::from_utf8_lossy(&v).into_owned()),
                    });
                }
                if (result.resume_index, result.resume_offset) < (index, offset)
                    && result.resume_offset != 0
                {
                    report.wrong.push(format!(
                        "the resume position went back from {index}.{offset} to {}.{}",
                        result.resume_index, result.resume_offset
                    ));
                }
                (index, offset) = (result.resume_index, result.resume_offset);
            }
            Err(thrift::Error::User(e)) if e.is::<Compacted>() => {
                conn = None;
                if let Some(oldest) = compacted_everywhere(shared, index, offset) {
                    report.gaps.push(Gap {
                        after_index: index,
                        oldest_index: oldest,
                        at_us: shared.now_us(),
                    });
                    (index, offset) = (oldest, 0);
                }
            }
            Err(_) => {
                conn = None;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
    report.resume = (index, offset);
    report
}

/// Asks every node for the changes after (`index`, `offset`): `None` if one holds them, else
/// the oldest index any of them holds changes after.
fn compacted_everywhere(shared: &Shared, index: i64, offset: i32) -> Option<i64> {
    let mut oldest: Option<i64> = None;
    for addr in shared.targets() {
        let Ok(mut c) = CacheClient::connect(&addr, CALL_TIMEOUT) else {
            return None;
        };
        match c.service().watch(String::new(), index, 1, 0, offset) {
            Ok(_) => return None,
            Err(thrift::Error::User(e)) => match e.downcast_ref::<Compacted>() {
                Some(compacted) => {
                    oldest = Some(
                        oldest.map_or(compacted.oldest_index, |o| o.min(compacted.oldest_index)),
                    )
                }
                None => return None,
            },
            Err(_) => return None,
        }
    }
    oldest
}

impl WatchReport {
    /// Checks the events against the history of the clients and the final contents of the
    /// cache (`final_state`, every key that holds a value): the reasons it fails, and a line
    /// saying what was checked. Keys starting with one of `outside` are written by the run
    /// itself, outside the history and the final contents: their events are left out.
    pub fn check(
        &self,
        history: &[Operation],
        final_state: &BTreeMap<String, String>,
        outside: &[&str],
    ) -> (Vec<String>, String) {
        let mut failures = self.wrong.clone();
        let inside = |e: &&Seen| !outside.iter().any(|prefix| e.key.starts_with(prefix));
        // Every put event is of a value some client wrote (values are unique per operation).
        let mut written: BTreeMap<(&str, &str), ()> = BTreeMap::new();
        for op in history {
            match &op.call {
                Call::Put(value) => {
                    written.insert((op.key.as_str(), value.as_str()), ());
                }
                Call::PutMany(items) => {
                    for (key, value) in items {
                        written.insert((key.as_str(), value.as_str()), ());
                    }
                }
                _ => {}
            }
        }
        let puts: BTreeMap<(&str, &str), ()> = self
            .events
            .iter()
            .filter(inside)
            .filter(|e| e.kind == EventKind::PUT)
            .filter_map(|e| Some(((e.key.as_str(), e.value.as_deref()?), ())))
            .collect();
        let invented: Vec<String> = puts
            .keys()
            .filter(|(key, _)| !key.starts_with("ctr-"))
            .filter(|pair| !written.contains_key(pair))
            .take(5)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !invented.is_empty() {
            failures.push(format!(
                "the watcher saw values no client wrote, e.g. {}",
                invented.join(", ")
            ));
        }
        // Every acknowledged write made after the last gap was seen.
        let since = self.gaps.last().map_or(0, |gap| gap.at_us);
        let mut required = 0;
        let mut missing = Vec::new();
        for op in history.iter().filter(|op| op.outcome == Outcome::Written) {
            if op.invoke_us <= since {
                continue;
            }
            let pairs: Vec<(&str, &str)> = match &op.call {
                Call::Put(value) => vec![(op.key.as_str(), value.as_str())],
                Call::PutMany(items) => items
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                _ => vec![],
            };
            for pair in pairs {
                required += 1;
                if !puts.contains_key(&pair) {
                    missing.push(format!("{}={}", pair.0, pair.1));
                }
            }
        }
        if !missing.is_empty() {
            failures.push(format!(
                "{} acknowledged writes were never seen by the watcher, e.g. {}",
                missing.len(),
                missing[..missing.len().min(5)].join(", ")
            ));
        }
        // Without a gap, the changes replayed in order are the final contents.
        let replayed = if self.gaps.is_empty() {
            let mut state: BTreeMap<&str, &str> = BTreeMap::new();
            for e in self.events.iter().filter(inside) {
                match (e.kind, &e.value) {
                    (EventKind::PUT, Some(value)) => {
                        state.insert(&e.key, value);
                    }
                    _ => {
                        state.remove(e.key.as_str());
                    }
                }
            }
            let expected: BTreeMap<&str, &str> = final_state
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let equal = state == expected;
            if !equal {
                let differ: Vec<String> = expected
                    .keys()
                    .chain(state.keys())
                    .filter(|k| expected.get(*k) != state.get(*k))
                    .take(5)
                    .map(|k| format!("{k}: {:?} vs {:?}", state.get(k), expected.get(k)))
                    .collect();
                failures.push(format!(
                    "the watched changes replayed in order differ from the final contents (replayed vs held), e.g. {}",
                    differ.join("; ")
                ));
            }
            if equal {
                "; replayed in order they equal the final contents"
            } else {
                "; replayed in order they DIFFER from the final contents"
            }
        } else {
            "; not replayed against the final contents (a gap)"
        };
        let summary = format!(
            "watch: {} events up to index {}, {} gaps, {required} acknowledged writes since the last gap checked{replayed}",
            self.events.len(),
            self.resume.0,
            self.gaps.len(),
        );
        (failures, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, invoke_us: u64, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            key: key.into(),
            call: Call::Put(value.into()),
            invoke_us,
            return_us: invoke_us + 1,
            outcome,
        }
    }

    fn seen(index: i64, kind: EventKind, key: &str, value: Option<&str>) -> Seen {
        Seen {
            index,
            offset: 1,
            kind,
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    fn state(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_complete_stream_passes_and_each_kind_of_damage_is_named() {
        let history = vec![
            put("a", "1", 10, Outcome::Written),
            put("b", "2", 20, Outcome::Written),
            put("c", "3", 30, Outcome::Unknown),
        ];
        let complete = WatchReport {
            events: vec![
                seen(1, EventKind::PUT, "a", Some("1")),
                seen(2, EventKind::PUT, "b", Some("2")),
                seen(3, EventKind::REMOVE, "a", None),
                seen(4, EventKind::PUT, "probe-x", Some("probe")),
            ],
            ..WatchReport::default()
        };
        let (failures, _) = complete.check(&history, &state(&[("b", "2")]), &["probe-"]);
        assert!(failures.is_empty(), "{failures:?}");

        // An acknowledged write never seen (and so a replay that misses it).
        let mut lost = WatchReport {
            events: complete.events.clone(),
            ..WatchReport::default()
        };
        lost.events.remove(1);
        let (failures, _) = lost.check(&history, &state(&[("b", "2")]), &["probe-"]);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("never seen by the watcher")),
            "{failures:?}"
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("DIFFER") || f.contains("differ")),
            "{failures:?}"
        );

        // A value no client wrote; and the run's own keys left out only when named.
        let (failures, _) = complete.check(&history, &state(&[("b", "2")]), &[]);
        assert!(
            failures.iter().any(|f| f.contains("no client wrote")),
            "{failures:?}"
        );
    }

    #[test]
    fn after_a_gap_only_the_writes_made_since_are_required() {
        let history = vec![
            put("a", "1", 10, Outcome::Written),
            put("b", "2", 50, Outcome::Written),
        ];
        let after_gap = WatchReport {
            events: vec![seen(9, EventKind::PUT, "b", Some("2"))],
            gaps: vec![Gap {
                after_index: 2,
                oldest_index: 8,
                at_us: 40,
            }],
            ..WatchReport::default()
        };
        // "a" was written before the gap: not required, and no replay is attempted.
        let (failures, summary) = after_gap.check(&history, &state(&[("a", "1"), ("b", "2")]), &[]);
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            summary.contains("1 gaps") && summary.contains("1 acknowledged"),
            "{summary}"
        );
        // "b" was written after it: required.
        let missing = WatchReport {
            events: vec![],
            gaps: after_gap.gaps.clone(),
            ..WatchReport::default()
        };
        let (failures, _) = missing.check(&history, &state(&[("a", "1"), ("b", "2")]), &[]);
        assert!(
            failures.iter().any(|f| f.contains("never seen")),
            "{failures:?}"
        );
    }
}
