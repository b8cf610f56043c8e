//! A linearizability checker for histories of client operations on a key-value store: the
//! judge of the fault-injection suite (`tools/faults`) and of the compose tests, which record
//! every `put`, `remove`, linearizable `get`, `put_many` and linearizable `get_many` their
//! clients make and ask here whether some total order of them, consistent with real time,
//! explains every result.
//!
//! A `put_many` writes all its keys at one instant and a `get_many` reads all its keys at one
//! instant, so keys are not always independent: the keys that multi-key operations tie together
//! form a *family* (`family`), and a history is linearizable exactly when each family's
//! sub-history is (a key no multi-key operation touches is a family of one). Each family gets a
//! WGL search (Wing & Gong, with Lowe's memoisation, as the Go checker porcupine does it) in
//! `search`, over a model with one register per key of the family: it tries to place operations
//! one at a time in an order that respects real time, memoises every (registers, set of placed
//! operations) it has seen, and backtracks. A `get_many` that returns values of two keys that
//! were never held together (a torn read of two `put_many`s) fits no order. The search has a
//! step budget per family: past it the family is reported `unknown`, never hung on. Families
//! stay small when the workload keeps each multi-key operation within a fixed group of keys
//! (as `history` does).
//!
//! An operation that failed with an unknown outcome (a timeout, a lost connection) is *possibly
//! applied*: it may take effect at any moment after its invoke, or never; its result constrains
//! nothing. A `get` or `get_many` with an unknown outcome says nothing at all and is ignored.
//!
//! Histories travel as JSON lines of [`Operation`] (see [`read_history`] / [`write_history`]),
//! so the harness can record them as it goes and a failed run's history can be checked again.

mod family;
#[cfg(test)]
mod multi_key_tests;
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
    /// `put_many`: every (key, value), written by one log entry, at one instant.
    PutMany(Vec<(String, String)>),
    /// A linearizable `get_many` of these keys: every value read at one instant.
    GetMany(Vec<String>),
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
    /// The get_many answered: the value of each of its keys, in the call's order (`None` for a
    /// missing key).
    ReadMany(Vec<Option<String>>),
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
    /// The key of a single-key call; empty for `put_many` and `get_many`, whose keys are in
    /// the call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    pub call: Call,
    /// When the client sent the request.
    pub invoke_us: u64,
    /// When the client got the answer (or gave up). Ignored for `Outcome::Unknown`, whose
    /// return is taken to be never.
    pub return_us: u64,
    pub outcome: Outcome,
}

impl Operation {
    /// The keys the operation touches.
    pub fn keys(&self) -> Vec<&str> {
        match &self.call {
            Call::PutMany(items) => items.iter().map(|(key, _)| key.as_str()).collect(),
            Call::GetMany(keys) => keys.iter().map(String::as_str).collect(),
            Call::Put(_) | Call::Remove | Call::Get => vec![self.key.as_str()],
        }
    }

    /// The (key, value) pairs the operation writes, if it takes effect.
    pub fn writes(&self) -> Vec<(&str, &str)> {
        match &self.call {
            Call::Put(value) => vec![(self.key.as_str(), value.as_str())],
            Call::PutMany(items) => items
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            Call::Remove | Call::Get | Call::GetMany(_) => Vec::new(),
        }
    }

