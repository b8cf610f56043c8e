//! How a value is stored in `sm_data`: a tag byte, the absolute expiry when there is one, then
//! the value's bytes. Snapshots copy these bytes as they are, so a snapshot carries every
//! key's expiry too.

/// Tag of a value without expiry.
const NO_EXPIRY: u8 = 0;
/// Tag of a value followed by its expiry (8 bytes, big-endian milliseconds since the epoch).
const WITH_EXPIRY: u8 = 1;

/// A stored value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    /// Milliseconds since the Unix epoch (by the leader's clock when it was written).
    pub expires_at_ms: Option<u64>,
}

impl Stored {
    /// Whether the value is expired at `now_ms`: from its expiry on, it is invisible.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// The bytes stored for `value` with `expires_at_ms`.
pub fn encode(value: &[u8], expires_at_ms: Option<u64>) -> Vec<u8> {
    match expires_at_ms {
        None => {
            let mut out = Vec::with_capacity(value.len() + 1);
            out.push(NO_EXPIRY);
            out.extend_from_slice(value);
            out
        }
        Some(at) => {
            let mut out = Vec::with_capacity(value.len() + 9);
            out.push(WITH_EXPIRY);
            out.extend_from_slice(&at.to_be_bytes());
            out.extend_from_slice(value);
            out
        }
    }
}

/// The value and expiry in stored bytes. Bytes that do not start with a known tag are read as
/// a value without expiry (the same way on every replica).
pub fn decode(raw: &[u8]) -> Stored {
    match raw.split_first() {
        Some((&NO_EXPIRY, rest)) => Stored {
            value: rest.to_vec(),
            expires_at_ms: None,
        },
        Some((&WITH_EXPIRY, rest)) if rest.len() >= 8 => {
            let (at, value) = rest.split_at(8);
            Stored {
                value: value.to_vec(),
                expires_at_ms: Some(u64::from_be_bytes(at.try_into().expect("8 bytes"))),
            }
        }
        _ => Stored {
            value: raw.to_vec(),
            expires_at_ms: None,
        },
    }
}

/// The expiry and the value's length in stored bytes, without copying the value (what the
/// counters and the expiry index need from an old value being replaced or removed).
pub fn peek(raw: &[u8]) -> (Option<u64>, usize) {
    match raw.split_first() {
        Some((&NO_EXPIRY, rest)) => (None, rest.len()),
        Some((&WITH_EXPIRY, rest)) if rest.len() >= 8 => (
            Some(u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"))),
            rest.len() - 8,
        ),
        _ => (None, raw.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_with_and_without_expiry() {
        for at in [None, Some(0), Some(1_700_000_000_123)] {
            let stored = decode(&encode(b"hello", at));
            assert_eq!(stored.value, b"hello");
            assert_eq!(stored.expires_at_ms, at);
        }
    }

    #[test]
    fn a_value_is_invisible_from_its_expiry_on() {
        let stored = decode(&encode(b"v", Some(1000)));
        assert!(!stored.expired(999));
        assert!(stored.expired(1000));
        assert!(!decode(&encode(b"v", None)).expired(u64::MAX));
    }

    #[test]
    fn peek_reads_what_decode_reads() {
        let raws = [
            encode(b"hello", None),
            encode(b"hello", Some(7)),
            encode(b"", Some(7)),
            b"".to_vec(),
            vec![9, 1, 2],
            vec![WITH_EXPIRY, 1, 2],
        ];
        for raw in raws {
            let stored = decode(&raw);
            assert_eq!(
                peek(&raw),
                (stored.expires_at_ms, stored.value.len()),
                "{raw:?}"
            );
        }
    }
}
