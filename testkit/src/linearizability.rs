//! A linearizability checker for histories of client operations on a key-value register: the
//! judge of the fault-injection suite (`tools/faults`) and of the compose tests, which record
//! every `put`, `remove` and linearizable `get` their clients make and ask here whether some total
//! order of them, consistent with real time, explains every result.
//!
//! Keys are independent registers, so a history is checked key by key (a history is
//! linearizable exactly when each key's sub-history is). Each key gets a WGL search (Wing & Gong,
//! with Lowe's memoisation, as the Go checker porcupine does it) in `search`: it tries to place
//! operations one at a time in an order that respects real time, memoises every
//! (register state, set of placed operations) it has seen, and backtracks. The search has a step
//! budget per key: past it the key is reported `unknown`, never hung on.
//!
//! An operation that failed with an unknown outcome (a timeout, a lost connection) is *possibly
//! applied*: it may take effect at any moment after its invoke, or never; its result constrains
//! nothing. A `get` with an unknown outcome says nothing at all and is ignored.
//!
//! Histories travel as JSON lines of [`Operation`] (see [`read_history`] / [`write_history`]),
//! so the harness can record them as it goes and a failed run's history can be checked again.

mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `put(key, value)`.
    Put(String),
    /// `remove(key)`, which answers whether the key existed.
    Remove,
    /// A linearizable `get(key)`.
    Get,
}

/// What the client got back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The put was acknowledged.
    Written,
    /// The remove answered: did the key exist?
    Removed(bool),
    /// The get answered: the value, or `None` for a missing key.
    Read(Option<String>),
    /// No answer that settles it (timeout, connection lost, unavailable after sending): the
    /// operation may have taken effect at any time after its invoke, or never.
    Unknown,
}

/// One client operation as recorded by the harness. Times are microseconds on one clock shared
/// by all clients of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Which client made it (for reports; the checker needs only the times).
    pub client: u64,
    pub key: String,
    pub call: Call,
    /// When the client sent the request.
    pub invoke_us: u64,
    /// When the client got the answer (or gave up). Ignored for `Outcome::Unknown`, whose
    /// return is taken to be never.
    pub return_us: u64,
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Put(value) => format!("put({:?}, {value:?})", self.key),
            Call::Remove => format!("remove({:?})", self.key),
            Call::Get => format!("get({:?})", self.key),
        };
        let outcome = match &self.outcome {
            Outcome::Written => "ok".to_string(),
            Outcome::Removed(existed) => format!("existed={existed}"),
            Outcome::Read(value) => format!("{value:?}"),
            Outcome::Unknown => "unknown".to_string(),
        };
        let end = match self.outcome {
            Outcome::Unknown => "inf".to_string(),
            _ => self.return_us.to_string(),
        };
        write!(
            f,
            "client {} {call} -> {outcome} [{}..{end} us]",
            self.client, self.invoke_us
        )
    }
}

/// A history the checker cannot judge because a record makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The outcome is not one the call can have (e.g. a put that answered a value).
    #[error("operation {index} ({op}): outcome does not fit the call")]
    OutcomeMismatch { index: usize, op: Operation },
    /// The answer came before the request.
    #[error("operation {index} ({op}): returns before it is invoked")]
    ReturnBeforeInvoke { index: usize, op: Operation },
    /// A line of a JSON-lines history is not an operation.
    #[error("history line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("reading or writing a history: {0}")]
    Io(#[from] std::io::Error),
}

/// How much work the checker may do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Search steps per key before the key is `unknown`: placements tried against the memo
    /// plus backtracks. Memory grows with the steps (each memoised state holds a bitset of the
    /// key's operations), time with the steps times the number of concurrent operations.
    pub max_steps_per_key: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps_per_key: 1_000_000,
        }
    }
}