    /// The (key, value read) pairs of an answered read (`None`: the key was missing).
    pub fn reads(&self) -> Vec<(&str, Option<&str>)> {
        match (&self.call, &self.outcome) {
            (Call::Get, Outcome::Read(value)) => vec![(self.key.as_str(), value.as_deref())],
            (Call::GetMany(keys), Outcome::ReadMany(values)) => keys
                .iter()
                .zip(values)
                .map(|(key, value)| (key.as_str(), value.as_deref()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A read with no answer: it constrains nothing.
    fn says_nothing(&self) -> bool {
        matches!(self.call, Call::Get | Call::GetMany(_)) && self.outcome == Outcome::Unknown
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call = match &self.call {
            Call::Put(value) => format!("put({:?}, {value:?})", self.key),
            Call::Remove => format!("remove({:?})", self.key),
            Call::Get => format!("get({:?})", self.key),
            Call::PutMany(items) => {
                let items: Vec<String> =
                    items.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
                format!("put_many({})", items.join(", "))
            }
            Call::GetMany(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
                format!("get_many({})", keys.join(", "))
            }
        };
        let outcome = match &self.outcome {
            Outcome::Written => "ok".to_string(),
            Outcome::Removed(existed) => format!("existed={existed}"),
            Outcome::Read(value) => format!("{value:?}"),
            Outcome::ReadMany(values) => format!("{values:?}"),
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
    OutcomeMismatch { index: usize, op: Box<Operation> },
    /// The answer came before the request.
    #[error("operation {index} ({op}): returns before it is invoked")]
    ReturnBeforeInvoke { index: usize, op: Box<Operation> },
    /// A `put_many` or `get_many` that names no key, or a key twice, or also has a `key`.
    #[error("operation {index} ({op}): a put_many or get_many names each of its keys once (at least one) and no `key`")]
    BadKeys { index: usize, op: Box<Operation> },
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
    /// Search steps per family of keys (a single key, or keys that multi-key operations tie
    /// together) before the family is `unknown`: placements tried against the memo plus
    /// backtracks. Memory grows with the steps (each memoised state holds a bitset of the
    /// family's operations), time with the steps times the number of concurrent operations.
    pub max_steps_per_key: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps_per_key: 1_000_000,
        }
    }
}

/// A key (or a family of keys) whose history no real-time-respecting order explains, with what
/// the search learned.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key, or the keys of the family joined by `+`.
    pub key: String,
    /// Why, in a sentence.
    pub reason: String,
    /// How many of the key's operations the longest explained prefix held.
    pub prefix_len: usize,
    /// The last operations of that prefix, in the order they were placed.
    pub prefix_tail: Vec<Operation>,
    /// Each key of the family after that prefix (`None`: the key is absent).
    pub state_after_prefix: BTreeMap<String, Option<String>>,
    /// The operation that had to take effect next (it returned before anything left could
    /// start) but could not, from that state.
    pub blocked: Operation,
    /// Operations that were running alongside it and were tried in its place.
    pub concurrent: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.state_after_prefix.keys().collect();
        match keys.as_slice() {
            [_] | [] => writeln!(f, "key {:?} is not linearizable: {}", self.key, self.reason)?,
            _ => writeln!(
                f,
                "keys {keys:?} (written or read together) are not linearizable: {}",
                self.reason
            )?,
        }
        write!(f, "  after {} operations", self.prefix_len)?;
        if !self.prefix_tail.is_empty() {
            write!(f, ", ending with:")?;
        }
        for op in &self.prefix_tail {
            write!(f, "\n    {op}")?;
        }
        match self
            .state_after_prefix
            .values()
            .collect::<Vec<_>>()
            .as_slice()
        {
            [value] => writeln!(f, "\n  the key holds {value:?}")?,
            _ => writeln!(f, "\n  the keys hold {:?}", self.state_after_prefix)?,
        }
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
    /// Families of more than one key (keys that multi-key operations tie together).
    pub families_checked: usize,
    /// Operations that constrain the search (unknown reads are not counted).
    pub operations_checked: usize,
    pub violations: Vec<Violation>,
    /// Keys (or families, named as in [`Violation::key`]) whose search ran out of budget, with
    /// the steps spent.
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

/// Checks a whole history, family by family, starting from an empty store.
pub fn check(history: &[Operation], limits: Limits) -> Result<Report, HistoryError> {
    validate(history)?;
    let constraining: Vec<&Operation> = history.iter().filter(|op| !op.says_nothing()).collect();
    let families = family::families(&constraining);
    let mut report = Report {
        keys_checked: families.iter().map(|f| f.keys.len()).sum(),
        families_checked: families.iter().filter(|f| f.keys.len() > 1).count(),
        ..Report::default()
    };
    for family in &families {
        report.operations_checked += family.ops.len();
        if let Some(violation) = read_of_unwritten_value(family) {
            report.violations.push(violation);
            continue;
        }
        match search::check_family(family, limits.max_steps_per_key) {
            search::KeyResult::Linearizable => {}
            search::KeyResult::Violation(v) => report.violations.push(*v),
            search::KeyResult::OutOfBudget { steps } => {
                report.unknown_keys.push((family.name(), steps))
            }
        }
    }
    Ok(report)
}

/// Every record must be a call with an outcome it can have, answered no earlier than asked;
/// a multi-key call names its keys once each.
fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        let fits = match (&op.call, &op.outcome) {
            (_, Outcome::Unknown)
            | (Call::Put(_) | Call::PutMany(_), Outcome::Written)
            | (Call::Remove, Outcome::Removed(_))
            | (Call::Get, Outcome::Read(_)) => true,
            (Call::GetMany(keys), Outcome::ReadMany(values)) => keys.len() == values.len(),
            _ => false,
        };
        if !fits {
            let op = Box::new(op.clone());
            return Err(HistoryError::OutcomeMismatch { index, op });
        }
        if matches!(op.call, Call::PutMany(_) | Call::GetMany(_)) {
            let keys = op.keys();
            let distinct: HashSet<&str> = keys.iter().copied().collect();
            if keys.is_empty() || distinct.len() != keys.len() || !op.key.is_empty() {
                let op = Box::new(op.clone());
                return Err(HistoryError::BadKeys { index, op });
            }
        }
        if op.outcome != Outcome::Unknown && op.return_us < op.invoke_us {
            let op = Box::new(op.clone());
            return Err(HistoryError::ReturnBeforeInvoke { index, op });
        }
    }
    Ok(())
}

/// A fast, clear answer for the plainest anomaly: a read of a value no put of that key wrote.
/// (The search would find it too, after trying every order of what came before.)
fn read_of_unwritten_value(family: &family::Family) -> Option<Violation> {
    let written: HashSet<(&str, &str)> = family.ops.iter().flat_map(|op| op.writes()).collect();
    let bad = family.ops.iter().find(|op| {
        op.reads()
            .iter()
            .any(|&(key, value)| value.is_some_and(|v| !written.contains(&(key, v))))
    })?;
    Some(Violation {
        key: family.name(),
        reason: "a read returned a value that no put of this key wrote".into(),
        prefix_len: 0,
        prefix_tail: Vec::new(),
        state_after_prefix: family.keys.iter().map(|k| (k.to_string(), None)).collect(),
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
