//! The checker against histories whose answer is known: hand-written anomalies, and generated
//! histories that are linearizable by construction (and stop being so when one read is broken).

use super::*;

pub(super) fn op(client: u64, call: Call, span_us: (u64, u64), outcome: Outcome) -> Operation {
    Operation {
        client,
        key: "k".into(),
        call,
        invoke_us: span_us.0,
        return_us: span_us.1,
        outcome,
    }
}

pub(super) fn put(client: u64, value: &str, span_us: (u64, u64)) -> Operation {
    op(client, Call::Put(value.into()), span_us, Outcome::Written)
}

/// A put whose answer never came: possibly applied, any time after `invoke_us`.
pub(super) fn put_unknown(client: u64, value: &str, invoke_us: u64) -> Operation {
    let span_us = (invoke_us, invoke_us + 1);
    op(client, Call::Put(value.into()), span_us, Outcome::Unknown)
}

pub(super) fn remove(client: u64, existed: bool, span_us: (u64, u64)) -> Operation {
    op(client, Call::Remove, span_us, Outcome::Removed(existed))
}

pub(super) fn get(client: u64, value: Option<&str>, span_us: (u64, u64)) -> Operation {
    let value = value.map(str::to_string);
    op(client, Call::Get, span_us, Outcome::Read(value))
}

pub(super) fn verdict(history: &[Operation]) -> Verdict {
    check(history, Limits::default()).unwrap().verdict()
}

pub(super) fn violation(history: &[Operation]) -> Violation {
    let report = check(history, Limits::default()).unwrap();
    assert_eq!(report.violations.len(), 1, "{report:?}");
    report.violations[0].clone()
}

