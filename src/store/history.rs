//! The recent changes of keys, in log order, for `watch`.
//!
//! Every change the state machine applies to a key (a write, a removal, an expiry, an
//! eviction) is an `Event` at a position: the log index of its entry and its place among that
//! entry's changes (`offset`, from 1). Positions are the same on every replica, since every
//! replica applies the same entries alike, so a watcher can resume on another node.
//!
//! The history is kept in memory, bounded by bytes (`--watch-history-bytes`): the oldest events
//! go first. It holds every event after its `dropped` position: the last event it let go, or
//! where it began (the applied index when the node started, or the index of a snapshot it
//! installed, whose changes are not known one by one). A watch that asks for changes after an
//! earlier position is answered `Compacted`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Remove,
    Expire,
    Evict,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    /// From 1 within the entry.
    pub offset: u32,
    pub kind: EventKind,
    pub key: String,
    /// `Put`: the new value.
    pub value: Option<Vec<u8>>,
    /// `Put` with a TTL: when it expires (ms since the epoch, the leader's clock).
    pub expires_at_ms: Option<u64>,
}

impl Event {
    fn position(&self) -> Position {
        Position(self.index, self.offset)
    }

    /// About what the event holds in memory.
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 64
    }
}

/// A place in the sequence of events: after the event at (index, offset). `offset` `u32::MAX`
/// is after every event of the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub u64, pub u32);

impl Position {
    /// After every event of entry `index`.
    pub fn after_entry(index: u64) -> Self {
        Position(index, u32::MAX)
    }

    /// The position a watcher passes as (`after_index`, `after_offset`): `after_offset` 0 is
    /// after the whole entry; `n` > 0 is before its event `n` (after event `n - 1`).
    pub fn from_wire(after_index: u64, after_offset: u32) -> Self {
        match after_offset {
            0 => Position::after_entry(after_index),
            n => Position(after_index, n - 1),
        }
    }

    /// (`resume_index`, `resume_offset`) for a watcher, the inverse of `from_wire`.
    pub fn to_wire(self) -> (u64, u32) {
        match self.1 {
            u32::MAX => (self.0, 0),
            n => (self.0, n + 1),
        }
    }
}

/// The answer to a read of the history.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The events after the position asked for (up to the number asked for), and the position
    /// after the last one looked at.
    Events {
        events: Vec<Event>,
        resume: Position,
    },
    /// The events right after the position asked for are no longer held; the oldest index a
    /// watch may start after.
    Compacted { oldest_index: u64 },
}

struct Held {
    events: VecDeque<Event>,
    bytes: usize,
    /// Every event after this position is held.
    dropped: Position,
    /// The last applied index the history covers.
    applied: u64,
}

/// The history of one node's replica.
pub struct History {
    held: Mutex<Held>,
    max_bytes: usize,
    /// The applied index, moved by each record: what a long poll waits on.
    applied: watch::Sender<u64>,
}

impl History {
    /// An empty history of at most `max_bytes`, starting after `applied` (0: keeps nothing).
    pub fn new(max_bytes: usize, applied: u64) -> Self {
        History {
            held: Mutex::new(Held {
                events: VecDeque::new(),
                bytes: 0,
                dropped: Position::after_entry(applied),
                applied,
            }),
            max_bytes,
            applied: watch::channel(applied).0,
        }
    }

    /// Bytes of events held now.
    pub fn held_bytes(&self) -> usize {
        self.held.lock().expect("history lock").bytes
    }

    /// Whether events are kept at all.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// Adds the events of the entries applied up to `applied`, in order.
    pub fn record(&self, events: Vec<Event>, applied: u64) {
        {
            let mut held = self.held.lock().expect("history lock");
            for event in events {
                held.bytes += event.bytes();
                held.events.push_back(event);
            }
            while held.bytes > self.max_bytes {
                let Some(oldest) = held.events.pop_front() else {
                    break;
                };
                held.bytes -= oldest.bytes();
                held.dropped = oldest.position();
            }
            if !self.enabled() {
                held.dropped = Position::after_entry(applied);
            }
            held.applied = held.applied.max(applied);
        }
        self.applied.send_replace(applied);
    }

    /// Forgets every event: the state jumped to `applied` (a snapshot was installed).
    pub fn reset(&self, applied: u64) {
        {
            let mut held = self.held.lock().expect("history lock");
            held.events.clear();
            held.bytes = 0;
            held.dropped = Position::after_entry(applied);
            held.applied = applied;
        }
        self.applied.send_replace(applied);
    }

