//! Exactly-once counters for the fault suite: clients that each increment a counter of their
//! own, one increment at a time, tagged with a client id and a sequence number
//! (`WriteOptions`), and retry every failed increment with the same number, on any node, until
//! it is answered. The cluster must apply each increment once: the answer to increment `n` is
//! `n`, and the counter ends at the number of answered increments (one more if the last one
//! was still unanswered when the client stopped).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::history::Shared;
use crate::rng::Rng;
use raftcache::client::CacheClient;
use raftcache::gen::cache::{TCacheServiceSyncClient, Unavailable, WriteOptions};

/// Pause after a failed attempt before the client tries a node again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What one counter client did.
#[derive(Debug, Default)]
pub struct CounterReport {
    pub key: String,
    pub client_id: i64,
    /// Increments answered (numbered 1 to this).
    pub answered: u64,
    /// Whether the client stopped with an increment sent but unanswered.
    pub pending: bool,
    /// Attempts that failed and were sent again.
    pub retries: u64,
    /// Answers that were the first answer of an earlier attempt (`WriteResult.repeated`).
    pub repeated: u64,
    /// Answers that contradict exactly-once (an increment counted twice or not at all), and
    /// the first few of them.
    pub wrong_answers: u64,
    pub wrong: Vec<String>,
}

/// Wrong answers described in a report, at most.
const WRONG_SHOWN: usize = 5;

impl CounterReport {
    /// A line that says what went wrong in the answers, if anything did.
    pub fn wrong_answers(&self) -> Option<String> {
        (self.wrong_answers > 0).then(|| {
            format!(
                "{} answers of counter {} contradict exactly-once, e.g. {}",
                self.wrong_answers,
                self.key,
                self.wrong.join("; ")
            )
        })
    }

    /// Records an answer that contradicts exactly-once.
    fn wrong(&mut self, what: String) {
        self.wrong_answers += 1;
        if self.wrong.len() < WRONG_SHOWN {
            self.wrong.push(what);
        }
    }

    /// Whether `value`, the counter read at the end, fits the answers.
    pub fn check(&self, value: Option<i64>) -> Result<(), String> {
        let value = value.unwrap_or(0);
        let answered = self.answered as i64;
        let fits = value == answered || (self.pending && value == answered + 1);
        if fits {
            Ok(())
        } else {
            Err(format!(
                "counter {} ends at {value} after {answered} answered increments{} ({} retries): an increment was counted {}",
                self.key,
                if self.pending { " and one unanswered" } else { "" },
                self.retries,
                if value > answered { "twice" } else { "not at all" }
            ))
        }
    }
}

/// Counter clients running beside a workload; they stop when it stops.
pub struct Counters {
    threads: Vec<JoinHandle<CounterReport>>,
}

impl Counters {
    pub fn start(clients: u64, seed: u64, shared: Arc<Shared>) -> Self {
        let threads = (0..clients)
            .map(|i| {
                let shared = shared.clone();
                let seed = seed ^ (i + 101).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                std::thread::Builder::new()
                    .name(format!("counter-{i}"))
                    .spawn(move || counter(i, seed, &shared))
                    .expect("spawn a counter thread")
            })
            .collect();
        Self { threads }
    }

    /// Waits for every counter client (stop the workload first).
    pub fn finish(self) -> Vec<CounterReport> {
        self.threads
            .into_iter()
            .map(|t| t.join().expect("a counter thread panicked"))
            .collect()
    }
}

fn counter(i: u64, seed: u64, shared: &Shared) -> CounterReport {
    let mut rng = Rng::new(seed);
    let mut report = CounterReport {
        key: format!("ctr-{i}"),
        client_id: (rng.next_u64() >> 1).max(1) as i64,
        ..CounterReport::default()
    };
    let mut conn: Option<CacheClient> = None;
    let mut seq = 0i64;
    while !shared.stopped() {
        seq += 1;
        let options = WriteOptions {
            client_id: Some(report.client_id),
            seq: Some(seq),
            lowest_unanswered: Some(seq),
        };
        loop {
            if shared.stopped() {
                report.pending = true;
                return report;
            }
            let Some(c) = shared.connection(&mut conn, &mut rng) else {
                continue;
            };
            match c
                .service()
                .increment_with(report.key.clone(), 1, options.clone())
            {
                Ok(result) => {
                    report.answered += 1;
                    if result.repeated == Some(true) {
                        report.repeated += 1;
                    }
                    if result.value != Some(report.answered as i64) {
                        let what = format!(
                            "increment {seq} (the {} answered) answered {:?}",
                            report.answered, result.value
                        );
                        report.wrong(what);
                    }
                    break;
                }
                Err(thrift::Error::User(e)) if !e.is::<Unavailable>() => {
                    // A declared refusal is a definite answer: nothing was applied.
                    report.wrong(format!("increment {seq} refused: {e}"));
                    break;
                }
                Err(_) => {
                    // Sent, maybe applied: the same number again, on a node picked anew.
                    report.retries += 1;
                    conn = None;
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_fits_its_answers_or_says_how_it_does_not() {
        let report = |pending| CounterReport {
            key: "ctr-0".into(),
            answered: 5,
            pending,
            ..CounterReport::default()
        };
        assert!(report(false).check(Some(5)).is_ok());
        assert!(
            report(true).check(Some(5)).is_ok(),
            "the pending one never applied"
        );
        assert!(
            report(true).check(Some(6)).is_ok(),
            "the pending one applied"
        );
        let twice = report(false).check(Some(6)).unwrap_err();
        assert!(twice.contains("counted twice"), "{twice}");
        let lost = report(true).check(Some(4)).unwrap_err();
        assert!(lost.contains("not at all"), "{lost}");
        assert!(report(false).check(None).is_err(), "5 answered, none held");
    }
}
