//! The WGL search for one family of keys: can the family's operations be placed one after
//! another, each between its invoke and its return, so that every result is what the registers
//! (one per key) answer? A `put_many` sets several registers in one step and a `get_many` must
//! match several in one step.
//!
//! Invokes and returns are laid out in time order in a doubly linked list. The search walks it
//! from the front: at an invoke it tries to place that operation now (if the registers' answer
//! matches the recorded one, and this (registers, placed set) is new, it removes the
//! operation's two entries from the list and starts again from the front); at a return, the
//! operation that returns there should have been placed already, so the last placement is
//! undone and the next candidate after it is tried. Memoising (registers, placed set) is what
//! keeps this from being exponential on ordinary histories.
//!
//! Possibly applied operations return at infinity, after every answered one. Once every
//! answered operation is placed the rest can always be placed too (their results constrain
//! nothing), so the search stops there. Three reductions keep them cheap, each implied by the
//! history so no answer changes: a possibly applied write whose value a read of that key
//! returned must take effect before that read returned (`spans_of`); on each key, values no
//! read of it returned are one value to the search (`UNSEEN`); and of interchangeable possibly
//! applied operations on one key only the earliest available is tried (`class_of`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::family::Family;
use super::{Call, Operation, Outcome, Violation};

/// A register: `None` when its key is absent, else the id of its value.
type Value = Option<u32>;
/// The family's registers, one per key, in the family's key order.
type State = Vec<Value>;

/// How many placed operations a violation report shows.
const PREFIX_TAIL_LEN: usize = 8;

pub(super) enum KeyResult {
    Linearizable,
    Violation(Box<Violation>),
    OutOfBudget { steps: u64 },
}

/// An operation's effect and the result it must produce, with keys as registers and values
/// interned.
#[derive(Clone)]
enum Step {
    /// Sets each (register, value) at one instant: a `put` or a `put_many`.
    Put(Vec<(usize, u32)>),
    /// `None`: outcome unknown, any answer will do.
    Remove(usize, Option<bool>),
    /// Each (register, value) read at one instant: a `get` or a `get_many`.
    Get(Vec<(usize, Value)>),
}

impl Step {
    /// The registers after this step, or `None` if the recorded result contradicts `state`.
    fn apply(&self, state: &[Value]) -> Option<State> {
        match self {
            Step::Put(writes) => {
                let mut after = state.to_vec();
                for &(register, value) in writes {
                    after[register] = Some(value);
                }
                Some(after)
            }
            Step::Remove(register, existed) => {
                if existed.is_some_and(|existed| state[*register].is_some() != existed) {
                    return None;
                }
                let mut after = state.to_vec();
                after[*register] = None;
                Some(after)
            }
            Step::Get(reads) => reads
                .iter()
                .all(|&(register, value)| state[register] == value)
                .then(|| state.to_vec()),
        }
    }
}

/// The time-ordered list of invokes and returns, with O(1) removal and reinsertion of an
/// operation's pair of entries (Knuth's dancing links). Node 0 is the head sentinel.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation each node belongs to.
    op: Vec<usize>,
    is_invoke: Vec<bool>,
    /// Each node's partner: the invoke's return and the return's invoke.
    partner: Vec<usize>,
}

const HEAD: usize = 0;
const END: usize = usize::MAX;

impl Events {
    /// `times[i]` is operation i's (invoke, return); a return of `u64::MAX` is never.
    fn new(times: &[(u64, u64)]) -> Self {
        // (time, 0 for invoke / 1 for return, op): at equal times invokes come first, so an
        // operation that starts the moment another ends counts as concurrent with it.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(times.len() * 2);
        for (i, &(invoke, ret)) in times.iter().enumerate() {
            order.push((invoke, 0, i));
            order.push((ret, 1, i));
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let mut events = Self {
            next: (1..=n).map(|i| if i == n { END } else { i }).collect(),
            prev: (0..n).map(|i| i.wrapping_sub(1)).collect(),
            op: vec![usize::MAX; n],
            is_invoke: vec![false; n],
            partner: vec![0; n],
        };
        let mut invoke_node = vec![0; times.len()];
        for (k, &(_, kind, op)) in order.iter().enumerate() {
            let node = k + 1;
            events.op[node] = op;
            events.is_invoke[node] = kind == 0;
            if kind == 0 {
                invoke_node[op] = node;
            } else {
                events.partner[node] = invoke_node[op];
                events.partner[invoke_node[op]] = node;
            }
        }
        events
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    /// Puts back a node unlinked earlier; nodes go back in the reverse order they left.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != END {
            self.prev[n] = node;
        }
    }

    /// Removes an operation (given its invoke node) from the list.
    fn lift(&mut self, invoke: usize) {
        self.unlink(invoke);
        self.unlink(self.partner[invoke]);
    }

    fn unlift(&mut self, invoke: usize) {
        self.relink(self.partner[invoke]);
        self.relink(invoke);
    }

