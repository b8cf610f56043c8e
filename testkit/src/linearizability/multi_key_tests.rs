//! The checker against hand-written histories of `put_many` and `get_many`: a multi-key call
//! takes effect on all its keys at one instant, and a torn read is caught (the generated
//! histories with multi-key calls are in `tests::generated`).

use super::tests::{get, op, put, remove, verdict, violation};
use super::*;

/// `put_many` of `items` (key, value), answered.
fn put_many(client: u64, items: &[(&str, &str)], span_us: (u64, u64)) -> Operation {
    let items = items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut op = op(client, Call::PutMany(items), span_us, Outcome::Written);
    op.key = String::new();
    op
}

/// `get_many` of `keys`, answered `values` (in the keys' order).
fn get_many(client: u64, keys: &[&str], values: &[Option<&str>], span_us: (u64, u64)) -> Operation {
    let keys = keys.iter().map(|k| k.to_string()).collect();
    let values = values.iter().map(|v| v.map(str::to_string)).collect();
    let mut op = op(
        client,
        Call::GetMany(keys),
        span_us,
        Outcome::ReadMany(values),
    );
    op.key = String::new();
    op
}

/// A single-key operation on `key`.
fn on(key: &str, mut op: Operation) -> Operation {
    op.key = key.into();
    op
}

/// Two `put_many`s of keys a and b, the second running from 20 to 60 us, and a `get_many`
/// of both inside it that answered `seen`.
fn two_put_manys_and_a_get_many(seen: [&str; 2]) -> Vec<Operation> {
    vec![
        put_many(1, &[("a", "x1"), ("b", "x1")], (0, 10)),
        put_many(2, &[("a", "x2"), ("b", "x2")], (20, 60)),
        get_many(3, &["a", "b"], &[Some(seen[0]), Some(seen[1])], (30, 50)),
    ]
}

#[test]
fn a_get_many_sees_a_put_many_whole_or_not_at_all() {
    for seen in [["x1", "x1"], ["x2", "x2"]] {
        let history = two_put_manys_and_a_get_many(seen);
        assert_eq!(verdict(&history), Verdict::Linearizable, "{seen:?}");
    }
}

#[test]
fn a_torn_get_many_is_caught() {
    for seen in [["x1", "x2"], ["x2", "x1"]] {
        let history = two_put_manys_and_a_get_many(seen);
        let v = violation(&history);
        assert_eq!(v.key, "a+b");
        assert_eq!(v.blocked, history[2], "{seen:?}");
        // Each half of the read alone fits: only a model of both keys at once sees the tear.
        let [a, b] = seen.map(Some);
        let halves = [
            history[0].clone(),
            history[1].clone(),
            on("a", get(3, a, (30, 50))),
            on("b", get(4, b, (30, 50))),
        ];
        assert_eq!(verdict(&halves), Verdict::Linearizable, "{seen:?}");
    }
}

