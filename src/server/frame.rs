//! Where a Thrift message ends, found without decoding it: the server reads bytes until
//! `measure` finds one whole message (strict binary protocol, unframed) and only then hands it
//! to the processor. So a request is decoded from memory, never from a socket that might
//! stall mid-message, its size is known before it is buffered whole, and whatever follows it
//! is never mistaken for the rest of it.

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Measured {
    /// One whole message: its first `n` bytes.
    Complete(usize),
    /// Not a whole message yet; it is at least this many bytes long.
    Incomplete(usize),
    /// Not a strict binary Thrift message, or one larger than the limit: the connection can
    /// only be closed.
    Invalid(String),
}

/// Nesting depth allowed in a message (structs, lists, maps inside one another).
pub const MAX_DEPTH: usize = 64;

const VERSION_1: u16 = 0x8001;

// Field types of the binary protocol.
const T_STOP: u8 = 0;
const T_BOOL: u8 = 2;
const T_BYTE: u8 = 3;
const T_DOUBLE: u8 = 4;
const T_I16: u8 = 6;
const T_I32: u8 = 8;
const T_I64: u8 = 10;
const T_STRING: u8 = 11;
const T_STRUCT: u8 = 12;
const T_MAP: u8 = 13;
const T_SET: u8 = 14;
const T_LIST: u8 = 15;
const T_UUID: u8 = 16;

/// Why measuring stopped early.
enum Stop {
    /// The message needs at least this many bytes in all.
    Short(usize),
    Invalid(String),
}