    /// Whether an invoke of an operation of class `class` comes before `node` in the list.
    fn class_before(&self, node: usize, class: u32, classes: &[Option<u32>]) -> bool {
        let mut at = self.first();
        while at != node && at != END {
            if self.is_invoke[at] && classes[self.op[at]] == Some(class) {
                return true;
            }
            at = self.next[at];
        }
        false
    }

    /// The operations whose invokes come before `node` in the current list.
    fn invokes_before(&self, node: usize) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut at = self.first();
        while at != node && at != END {
            if self.is_invoke[at] {
                ops.push(self.op[at]);
            }
            at = self.next[at];
        }
        ops
    }
}

/// The set of placed operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The value id that stands, on a key, for every value no read of that key returned. Such
/// values cannot be told apart by anything later (a read never matches them; a remove finds
/// the key either way), so the search treats them as one, and states that differ only in which
/// of them a key holds merge.
const UNSEEN: u32 = 0;

/// Turns the family's operations into steps, with each (key, value) a read returned numbered
/// from 1.
fn steps_of(family: &Family) -> Vec<Step> {
    let registers = family.registers();
    let mut ids: HashMap<(usize, &str), u32> = HashMap::new();
    for op in &family.ops {
        for (key, value) in op.reads() {
            if let Some(value) = value {
                let next = ids.len() as u32 + 1;
                ids.entry((registers[key], value)).or_insert(next);
            }
        }
    }
    let id = |register: usize, value: &str| ids.get(&(register, value)).copied().unwrap_or(UNSEEN);
    family
        .ops
        .iter()
        .map(|op| match (&op.call, &op.outcome) {
            (Call::Remove, Outcome::Removed(existed)) => {
                Step::Remove(registers[op.key.as_str()], Some(*existed))
            }
            (Call::Remove, _) => Step::Remove(registers[op.key.as_str()], None),
            (Call::Put(_) | Call::PutMany(_), _) => Step::Put(
                op.writes()
                    .into_iter()
                    .map(|(key, value)| (registers[key], id(registers[key], value)))
                    .collect(),
            ),
            (Call::Get | Call::GetMany(_), _) => {
                debug_assert!(
                    op.outcome != Outcome::Unknown,
                    "unanswered reads are dropped"
                );
                Step::Get(
                    op.reads()
                        .into_iter()
                        .map(|(key, value)| (registers[key], value.map(|v| id(registers[key], v))))
                        .collect(),
                )
            }
        })
        .collect()
}

/// Possibly applied operations that are interchangeable: same effect on the same key, any
/// answer, no deadline. Of the members of a class that could be placed now, trying the earliest
/// is enough: a linearization that places a later one here places the earliest in its stead
/// just as well.
fn class_of(step: &Step, return_us: u64) -> Option<u32> {
    match step {
        Step::Put(writes) if return_us == u64::MAX => match writes.as_slice() {
            [(register, UNSEEN)] => Some(2 * *register as u32),
            _ => None,
        },
        Step::Remove(register, None) => Some(2 * *register as u32 + 1),
        _ => None,
    }
}

/// Each operation's (invoke, return) in microseconds, `u64::MAX` for never.
///
/// A possibly applied write is given a return when a read of one of its keys saw the value it
/// wrote there and no other write wrote that value to that key: it must then have taken effect
/// before that read did, so before the read returned. This is implied by the history, so no
/// answer changes; it only keeps such writes from being tried at every later point (etcd's
/// robustness tests narrow lost writes the same way).
fn spans_of(ops: &[&Operation]) -> Vec<(u64, u64)> {
    let mut writers: HashMap<(&str, &str), usize> = HashMap::new();
    for op in ops {
        for write in op.writes() {
            *writers.entry(write).or_default() += 1;
        }
    }
    let mut first_read_us: HashMap<(&str, &str), u64> = HashMap::new();
    for op in ops {
        for (key, value) in op.reads() {
            if let Some(value) = value {
                let at = first_read_us.entry((key, value)).or_insert(u64::MAX);
                *at = (*at).min(op.return_us);
            }
        }
    }
    ops.iter()
        .map(|op| {
            if op.outcome != Outcome::Unknown {
                return (op.invoke_us, op.return_us);
            }
            let seen_us = op
                .writes()
                .into_iter()
                .filter(|write| writers[write] == 1)
                .filter_map(|write| first_read_us.get(&write).copied())
                .min();
            (op.invoke_us, seen_us.unwrap_or(u64::MAX).max(op.invoke_us))
        })
        .collect()
}

/// The deepest point the search reached: how far it got and what stopped it there.
struct Deepest {
    /// Placed operations, in order.
    placed: Vec<usize>,
    /// The operation whose return was reached unplaced.
    blocked: usize,
    concurrent: Vec<usize>,
}