#[test]
fn a_get_many_may_see_a_partial_put_many_over_an_older_one() {
    let keys = ["a", "b", "c"];
    let history = [
        put_many(1, &[("a", "x1"), ("b", "x1"), ("c", "x1")], (0, 10)),
        put_many(2, &[("a", "x2"), ("b", "x2")], (20, 60)),
        get_many(3, &keys, &[Some("x2"), Some("x2"), Some("x1")], (30, 50)),
        get_many(4, &keys, &[Some("x1"), Some("x1"), Some("x1")], (30, 50)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    let torn = [
        history[0].clone(),
        history[1].clone(),
        get_many(3, &keys, &[Some("x2"), Some("x1"), Some("x1")], (30, 50)),
    ];
    assert_eq!(violation(&torn).blocked, torn[2]);
}

#[test]
fn single_key_calls_mix_with_put_many_and_get_many() {
    let history = [
        put_many(1, &[("a", "x1"), ("b", "x1")], (0, 10)),
        on("b", put(2, "y", (20, 30))),
        get_many(3, &["a", "b"], &[Some("x1"), Some("y")], (40, 50)),
        on("a", remove(1, true, (60, 70))),
        get_many(3, &["a", "b"], &[None, Some("y")], (80, 90)),
        on("b", get(2, Some("y"), (80, 90))),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    // The remove of a finished before this read began: a must be gone.
    let stale = [
        history[..4].to_vec(),
        vec![get_many(3, &["a", "b"], &[Some("x1"), Some("y")], (80, 90))],
    ]
    .concat();
    assert_eq!(violation(&stale).blocked, stale[4]);
}

#[test]
fn a_possibly_applied_put_many_takes_effect_whole_or_not_at_all() {
    let lost = |at: u64| {
        let mut op = put_many(2, &[("a", "x2"), ("b", "x2")], (at, at + 1));
        op.outcome = Outcome::Unknown;
        op
    };
    let read = |values: [&str; 2], span_us| get_many(3, &["a", "b"], &values.map(Some), span_us);
    let first = put_many(1, &[("a", "x1"), ("b", "x1")], (0, 10));
    for seen in [["x1", "x1"], ["x2", "x2"]] {
        let history = [first.clone(), lost(20), read(seen, (30, 40))];
        assert_eq!(verdict(&history), Verdict::Linearizable, "{seen:?}");
    }
    let torn = [first.clone(), lost(20), read(["x2", "x1"], (30, 40))];
    assert_eq!(verdict(&torn), Verdict::NotLinearizable);
    let seen_then_gone = [
        first.clone(),
        lost(20),
        read(["x2", "x2"], (30, 40)),
        read(["x1", "x1"], (50, 60)),
    ];
    assert_eq!(violation(&seen_then_gone).blocked, seen_then_gone[3]);
}

#[test]
fn keys_that_multi_key_calls_never_join_stay_apart() {
    let history = [
        put_many(1, &[("a", "x1"), ("b", "x1")], (0, 10)),
        get_many(2, &["b", "c"], &[Some("x1"), None], (20, 30)),
        on("d", put(3, "y", (0, 10))),
        on("e", get(3, None, (20, 30))),
    ];
    let report = check(&history, Limits::default()).unwrap();
    assert_eq!(report.verdict(), Verdict::Linearizable);
    assert_eq!((report.keys_checked, report.families_checked), (5, 1));
    assert_eq!(report.operations_checked, 4);
    let lost = [history.to_vec(), vec![on("d", get(4, None, (40, 50)))]].concat();
    let v = violation(&lost);
    assert_eq!(v.key, "d");
}

#[test]
fn a_family_violation_names_its_keys_and_their_values() {
    let history = two_put_manys_and_a_get_many(["x1", "x2"]);
    let text = violation(&history).to_string();
    assert!(
        text.contains(r#"keys ["a", "b"] (written or read together) are not linearizable"#),
        "{text}"
    );
    assert!(
        text.contains(r#"get_many("a", "b") -> [Some("x1"), Some("x2")]"#),
        "{text}"
    );
    assert!(text.contains("the keys hold {"), "{text}");
}

#[test]
fn a_get_many_of_a_value_never_written_to_that_key_is_caught() {
    let history = [
        put_many(1, &[("a", "x1")], (0, 10)),
        get_many(2, &["a", "b"], &[Some("x1"), Some("x1")], (20, 30)),
    ];
    let v = violation(&history);
    assert!(v.reason.contains("no put"), "{v}");
    assert_eq!(v.blocked, history[1]);
}

#[test]
fn malformed_multi_key_records_are_refused() {
    let short = get_many(1, &["a", "b"], &[None], (0, 1));
    let twice = put_many(1, &[("a", "x"), ("a", "y")], (0, 1));
    let none = put_many(1, &[], (0, 1));
    let mut with_key = get_many(1, &["a"], &[None], (0, 1));
    with_key.key = "a".into();
    let read_many_of_a_get = op(1, Call::Get, (0, 1), Outcome::ReadMany(vec![None]));
    for (bad, mismatch) in [
        (short, true),
        (twice, false),
        (none, false),
        (with_key, false),
        (read_many_of_a_get, true),
    ] {
        let result = check(std::slice::from_ref(&bad), Limits::default());
        let refused = match result {
            Err(HistoryError::OutcomeMismatch { .. }) => mismatch,
            Err(HistoryError::BadKeys { .. }) => !mismatch,
            _ => false,
        };
        assert!(refused, "{bad}: {result:?}");
    }
}

#[test]
fn multi_key_records_round_trip_as_json_lines() {
    let mut lost = put_many(2, &[("a", "x2"), ("b", "x2")], (20, 21));
    lost.outcome = Outcome::Unknown;
    let history = vec![
        put_many(1, &[("a", "x1"), ("b", "x1")], (0, 10)),
        lost,
        get_many(3, &["a", "b"], &[Some("x1"), None], (30, 40)),
    ];
    let mut text = Vec::new();
    write_history(&mut text, &history).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(r#""call":{"put_many":[["a","x1"],["b","x1"]]}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""outcome":{"read_many":["x1",null]}"#),
        "{text}"
    );
    assert!(!text.contains(r#""key""#), "{text}");
    assert_eq!(read_history(text.as_bytes()).unwrap(), history);
}