/// Finds the end of the first message in `buf`; a message (or a claimed length) past
/// `max_bytes` is invalid.
pub fn measure(buf: &[u8], max_bytes: usize) -> Measured {
    let mut cursor = Cursor {
        buf,
        pos: 0,
        max_bytes,
    };
    match cursor.message() {
        Ok(()) => Measured::Complete(cursor.pos),
        Err(Stop::Short(n)) => Measured::Incomplete(n),
        Err(Stop::Invalid(reason)) => Measured::Invalid(reason),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    max_bytes: usize,
}

impl Cursor<'_> {
    fn message(&mut self) -> Result<(), Stop> {
        let version = self.take(4)?;
        if u16::from_be_bytes([version[0], version[1]]) != VERSION_1 {
            return Err(Stop::Invalid(format!(
                "not a strict binary Thrift message (first bytes {:02x} {:02x})",
                version[0], version[1]
            )));
        }
        self.string()?; // the method name
        self.take(4)?; // the sequence number
        self.value(T_STRUCT, 0) // the arguments
    }

    /// Steps over `n` bytes, or says how many bytes the message needs at least.
    fn take(&mut self, n: usize) -> Result<&[u8], Stop> {
        let end = self.pos.saturating_add(n);
        if end > self.max_bytes {
            return Err(Stop::Invalid(format!(
                "message larger than the limit of {} bytes",
                self.max_bytes
            )));
        }
        if end > self.buf.len() {
            return Err(Stop::Short(end));
        }
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }

    fn length(&mut self) -> Result<usize, Stop> {
        let b = self.take(4)?;
        let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| Stop::Invalid(format!("negative length {n}")))
    }

    fn string(&mut self) -> Result<(), Stop> {
        let n = self.length()?;
        self.take(n).map(|_| ())
    }

    /// Steps over one value of type `kind`.
    fn value(&mut self, kind: u8, depth: usize) -> Result<(), Stop> {
        if let Some(size) = fixed_size(kind) {
            return self.take(size).map(|_| ());
        }
        if depth >= MAX_DEPTH {
            return Err(Stop::Invalid(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match kind {
            T_STRING => self.string(),
            T_STRUCT => loop {
                let field = self.byte()?;
                if field == T_STOP {
                    return Ok(());
                }
                self.take(2)?; // the field id
                self.value(field, depth + 1)?;
            },
            T_MAP => {
                let (key, value) = (self.byte()?, self.byte()?);
                let count = self.length()?;
                self.elements(&[key, value], count, depth)
            }
            T_SET | T_LIST => {
                let element = self.byte()?;
                let count = self.length()?;
                self.elements(&[element], count, depth)
            }
            other => Err(Stop::Invalid(format!("unknown field type {other}"))),
        }
    }

    /// Steps over `count` entries, each a value of every type in `kinds` in turn.
    fn elements(&mut self, kinds: &[u8], count: usize, depth: usize) -> Result<(), Stop> {
        for &kind in kinds {
            if fixed_size(kind).is_none()
                && !matches!(kind, T_STRING | T_STRUCT | T_MAP | T_SET | T_LIST)
            {
                return Err(Stop::Invalid(format!("unknown element type {kind}")));
            }
        }
        let fixed: Option<usize> = kinds.iter().map(|&k| fixed_size(k)).sum();
        if let Some(entry) = fixed {
            // Skipped in one step: a huge count is refused by its size, not counted out.
            return self.take(entry.saturating_mul(count)).map(|_| ());
        }
        for _ in 0..count {
            for &kind in kinds {
                self.value(kind, depth + 1)?;
            }
        }
        Ok(())
    }
}

fn fixed_size(kind: u8) -> Option<usize> {
    match kind {
        T_BOOL | T_BYTE => Some(1),
        T_I16 => Some(2),
        T_I32 => Some(4),
        T_DOUBLE | T_I64 => Some(8),
        T_UUID => Some(16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::protocol::{
        TBinaryOutputProtocol, TFieldIdentifier, TListIdentifier, TMapIdentifier,
        TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
    };

    /// A message written by the `thrift` crate itself: a struct with a string, a nested
    /// struct, a list of strings, a map of i32 to i64, and a bool.
    fn message() -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut p = TBinaryOutputProtocol::new(&mut out, true);
            p.write_message_begin(&TMessageIdentifier::new("put", TMessageType::Call, 7))
                .unwrap();
            p.write_struct_begin(&TStructIdentifier::new("args"))
                .unwrap();
            p.write_field_begin(&TFieldIdentifier::new("k", TType::String, 1))
                .unwrap();
            p.write_string("key").unwrap();
            p.write_field_end().unwrap();
            p.write_field_begin(&TFieldIdentifier::new("s", TType::Struct, 2))
                .unwrap();
            p.write_struct_begin(&TStructIdentifier::new("inner"))
                .unwrap();
            p.write_field_begin(&TFieldIdentifier::new("l", TType::List, 1))
                .unwrap();
            p.write_list_begin(&TListIdentifier::new(TType::String, 2))
                .unwrap();
            p.write_string("a").unwrap();
            p.write_string("bc").unwrap();
            p.write_list_end().unwrap();
            p.write_field_end().unwrap();
            p.write_field_begin(&TFieldIdentifier::new("m", TType::Map, 2))
                .unwrap();
            p.write_map_begin(&TMapIdentifier::new(TType::I32, TType::I64, 2))
                .unwrap();
            for i in 0..2 {
                p.write_i32(i).unwrap();
                p.write_i64(i as i64).unwrap();
            }
            p.write_map_end().unwrap();
            p.write_field_end().unwrap();
            p.write_field_stop().unwrap();
            p.write_struct_end().unwrap();
            p.write_field_end().unwrap();
            p.write_field_begin(&TFieldIdentifier::new("b", TType::Bool, 3))
                .unwrap();
            p.write_bool(true).unwrap();
            p.write_field_end().unwrap();
            p.write_field_stop().unwrap();
            p.write_struct_end().unwrap();
            p.write_message_end().unwrap();
            p.flush().unwrap();
        }
        out
    }

    #[test]
    fn finds_the_end_of_a_whole_message_and_ignores_what_follows() {
        let m = message();
        assert_eq!(measure(&m, 1 << 20), Measured::Complete(m.len()));
        let two = [m.clone(), m.clone()].concat();
        assert_eq!(measure(&two, 1 << 20), Measured::Complete(m.len()));
    }

    #[test]
    fn every_prefix_is_incomplete_and_asks_for_no_more_than_the_message() {
        let m = message();
        for cut in 0..m.len() {
            match measure(&m[..cut], 1 << 20) {
                Measured::Incomplete(n) => assert!(n > cut && n <= m.len(), "cut {cut}: needs {n}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_message_past_the_limit_is_invalid_before_it_arrives() {
        let m = message();
        assert!(matches!(measure(&m, m.len() - 1), Measured::Invalid(_)));
        // A string claiming 2 GB, with 4 bytes of it received.
        let mut huge = m[..12].to_vec(); // version, name length, "put", seqid...
        huge.truncate(4);
        huge.extend_from_slice(&0x7fff_fff0_i32.to_be_bytes());
        assert!(matches!(measure(&huge, 1 << 20), Measured::Invalid(r) if r.contains("limit")));
    }

    #[test]
    fn malformed_messages_are_invalid() {
        let m = message();
        let mut not_thrift = b"GET / HTTP/1.1\r\n".to_vec();
        not_thrift.extend_from_slice(&m);
        assert!(matches!(
            measure(&not_thrift, 1 << 20),
            Measured::Invalid(_)
        ));

        let mut negative = m[..4].to_vec();
        negative.extend_from_slice(&(-1_i32).to_be_bytes());
        assert!(
            matches!(measure(&negative, 1 << 20), Measured::Invalid(r) if r.contains("negative"))
        );

        let mut bad_type = m[..4 + 4 + 3 + 4].to_vec();
        bad_type.push(99);
        bad_type.extend_from_slice(&[0, 1]);
        assert!(
            matches!(measure(&bad_type, 1 << 20), Measured::Invalid(r) if r.contains("type 99"))
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let mut m = message()[..4 + 4 + 3 + 4].to_vec();
        for _ in 0..=MAX_DEPTH {
            m.push(T_STRUCT);
            m.extend_from_slice(&[0, 1]);
        }
        assert!(matches!(measure(&m, 1 << 20), Measured::Invalid(r) if r.contains("deeper")));
    }

    #[test]
    fn a_huge_list_of_fixed_size_elements_is_refused_by_its_size() {
        let mut m = message()[..4 + 4 + 3 + 4].to_vec();
        m.push(T_LIST);
        m.extend_from_slice(&[0, 1]);
        m.push(T_I64);
        m.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(measure(&m, 1 << 20), Measured::Invalid(r) if r.contains("limit")));
    }
}