/// The search over one family's operations (all with a known outcome or possibly applied).
pub(super) fn check_family(family: &Family, max_steps: u64) -> KeyResult {
    let steps = steps_of(family);
    let times = spans_of(&family.ops);

    let answered = times.iter().filter(|&&(_, ret)| ret != u64::MAX).count();
    let classes: Vec<Option<u32>> = steps
        .iter()
        .zip(&times)
        .map(|(step, &(_, ret))| class_of(step, ret))
        .collect();
    let ops_info = OpsInfo {
        steps: &steps,
        times: &times,
        classes: &classes,
        registers: family.keys.len(),
    };
    match search(&ops_info, answered, max_steps) {
        Ok(()) => KeyResult::Linearizable,
        Err(SearchEnd::OutOfBudget { steps }) => KeyResult::OutOfBudget { steps },
        Err(SearchEnd::Exhausted(deepest)) => {
            KeyResult::Violation(Box::new(describe(family, &deepest)))
        }
    }
}

enum SearchEnd {
    OutOfBudget {
        steps: u64,
    },
    /// Every order was tried; the deepest point reached explains the failure.
    Exhausted(Deepest),
}

/// What the search knows of each operation, by index.
struct OpsInfo<'a> {
    steps: &'a [Step],
    times: &'a [(u64, u64)],
    classes: &'a [Option<u32>],
    /// How many keys the family has.
    registers: usize,
}

/// Porcupine's loop: place the first invoke that fits, backtrack at a return.
fn search(ops: &OpsInfo, mut unplaced_answered: usize, max_steps: u64) -> Result<(), SearchEnd> {
    let (steps, times) = (ops.steps, ops.times);
    let mut events = Events::new(times);
    let mut placed = Bitset::new(steps.len());
    let mut seen: HashSet<(Bitset, State)> = HashSet::new();
    // (invoke node, registers before it) of each placed operation, in order.
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = vec![None; ops.registers];
    let mut deepest: Option<Deepest> = None;
    let mut at = events.first();
    let mut spent = 0u64;
    while unplaced_answered > 0 {
        // A return is always reached before the end while an answered operation is unplaced.
        debug_assert!(at != END);
        let op = events.op[at];
        if events.is_invoke[at] {
            let symmetric =
                ops.classes[op].is_some_and(|c| events.class_before(at, c, ops.classes));
            if let Some(after) = (!symmetric).then(|| steps[op].apply(&state)).flatten() {
                charge(&mut spent, max_steps)?;
                placed.set(op);
                if seen.insert((placed.clone(), after.clone())) {
                    stack.push((at, std::mem::replace(&mut state, after)));
                    if times[op].1 != u64::MAX {
                        unplaced_answered -= 1;
                    }
                    events.lift(at);
                    at = events.first();
                    continue;
                }
                placed.clear(op);
            }
            at = events.next[at];
            continue;
        }
        if deepest
            .as_ref()
            .is_none_or(|d| stack.len() > d.placed.len())
        {
            deepest = Some(Deepest {
                placed: stack.iter().map(|&(node, _)| events.op[node]).collect(),
                blocked: op,
                concurrent: events
                    .invokes_before(at)
                    .into_iter()
                    .filter(|&other| other != op)
                    .collect(),
            });
        }
        charge(&mut spent, max_steps)?;
        let Some((invoke, before)) = stack.pop() else {
            return Err(SearchEnd::Exhausted(deepest.expect("set just above")));
        };
        let undone = events.op[invoke];
        placed.clear(undone);
        state = before;
        if times[undone].1 != u64::MAX {
            unplaced_answered += 1;
        }
        events.unlift(invoke);
        at = events.next[invoke];
    }
    Ok(())
}

/// Counts one step of the search (a placement tried against the memo, or a backtrack).
fn charge(spent: &mut u64, max_steps: u64) -> Result<(), SearchEnd> {
    if *spent >= max_steps {
        return Err(SearchEnd::OutOfBudget { steps: *spent });
    }
    *spent += 1;
    Ok(())
}

/// Each key's value after `placed`, in that order (the search's own registers merge the
/// values no read returned, so a report replays the real ones).
fn replay(family: &Family, placed: &[usize]) -> BTreeMap<String, Option<String>> {
    let mut state: BTreeMap<String, Option<String>> =
        family.keys.iter().map(|k| (k.to_string(), None)).collect();
    for op in placed.iter().map(|&i| family.ops[i]) {
        for (key, value) in op.writes() {
            state.insert(key.to_string(), Some(value.to_string()));
        }
        if op.call == Call::Remove {
            state.insert(op.key.clone(), None);
        }
    }
    state
}

fn describe(family: &Family, deepest: &Deepest) -> Violation {
    let ops = &family.ops;
    let tail_from = deepest.placed.len().saturating_sub(PREFIX_TAIL_LEN);
    Violation {
        key: family.name(),
        reason: "no order of the operations that respects real time explains every result".into(),
        prefix_len: deepest.placed.len(),
        prefix_tail: deepest.placed[tail_from..]
            .iter()
            .map(|&i| ops[i].clone())
            .collect(),
        state_after_prefix: replay(family, &deepest.placed),
        blocked: ops[deepest.blocked].clone(),
        concurrent: deepest.concurrent.iter().map(|&i| ops[i].clone()).collect(),
    }
}