#[test]
fn sequential_history_is_linearizable() {
    let history = [
        get(1, None, (0, 1)),
        put(1, "a", (2, 3)),
        get(2, Some("a"), (4, 5)),
        remove(2, true, (6, 7)),
        remove(1, false, (8, 9)),
        get(1, None, (10, 11)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn concurrent_reads_may_see_either_side_of_a_write() {
    let history = [
        put(1, "a", (0, 10)),
        put(2, "b", (20, 40)),
        get(3, Some("a"), (25, 30)),
        get(4, Some("b"), (26, 35)),
        get(5, Some("b"), (41, 50)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn stale_read_is_caught() {
    let history = [
        put(1, "a", (0, 10)),
        put(1, "b", (20, 30)),
        get(2, Some("a"), (40, 50)),
    ];
    let v = violation(&history);
    assert_eq!(v.blocked, history[2]);
    assert_eq!(v.state_after_prefix["k"].as_deref(), Some("b"));
    assert_eq!(v.state_after_prefix.len(), 1);
    assert_eq!(v.prefix_tail, history[..2].to_vec());
    assert!(v.concurrent.is_empty(), "{v}");
}

#[test]
fn a_violation_lists_the_operations_that_ran_alongside_the_blocked_one() {
    let history = [
        put(1, "a", (0, 10)),
        put(1, "b", (20, 30)),
        get(2, Some("a"), (40, 60)),
        remove(3, false, (45, 70)),
    ];
    let v = violation(&history);
    assert_eq!(v.blocked, history[2]);
    assert_eq!(v.concurrent, vec![history[3].clone()]);
}

#[test]
fn lost_write_is_caught() {
    let history = [put(1, "a", (0, 10)), get(2, None, (20, 30))];
    assert_eq!(violation(&history).blocked, history[1]);
}

#[test]
fn read_of_a_value_never_written_is_caught() {
    let history = [put(1, "a", (0, 10)), get(2, Some("z"), (20, 30))];
    let v = violation(&history);
    assert_eq!(v.blocked, history[1]);
    assert!(v.reason.contains("no put"), "{v}");
}

#[test]
fn remove_that_claims_a_missing_key_existed_is_caught() {
    let history = [
        put(1, "a", (0, 10)),
        remove(1, true, (20, 30)),
        remove(2, true, (40, 50)),
    ];
    assert_eq!(violation(&history).blocked, history[2]);
}

#[test]
fn concurrent_removes_cannot_both_find_the_key() {
    let history = [
        put(1, "a", (0, 10)),
        remove(1, true, (20, 30)),
        remove(2, true, (21, 31)),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn possibly_applied_put_may_show_up_later() {
    let history = [
        put(1, "a", (0, 10)),
        put_unknown(2, "b", 20),
        get(3, Some("a"), (30, 40)),
        get(3, Some("b"), (1000, 1010)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn possibly_applied_put_may_never_show_up() {
    let history = [
        put(1, "a", (0, 10)),
        put_unknown(2, "b", 20),
        get(3, Some("a"), (30, 40)),
        get(3, Some("a"), (1000, 1010)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn possibly_applied_put_cannot_show_up_before_it_was_sent() {
    let history = [get(1, Some("b"), (0, 10)), put_unknown(2, "b", 20)];
    assert_eq!(violation(&history).blocked, history[0]);
}

#[test]
fn possibly_applied_put_takes_effect_at_most_once() {
    let history = [
        put_unknown(1, "b", 0),
        get(2, Some("b"), (10, 20)),
        remove(2, true, (30, 40)),
        get(2, Some("b"), (50, 60)),
    ];
    assert_eq!(violation(&history).blocked, history[3]);
}

#[test]
fn possibly_applied_remove_answers_nothing_but_removes() {
    let unknown_remove = op(2, Call::Remove, (20, 21), Outcome::Unknown);
    let history = [
        put(1, "a", (0, 10)),
        unknown_remove.clone(),
        get(3, Some("a"), (30, 40)),
        get(3, None, (50, 60)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    let back_again = [history.to_vec(), vec![get(3, Some("a"), (70, 80))]].concat();
    assert_eq!(verdict(&back_again), Verdict::NotLinearizable);
}

#[test]
fn a_remove_may_find_a_possibly_applied_put() {
    let history = [put_unknown(1, "x", 0), remove(2, true, (10, 20))];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    let too_early = [put_unknown(1, "x", 30), remove(2, true, (10, 20))];
    assert_eq!(verdict(&too_early), Verdict::NotLinearizable);
}

#[test]
fn many_pending_possibly_applied_writes_stay_cheap() {
    // 40 puts and 40 removes that lost their answers are all pending when a lost write shows:
    // tried in every subset and order they would take forever; the search must settle it
    // within a small budget.
    let mut history: Vec<Operation> = (0..40)
        .flat_map(|i| {
            let gone = op(100 + i, Call::Remove, (i, i + 1), Outcome::Unknown);
            [put_unknown(i, &format!("lost{i}"), i), gone]
        })
        .collect();
    history.push(put(1, "a", (100, 110)));
    history.push(get(2, Some("a"), (120, 130)));
    history.push(get(2, None, (140, 150)));
    history.push(get(2, Some("a"), (160, 170)));
    let limits = Limits {
        max_steps_per_key: 200_000,
    };
    let report = check(&history, limits).unwrap();
    assert_eq!(report.verdict(), Verdict::NotLinearizable, "{report:?}");
    assert_eq!(report.violations[0].blocked, history[history.len() - 1]);
}

#[test]
fn keys_are_judged_separately() {
    let mut other = put(1, "a", (0, 10));
    other.key = "other".into();
    let history = [other, get(2, Some("a"), (20, 30))];
    let v = violation(&history);
    assert_eq!(v.key, "k");
}

#[test]
fn an_exhausted_budget_says_unknown() {
    // Many concurrent puts and one read at the end that fits no order: the search must try
    // many placements before it knows, far more than a budget of 10.
    let mut history: Vec<Operation> = (0..12)
        .map(|i| put(i, &format!("v{i}"), (0, 100)))
        .collect();
    history.push(remove(99, false, (200, 210)));
    let report = check(
        &history,
        Limits {
            max_steps_per_key: 10,
        },
    )
    .unwrap();
    assert_eq!(report.verdict(), Verdict::Unknown);
    assert_eq!(report.unknown_keys, vec![("k".to_string(), 10)]);
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn malformed_records_are_refused() {
    let mismatch = op(1, Call::Put("a".into()), (0, 1), Outcome::Removed(true));
    assert!(matches!(
        check(&[mismatch], Limits::default()),
        Err(HistoryError::OutcomeMismatch { index: 0, .. })
    ));
    let backwards = get(1, None, (10, 5));
    assert!(matches!(
        check(&[backwards], Limits::default()),
        Err(HistoryError::ReturnBeforeInvoke { index: 0, .. })
    ));
}

#[test]
fn json_lines_round_trip() {
    let history = vec![
        put(1, "a", (0, 10)),
        put_unknown(2, "b", 20),
        remove(3, true, (30, 40)),
        get(4, None, (50, 60)),
        get(4, Some("b"), (70, 80)),
    ];
    let mut text = Vec::new();
    write_history(&mut text, &history).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), history.len());
    assert!(text.contains(r#""call":{"put":"a"}"#), "{text}");
    assert_eq!(read_history(text.as_bytes()).unwrap(), history);
    let bad = format!("{text}\nnot json\n");
    assert!(matches!(
        read_history(bad.as_bytes()),
        Err(HistoryError::Json { line: 7, .. })
    ));
}

#[test]
fn a_violation_names_what_went_wrong() {
    let history = [
        put(1, "a", (0, 10)),
        put(1, "b", (20, 30)),
        get(2, Some("a"), (40, 50)),
    ];
    let text = violation(&history).to_string();
    assert!(text.contains("key \"k\" is not linearizable"), "{text}");
    assert!(text.contains("get(\"k\") -> Some(\"a\")"), "{text}");
    assert!(text.contains("the key holds Some(\"b\")"), "{text}");
}

mod generated {
    //! Histories made from a sequential run: each operation takes effect at a distinct moment
    //! and is given a random invoke before and return after it, so clients overlap freely. Some
    //! writes lose their answer (possibly applied), and some of those never took effect at all.

    use super::super::{family, search};
    use super::*;
    use crate::rng::Rng;

    const KEYS: [&str; 3] = ["a", "b", "c"];
    const CLIENTS: usize = 5;

    /// The sequential run so far, and when each client is free to send again (a client has at
    /// most one request outstanding, as the harness's clients do).
    struct Run {
        rng: Rng,
        store: BTreeMap<String, String>,
        free_at_us: [u64; CLIENTS],
        history: Vec<Operation>,
        /// Whether some calls are `put_many` and `get_many` (of the keys of `KEYS`).
        multi: bool,
    }

    impl Run {
        /// A `put_many` of two or three keys, or a `get_many` of all, applied to the store; the
        /// call and its answer. `None`: this operation is a single-key one.
        fn apply_multi(&mut self, n: usize) -> Option<(Call, Outcome)> {
            if !self.multi {
                return None;
            }
            match self.rng.below(10) {
                0..=1 => {
                    let skip = self.rng.below(4) as usize; // 3: no key skipped
                    let value = format!("v{n}");
                    let mut items = Vec::new();
                    for (_, key) in KEYS.iter().enumerate().filter(|(i, _)| *i != skip) {
                        self.store.insert(key.to_string(), value.clone());
                        items.push((key.to_string(), value.clone()));
                    }
                    let lost = self.rng.below(8) == 0;
                    let outcome = if lost {
                        Outcome::Unknown
                    } else {
                        Outcome::Written
                    };
                    Some((Call::PutMany(items), outcome))
                }
                2..=3 => {
                    let values = KEYS.iter().map(|k| self.store.get(*k).cloned()).collect();
                    let keys = KEYS.iter().map(|k| k.to_string()).collect();
                    Some((Call::GetMany(keys), Outcome::ReadMany(values)))
                }
                _ => None,
            }
        }

        /// The call of operation `n` on `key`, applied to the store; its answer.
        fn apply(&mut self, n: usize, key: &str) -> (Call, Outcome) {
            match self.rng.below(10) {
                0..=3 => {
                    let value = format!("v{n}");
                    self.store.insert(key.to_string(), value.clone());
                    let lost = self.rng.below(8) == 0;
                    let outcome = if lost {
                        Outcome::Unknown
                    } else {
                        Outcome::Written
                    };
                    (Call::Put(value), outcome)
                }
                4..=5 => (
                    Call::Remove,
                    Outcome::Removed(self.store.remove(key).is_some()),
                ),
                _ => (Call::Get, Outcome::Read(self.store.get(key).cloned())),
            }
        }

        /// Operation `n` takes effect at `at_us`, sent by a client free by then.
        fn step(&mut self, n: usize, at_us: u64) {
            let free: Vec<usize> = (0..CLIENTS)
                .filter(|&c| self.free_at_us[c] < at_us)
                .collect();
            let Some(&client) = free.get(self.rng.below(free.len().max(1) as u64) as usize) else {
                return; // every client is busy: nothing happens at this moment
            };
            let mut key = KEYS[self.rng.below(KEYS.len() as u64) as usize].to_string();
            let (call, outcome) = match self.apply_multi(n) {
                Some(multi) => {
                    key.clear();
                    multi
                }
                None => self.apply(n, &key),
            };
            let earliest_us = self.free_at_us[client] + 1;
            let invoke_us = at_us - self.rng.below(at_us - earliest_us + 1).min(300);
            let return_us = at_us + 1 + self.rng.below(300);
            self.free_at_us[client] = return_us;
            self.history.push(Operation {
                client: client as u64,
                key,
                call,
                invoke_us,
                return_us,
                outcome,
            });
        }

        /// A put that lost its answer and never took effect.
        fn ghost(&mut self, n: usize, at_us: u64) {
            let key = KEYS[self.rng.below(KEYS.len() as u64) as usize];
            let span_us = (at_us, at_us + 1);
            let mut ghost = op(9, Call::Put(format!("ghost{n}")), span_us, Outcome::Unknown);
            ghost.key = key.into();
            self.history.push(ghost);
        }
    }

    /// A linearizable history: `len` moments, most with an operation taking effect, plus puts
    /// that lost their answer and never took effect.
    fn history(seed: u64, len: usize) -> Vec<Operation> {
        run(seed, len, false)
    }

    /// `history`, with `put_many` and `get_many` among the calls when `multi`.
    fn run(seed: u64, len: usize, multi: bool) -> Vec<Operation> {
        let mut run = Run {
            rng: Rng::new(seed),
            store: BTreeMap::new(),
            free_at_us: [0; CLIENTS],
            history: Vec::new(),
            multi,
        };
        for n in 0..len {
            let at_us = 1000 + n as u64 * 50;
            run.step(n, at_us);
            if run.rng.below(20) == 0 {
                run.ghost(n, at_us);
            }
        }
        run.history
    }

    #[test]
    fn sequential_runs_with_overlapping_timings_are_linearizable() {
        for seed in 0..300 {
            let history = history(seed, 200);
            let report = check(&history, Limits::default()).unwrap();
            assert_eq!(
                report.verdict(),
                Verdict::Linearizable,
                "seed {seed}: {:?}",
                report.violations.first().map(|v| v.to_string())
            );
        }
    }

    #[test]
    fn one_read_of_an_unwritten_value_breaks_them() {
        for seed in 0..300 {
            let mut history = history(seed, 200);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].outcome, Outcome::Read(_)))
                .collect();
            let Some(&target) = reads.get(seed as usize % reads.len().max(1)) else {
                continue;
            };
            history[target].outcome = Outcome::Read(Some("never-written".into()));
            let report = check(&history, Limits::default()).unwrap();
            assert_eq!(report.verdict(), Verdict::NotLinearizable, "seed {seed}");
            assert_eq!(report.violations[0].blocked, history[target], "seed {seed}");
            // The search alone (without the quick scan for unwritten values) finds it too.
            let key = history[target].key.clone();
            let ops: Vec<&Operation> = history
                .iter()
                .filter(|op| {
                    op.key == key && !(op.call == Call::Get && op.outcome == Outcome::Unknown)
                })
                .collect();
            let family = family::Family {
                keys: vec![key.as_str()],
                ops,
            };
            let found = search::check_family(&family, Limits::default().max_steps_per_key);
            let what = match found {
                search::KeyResult::Violation(_) => continue,
                search::KeyResult::Linearizable => "linearizable".to_string(),
                search::KeyResult::OutOfBudget { steps } => format!("out of budget at {steps}"),
            };
            panic!(
                "seed {seed}: the search missed it ({what}, {} ops)",
                family.ops.len()
            );
        }
    }

    #[test]
    fn sequential_runs_with_put_many_and_get_many_are_linearizable() {
        let mut multi_key_reads = 0;
        for seed in 0..300 {
            let history = run(seed, 200, true);
            multi_key_reads += history
                .iter()
                .filter(|op| matches!(op.outcome, Outcome::ReadMany(_)))
                .count();
            let report = check(&history, Limits::default()).unwrap();
            assert_eq!(report.families_checked, 1, "seed {seed}");
            assert_eq!(
                report.verdict(),
                Verdict::Linearizable,
                "seed {seed}: {:?}",
                report.violations.first().map(|v| v.to_string())
            );
        }
        assert!(
            multi_key_reads > 300 * 20,
            "{multi_key_reads} get_many answers"
        );
    }

    #[test]
    fn one_get_many_of_a_value_from_the_future_breaks_them() {
        // A get_many's first key is made to read the value of a put_many that was sent only
        // after the read had returned.
        let mut broken = 0;
        for seed in 0..300 {
            let mut history = run(seed, 200, true);
            let read = history.iter().position(|op| {
                matches!(op.outcome, Outcome::ReadMany(_))
                    && history.iter().any(|w| {
                        matches!(&w.call, Call::PutMany(items) if items[0].0 == "a")
                            && w.invoke_us > op.return_us
                    })
            });
            let Some(read) = read else { continue };
            let later = history
                .iter()
                .find_map(|w| match &w.call {
                    Call::PutMany(items)
                        if items[0].0 == "a" && w.invoke_us > history[read].return_us =>
                    {
                        Some(items[0].1.clone())
                    }
                    _ => None,
                })
                .unwrap();
            let Outcome::ReadMany(values) = &mut history[read].outcome else {
                unreachable!()
            };
            values[0] = Some(later);
            let report = check(&history, Limits::default()).unwrap();
            assert_eq!(report.verdict(), Verdict::NotLinearizable, "seed {seed}");
            broken += 1;
        }
        assert!(broken > 250, "only {broken} histories had a read to break");
    }
}
