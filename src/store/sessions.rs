//! Exactly-once writes: the answers the state machine keeps per client.
//!
//! A client that tags its writes with a client id and a sequence number (`WriteOptions` in the
//! API, `Request::Tracked` in the log) may send a write again after a timeout or a change of
//! leader without knowing whether the first attempt was applied. The state machine keeps each
//! client's recent answers in a `Session` and answers a request it has already applied with its
//! first answer instead of applying it again. Every replica decides alike: the sessions are part
//! of the replicated state (records of `sm_data` under `schema::INTERNAL_PREFIX`, so they travel
//! in snapshots with the data), and the limits and the clock they are kept by come from the
//! entry (`SessionLimits`, `Batch::now_ms`).
//!
//! Answers are forgotten when the client says it has them (`lowest_unanswered`), when a client
//! holds more than `max_answers`, and with the whole session when the client sent nothing for
//! `ttl_ms` or when more than `max_sessions` clients are held (the least recently seen go
//! first). A request whose answer was forgotten is refused rather than applied again, as long
//! as its session is held; a retry that comes after its session was forgotten is applied again,
//! which is why the limits are generous and documented.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::schema::{decode, encode, INTERNAL_PREFIX};
use super::value;
use crate::types::{Response, SessionRequest};

/// The second byte of a session's record key.
const SESSION_TAG: u8 = b's';

/// The key of `client`'s session in `sm_data`.
pub fn key(client: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.push(INTERNAL_PREFIX);
    key.push(SESSION_TAG);
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// The first key of the session records, and the first key after them.
pub fn key_range() -> (Vec<u8>, Vec<u8>) {
    (
        vec![INTERNAL_PREFIX, SESSION_TAG],
        vec![INTERNAL_PREFIX, SESSION_TAG + 1],
    )
}

/// One client's kept answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The leader's clock at the client's last tracked request.
    pub last_seen_ms: u64,
    /// Requests numbered up to this one that are not in `answers` were answered and forgotten.
    pub forgotten_upto: u64,
    /// Answers by request number.
    pub answers: BTreeMap<u64, Response>,
}

/// What the state machine does with a tracked request, given its client's session.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply it, then `Session::remember` its answer.
    Apply,
    /// Answer with this, and apply nothing.
    Answer(Response),
}

impl Session {
    /// The session stored in `raw` (a record of `sm_data`).
    pub fn from_stored(raw: &[u8]) -> Result<Session, bincode::Error> {
        decode(&value::decode(raw).value)
    }

    /// What `sm_data` stores for the session: bincode, as a value without expiry (so the
    /// expiry index and the counters' upkeep read it as any value).
    pub fn to_stored(&self) -> Vec<u8> {
        value::encode(&encode(self), None)
    }

    /// Whether the session has gone unused for the limits' time to live at `now_ms`.
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) >= ttl_ms
    }

    /// Forgets what the client says it has, and decides `request`.
    pub fn decide(&mut self, request: &SessionRequest, now_ms: u64) -> Decision {
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        if request.lowest_unanswered > 1 {
            let keep = self.answers.split_off(&request.lowest_unanswered);
            self.answers = keep;
            self.forgotten_upto = self.forgotten_upto.max(request.lowest_unanswered - 1);
        }
        if let Some(answer) = self.answers.get(&request.seq) {
            return Decision::Answer(Response::Repeated(Box::new(answer.clone())));
        }
        if request.seq <= self.forgotten_upto {
            return Decision::Answer(Response::Refused(format!(
                "write {} of client {} was answered before and its answer is no longer kept (the client said it had it, or it kept more than --max-session-answers); it was not applied again",
                request.seq, request.client
            )));
        }
        Decision::Apply
    }

    /// Keeps the answer to `request`, forgetting the oldest beyond `max_answers`.
    pub fn remember(&mut self, request: &SessionRequest, answer: Response) {
        self.answers.insert(request.seq, answer);
        let max = request.limits.max_answers.max(1) as usize;
        while self.answers.len() > max {
            let Some((seq, _)) = self.answers.pop_first() else {
                break;
            };
            self.forgotten_upto = self.forgotten_upto.max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SessionLimits;

    fn request(seq: u64, lowest_unanswered: u64) -> SessionRequest {
        SessionRequest {
            client: 7,
            seq,
            lowest_unanswered,
            limits: SessionLimits {
                max_answers: 3,
                ..SessionLimits::default()
            },
        }
    }

    #[test]
    fn a_request_seen_before_gets_its_first_answer() {
        let mut session = Session::default();
        assert_eq!(session.decide(&request(1, 1), 10), Decision::Apply);
        session.remember(&request(1, 1), Response::Incremented(5));
        assert_eq!(
            session.decide(&request(1, 1), 20),
            Decision::Answer(Response::Repeated(Box::new(Response::Incremented(5))))
        );
        assert_eq!(session.last_seen_ms, 20);
    }

    #[test]
    fn answers_the_client_has_are_forgotten_and_their_requests_refused() {
        let mut session = Session::default();
        for seq in 1..=2 {
            assert_eq!(session.decide(&request(seq, seq), 0), Decision::Apply);
            session.remember(&request(seq, seq), Response::Put);
        }
        // The client got both answers: request 3 says so.
        assert_eq!(session.decide(&request(3, 3), 0), Decision::Apply);
        assert!(session.answers.is_empty());
        assert!(matches!(
            session.decide(&request(2, 3), 0),
            Decision::Answer(Response::Refused(_))
        ));
    }

    #[test]
    fn at_most_max_answers_are_kept() {
        let mut session = Session::default();
        for seq in 1..=5 {
            assert_eq!(session.decide(&request(seq, 0), 0), Decision::Apply);
            session.remember(&request(seq, 0), Response::Put);
        }
        assert_eq!(
            session.answers.keys().copied().collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(session.forgotten_upto, 2);
        assert!(matches!(
            session.decide(&request(1, 0), 0),
            Decision::Answer(Response::Refused(_))
        ));
        // Out of order within what is kept: still applied once.
        assert_eq!(session.decide(&request(7, 0), 0), Decision::Apply);
        session.remember(&request(7, 0), Response::Put);
        assert_eq!(session.decide(&request(6, 0), 0), Decision::Apply);
    }
}