/// A key whose history no real-time-respecting order explains, with what the search learned.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// Why, in a sentence.
    pub reason: String,
    /// How many of the key's operations the longest explained prefix held.
    pub prefix_len: usize,
    /// The last operations of that prefix, in the order they were placed.
    pub prefix_tail: Vec<Operation>,
    /// The register after that prefix (`None`: the key is absent).
    pub state_after_prefix: Option<String>,
    /// The operation that had to take effect next (it returned before anything left could
    /// start) but could not, from that state.
    pub blocked: Operation,
    /// Operations that were running alongside it and were tried in its place.
    pub concurrent: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable: {}", self.key, self.reason)?;
        write!(f, "  after {} operations", self.prefix_len)?;
        if !self.prefix_tail.is_empty() {
            write!(f, ", ending with:")?;
        }
        for op in &self.prefix_tail {
            write!(f, "\n    {op}")?;
        }
        writeln!(f, "\n  the key holds {:?}", self.state_after_prefix)?;
        write!(f, "  and this cannot take effect next: {}", self.blocked)?;
        for op in &self.concurrent {
            write!(f, "\n    (concurrent, tried first: {op})")?;
        }
        Ok(())
    }
}

/// The checker's answer for a whole history.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub keys_checked: usize,
    /// Operations that constrain the search (unknown gets are not counted).
    pub operations_checked: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of budget, with the steps spent.
    pub unknown_keys: Vec<(String, u64)>,
}

/// The summary of a [`Report`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// No violation found, but the search gave up on some key.
    Unknown,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::NotLinearizable
        } else if !self.unknown_keys.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Linearizable
        }
    }
}

/// Checks a whole history, key by key, starting from an empty store.
pub fn check(history: &[Operation], limits: Limits) -> Result<Report, HistoryError> {
    validate(history)?;
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if op.call == Call::Get && op.outcome == Outcome::Unknown {
            continue; // an unanswered read constrains nothing
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut report = Report {
        keys_checked: by_key.len(),
        ..Report::default()
    };
    for (key, ops) in by_key {
        report.operations_checked += ops.len();
        if let Some(violation) = read_of_unwritten_value(key, &ops) {
            report.violations.push(violation);
            continue;
        }
        match search::check_key(key, &ops, limits.max_steps_per_key) {
            search::KeyResult::Linearizable => {}
            search::KeyResult::Violation(v) => report.violations.push(*v),
            search::KeyResult::OutOfBudget { steps } => {
                report.unknown_keys.push((key.to_string(), steps))
            }
        }
    }
    Ok(report)
}

/// Every record must be a call with an outcome it can have, answered no earlier than asked.
fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        let fits = matches!(
            (&op.call, &op.outcome),
            (_, Outcome::Unknown)
                | (Call::Put(_), Outcome::Written)
                | (Call::Remove, Outcome::Removed(_))
                | (Call::Get, Outcome::Read(_))
        );
        if !fits {
            let op = op.clone();
            return Err(HistoryError::OutcomeMismatch { index, op });
        }
        if op.outcome != Outcome::Unknown && op.return_us < op.invoke_us {
            let op = op.clone();
            return Err(HistoryError::ReturnBeforeInvoke { index, op });
        }
    }
    Ok(())
}

/// A fast, clear answer for the plainest anomaly: a read of a value no put on this key wrote.
/// (The search would find it too, after trying every order of what came before.)
fn read_of_unwritten_value(key: &str, ops: &[&Operation]) -> Option<Violation> {
    let written: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Put(value) => Some(value.as_str()),
            _ => None,
        })
        .collect();
    let bad = ops.iter().find(|op| match &op.outcome {
        Outcome::Read(Some(value)) => !written.contains(value.as_str()),
        _ => false,
    })?;
    Some(Violation {
        key: key.to_string(),
        reason: "a read returned a value that no put of this key wrote".into(),
        prefix_len: 0,
        prefix_tail: Vec::new(),
        state_after_prefix: None,
        blocked: (*bad).clone(),
        concurrent: Vec::new(),
    })
}

/// Reads a history written as JSON lines, one [`Operation`] per line (blank lines skipped).
pub fn read_history(reader: impl BufRead) -> Result<Vec<Operation>, HistoryError> {
    let mut history = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Json {
            line: n + 1,
            source,
        })?;
        history.push(op);
    }
    Ok(history)
}

/// Writes a history as JSON lines, the form [`read_history`] reads.
pub fn write_history(mut writer: impl Write, history: &[Operation]) -> Result<(), HistoryError> {
    for op in history {
        serde_json::to_writer(&mut writer, op).map_err(std::io::Error::from)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    Ok(())
}