    /// Up to `max` events of keys starting with `prefix` after `from`.
    pub fn read(&self, prefix: &str, from: Position, max: usize) -> Read {
        let held = self.held.lock().expect("history lock");
        if from < held.dropped {
            return Read::Compacted {
                oldest_index: held.dropped.0,
            };
        }
        let start = held.events.partition_point(|e| e.position() <= from);
        let mut events = Vec::new();
        let mut resume = from.max(Position::after_entry(held.applied));
        for event in held.events.range(start..) {
            if events.len() == max {
                resume = Position(event.index, event.offset - 1);
                break;
            }
            if event.key.starts_with(prefix) {
                events.push(event.clone());
            }
        }
        Read::Events { events, resume }
    }

    /// `read`, waiting up to `wait` for at least one event.
    pub async fn wait_read(
        &self,
        prefix: &str,
        from: Position,
        max: usize,
        wait: Duration,
    ) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.applied.subscribe();
        let mut from = from;
        loop {
            applied.borrow_and_update();
            match self.read(prefix, from, max) {
                Read::Events { events, resume } if events.is_empty() => {
                    from = resume;
                    let changed = tokio::time::timeout_at(deadline, applied.changed()).await;
                    if !matches!(changed, Ok(Ok(()))) {
                        return Read::Events { events, resume };
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, offset: u32, key: &str) -> Event {
        Event {
            index,
            offset,
            kind: EventKind::Put,
            key: key.into(),
            value: Some(b"v".to_vec()),
            expires_at_ms: None,
        }
    }

    fn keys(read: &Read) -> Vec<(u64, u32)> {
        match read {
            Read::Events { events, .. } => events.iter().map(|e| (e.index, e.offset)).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reader_resumes_inside_an_entry_without_a_gap_or_a_repeat() {
        let history = History::new(1 << 20, 0);
        history.record(
            vec![
                put(1, 1, "a"),
                put(1, 2, "a"),
                put(1, 3, "b"),
                put(2, 1, "a"),
            ],
            2,
        );
        let first = history.read("a", Position::after_entry(0), 1);
        assert_eq!(keys(&first), [(1, 1)]);
        let Read::Events { resume, .. } = first else {
            unreachable!()
        };
        assert_eq!(
            resume.to_wire(),
            (1, 2),
            "the next event wanted is offset 2 of entry 1"
        );
        let from = Position::from_wire(1, 2);
        let second = history.read("a", from, 10);
        assert_eq!(keys(&second), [(1, 2), (2, 1)]);
        let Read::Events { resume, .. } = second else {
            unreachable!()
        };
        assert_eq!(resume.to_wire(), (2, 0));
        assert_eq!(
            keys(&history.read("a", resume, 10)),
            Vec::<(u64, u32)>::new()
        );
    }

    #[test]
    fn the_oldest_events_go_past_the_bound_and_a_reader_behind_them_is_told() {
        let one = put(1, 1, "k").bytes();
        let history = History::new(one * 2, 0);
        history.record(vec![put(1, 1, "k"), put(2, 1, "k"), put(3, 1, "k")], 3);
        assert_eq!(
            history.read("", Position::after_entry(0), 10),
            Read::Compacted { oldest_index: 1 }
        );
        assert_eq!(
            keys(&history.read("", Position::after_entry(1), 10)),
            [(2, 1), (3, 1)]
        );
        history.reset(9);
        assert_eq!(
            history.read("", Position::after_entry(3), 10),
            Read::Compacted { oldest_index: 9 }
        );
        assert_eq!(
            keys(&history.read("", Position::after_entry(9), 10)),
            Vec::<(u64, u32)>::new()
        );
    }

    #[tokio::test]
    async fn a_long_poll_answers_when_an_event_arrives() {
        let history = std::sync::Arc::new(History::new(1 << 20, 0));
        let writer = history.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.record(vec![], 1);
            writer.record(vec![put(2, 1, "x")], 2);
        });
        let read = history
            .wait_read("x", Position::after_entry(0), 10, Duration::from_secs(5))
            .await;
        assert_eq!(keys(&read), [(2, 1)]);
        let idle = history
            .wait_read("x", Position::after_entry(2), 10, Duration::from_millis(20))
            .await;
        assert_eq!(
            idle,
            Read::Events {
                events: vec![],
                resume: Position::after_entry(2)
            }
        );
    }
}
