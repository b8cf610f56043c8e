//! Per-connection transport and protocol detection on a server port, from the first bytes a
//! client sends: unframed (buffered) or framed transport, binary or compact protocol. An
//! unframed binary message starts with 0x80 0x01, an unframed compact one with 0x82; a framed
//! message starts with a 4-byte big-endian length whose following byte is again 0x80 or 0x82.
//! The detected wire holds for the connection's life.
//!
//! Also here: multiplexed clients (`TMultiplexedProtocol`) send method names prefixed with the
//! service name and ':'; `demultiplex` strips the prefix of the service a port serves, so
//! plain and multiplexed clients reach the same service.

use std::borrow::Cow;

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TType,
};
use thrift::{ApplicationError, ApplicationErrorKind, TConfiguration, TransportErrorKind};

use super::frame::{self, Measured};

/// The protocol of a connection's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Compact,
}

/// How a connection's messages are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// Each message is preceded by its length (4 bytes, big-endian).
    pub framed: bool,
    pub protocol: Protocol,
}

const BINARY_FIRST: u8 = 0x80;
const COMPACT_FIRST: u8 = 0x82;
/// Bytes of a frame's length prefix.
const FRAME_HEADER: usize = 4;

/// The wire of a connection from its first bytes: `Ok(None)` until enough have arrived.
pub fn detect(buf: &[u8], max_bytes: usize) -> Result<Option<Wire>, String> {
    let protocol = |byte: u8| match byte {
        BINARY_FIRST => Some(Protocol::Binary),
        COMPACT_FIRST => Some(Protocol::Compact),
        _ => None,
    };
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if let Some(protocol) = protocol(first) {
        return Ok(Some(Wire {
            framed: false,
            protocol,
        }));
    }
    if buf.len() <= FRAME_HEADER {
        return Ok(None);
    }
    frame_length(buf, max_bytes)?;
    match protocol(buf[FRAME_HEADER]) {
        Some(protocol) => Ok(Some(Wire {
            framed: true,
            protocol,
        })),
        None => Err(format!(
            "not a Thrift message: the first bytes are {:02x?}",
            &buf[..buf.len().min(8)]
        )),
    }
}

/// The length a frame header claims, checked against the limit.
fn frame_length(buf: &[u8], max_bytes: usize) -> Result<usize, String> {
    let claimed = i32::from_be_bytes(buf[..FRAME_HEADER].try_into().expect("4 bytes"));
    match usize::try_from(claimed) {
        Ok(0) | Err(_) => Err(format!("a frame length of {claimed} is not valid")),
        Ok(len) if len > max_bytes => Err(format!(
            "a frame of {len} bytes is over the limit of {max_bytes} bytes"
        )),
        Ok(len) => Ok(len),
    }
}

/// Where the first message in `buf` ends, on this wire (frame header included).
pub fn measure(wire: Wire, buf: &[u8], max_bytes: usize) -> Measured {
    if wire.framed {
        if buf.len() < FRAME_HEADER {
            return Measured::Incomplete(FRAME_HEADER);
        }
        return match frame_length(buf, max_bytes) {
            Ok(len) if buf.len() >= FRAME_HEADER + len => Measured::Complete(FRAME_HEADER + len),
            Ok(len) => Measured::Incomplete(FRAME_HEADER + len),
            Err(reason) => Measured::Invalid(reason),
        };
    }
    match wire.protocol {
        Protocol::Binary => frame::measure(buf, max_bytes),
        Protocol::Compact => measure_compact(buf, max_bytes),
    }
}

/// The limits every decode of a request runs under.
pub fn limits(size: usize) -> TConfiguration {
    let size = size.max(1);
    TConfiguration::builder()
        .max_message_size(Some(size))
        .max_frame_size(Some(size))
        .max_string_size(Some(size))
        .max_container_size(Some(size))
        .max_recursion_depth(Some(frame::MAX_DEPTH))
        .build()
        .expect("limits are positive")
}

/// Finds the end of an unframed compact message by skipping through it; running out of bytes
/// means it is incomplete.
fn measure_compact(buf: &[u8], max_bytes: usize) -> Measured {
    let mut rest = buf;
    let skipped = {
        let mut input = TCompactInputProtocol::with_config(&mut rest, limits(max_bytes));
        input
            .read_message_begin()
            .and_then(|_| input.skip_till_depth(TType::Struct, frame::MAX_DEPTH as i8))
            .and_then(|_| input.read_message_end())
    };
    let used = buf.len() - rest.len();
    match skipped {
        Ok(()) => Measured::Complete(used),
        Err(e) if ran_out(&e) && buf.len() < max_bytes => Measured::Incomplete(buf.len() + 1),
        Err(e) if ran_out(&e) => {
            Measured::Invalid(format!("a message over the limit of {max_bytes} bytes"))
        }
        Err(e) => Measured::Invalid(format!("not a compact Thrift message: {e}")),
    }
}

fn ran_out(e: &thrift::Error) -> bool {
    matches!(e, thrift::Error::Transport(t) if t.kind == TransportErrorKind::EndOfFile)
}

/// The message inside what `measure` found (without its frame header).
pub fn payload(wire: Wire, message: &[u8]) -> &[u8] {
    if wire.framed {
        &message[FRAME_HEADER..]
    } else {
        message
    }
}

/// An answer as this wire carries it.
pub fn wrap(wire: Wire, answer: Vec<u8>) -> Vec<u8> {
    if !wire.framed {
        return answer;
    }
    let mut out = Vec::with_capacity(answer.len() + FRAME_HEADER);
    out.extend_from_slice(&(answer.len() as u32).to_be_bytes());
    out.extend_from_slice(&answer);
    out
}

/// The exception that answers a message that is not a call (ONEWAY, REPLY or EXCEPTION), or
/// None for a call (or a header that does not decode: the processor refuses that). raftcache
/// declares no oneway method, and a reply or an exception is never a request: such a message is
/// refused unexecuted, and the connection closed after the answer (a oneway client does not
/// read answers, so nothing after it could be matched to its calls).
pub fn refuse_unless_call(protocol: Protocol, request: &[u8]) -> Option<Vec<u8>> {
    // The type sits in the first bytes: strict binary `0x80 0x01 0x00 TYPE`, compact
    // `0x82 (TYPE << 5 | version)`. A call, nearly every message, is told without decoding.
    const CALL: u8 = 1;
    let message_type = match protocol {
        Protocol::Binary => request.get(3).map(|b| b & 0x07),
        Protocol::Compact => request.get(1).map(|b| b >> 5),
    };
    if message_type == Some(CALL) {
        return None;
    }
    let mut rest = request;
    let header = match protocol {
        Protocol::Binary => TBinaryInputProtocol::new(&mut rest, true).read_message_begin(),
        Protocol::Compact => TCompactInputProtocol::new(&mut rest).read_message_begin(),
    }
    .ok()?;
    if header.message_type == TMessageType::Call {
        return None;
    }
    let message = format!(
        "raftcache answers only CALL messages; this {:?} message of `{}` was not executed",
        header.message_type, header.name
    );
    exception(
        protocol,
        &header,
        ApplicationErrorKind::InvalidMessageType,
        message,
    )
}

/// The exception that answers the first call of a client that spoke plaintext to a port that
/// speaks TLS: a Thrift client shows its message, where a TLS alert would be bytes it cannot
/// read.
pub fn refuse_plaintext(protocol: Protocol, request: &[u8]) -> Vec<u8> {
    let mut rest = request;
    let header = match protocol {
        Protocol::Binary => TBinaryInputProtocol::new(&mut rest, true).read_message_begin(),
        Protocol::Compact => TCompactInputProtocol::new(&mut rest).read_message_begin(),
    }
    .unwrap_or_else(|_| TMessageIdentifier::new("", TMessageType::Call, 0));
    let message = "this raftcache port speaks TLS: connect with TLS, trusting the CA of the \
                   node's certificate (the raftcache CLI: --tls-ca FILE)";
    exception(
        protocol,
        &header,
        ApplicationErrorKind::Unknown,
        message.into(),
    )
    .unwrap_or_default()
}

/// An EXCEPTION message answering the call `header` with an application error.
fn exception(
    protocol: Protocol,
    header: &TMessageIdentifier,
    kind: ApplicationErrorKind,
    message: String,
) -> Option<Vec<u8>> {
    let refusal = ApplicationError::new(kind, message);
    let ident = TMessageIdentifier::new(
        header.name.clone(),
        TMessageType::Exception,
        header.sequence_number,
    );
    let mut out = Vec::new();
    let written = match protocol {
        Protocol::Binary => {
            let mut p = TBinaryOutputProtocol::new(&mut out, true);
            p.write_message_begin(&ident)
                .and_then(|()| {
                    thrift::Error::write_application_error_to_out_protocol(&refusal, &mut p)
                })
                .and_then(|()| p.write_message_end())
        }
        Protocol::Compact => {
            let mut p = TCompactOutputProtocol::new(&mut out);
            p.write_message_begin(&ident)
                .and_then(|()| {
                    thrift::Error::write_application_error_to_out_protocol(&refusal, &mut p)
                })
                .and_then(|()| p.write_message_end())
        }
    };
    written.ok().map(|()| out)
}

/// `request` with the method name's `service:` prefix removed (a multiplexed client's call
/// of `service`); any other request unchanged.
pub fn demultiplex<'a>(protocol: Protocol, request: &'a [u8], service: &str) -> Cow<'a, [u8]> {
    let mut rest = request;
    let header = match protocol {
        Protocol::Binary => TBinaryInputProtocol::new(&mut rest, true).read_message_begin(),
        Protocol::Compact => TCompactInputProtocol::new(&mut rest).read_message_begin(),
    };
    let Ok(header) = header else {
        return Cow::Borrowed(request);
    };
    let Some(method) = header
        .name
        .strip_prefix(service)
        .and_then(|n| n.strip_prefix(':'))
    else {
        return Cow::Borrowed(request);
    };
    let plain = TMessageIdentifier::new(method, header.message_type, header.sequence_number);
    let mut out = Vec::with_capacity(request.len());
    let written = match protocol {
        Protocol::Binary => TBinaryOutputProtocol::new(&mut out, true).write_message_begin(&plain),
        Protocol::Compact => TCompactOutputProtocol::new(&mut out).write_message_begin(&plain),
    };
    if written.is_err() {
        return Cow::Borrowed(request);
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_is_told_from_the_first_bytes() {
        let wire = |framed, protocol| Some(Wire { framed, protocol });
        assert_eq!(
            detect(&[0x80, 0x01], 100),
            Ok(wire(false, Protocol::Binary))
        );
        assert_eq!(detect(&[0x82], 100), Ok(wire(false, Protocol::Compact)));
        assert_eq!(detect(&[0, 0, 0, 9], 100), Ok(None));
        assert_eq!(
            detect(&[0, 0, 0, 9, 0x82], 100),
            Ok(wire(true, Protocol::Compact))
        );
        assert_eq!(
            detect(&[0, 0, 0, 9, 0x80], 100),
            Ok(wire(true, Protocol::Binary))
        );
        assert!(detect(b"GET / HTTP/1.1", 100).is_err());
        assert!(
            detect(&[0xff, 0xff, 0xff, 0xff, 0x80], 100).is_err(),
            "negative"
        );
        assert!(
            detect(&[0x7f, 0xff, 0xff, 0xff, 0x80], 100).is_err(),
            "huge"
        );
    }

    /// A compact `name(1: "hello")` call.
    fn compact_call(name: &str) -> Vec<u8> {
        let mut message = Vec::new();
        let mut out = TCompactOutputProtocol::new(&mut message);
        let id = TMessageIdentifier::new(name, thrift::protocol::TMessageType::Call, 7);
        out.write_message_begin(&id).unwrap();
        out.write_struct_begin(&thrift::protocol::TStructIdentifier::new("args"))
            .unwrap();
        let field = thrift::protocol::TFieldIdentifier::new("key", TType::String, 1);
        out.write_field_begin(&field).unwrap();
        out.write_string("hello").unwrap();
        out.write_field_end().unwrap();
        out.write_field_stop().unwrap();
        out.write_struct_end().unwrap();
        out.write_message_end().unwrap();
        drop(out);
        message
    }

    #[test]
    fn a_compact_message_is_complete_only_with_its_last_byte() {
        let message = compact_call("get");
        let wire = Wire {
            framed: false,
            protocol: Protocol::Compact,
        };
        for cut in 1..message.len() {
            assert!(
                matches!(
                    measure(wire, &message[..cut], 1000),
                    Measured::Incomplete(_)
                ),
                "cut at {cut}"
            );
        }
        let mut two = message.clone();
        two.extend_from_slice(&message);
        assert_eq!(measure(wire, &two, 1000), Measured::Complete(message.len()));
    }

    #[test]
    fn a_multiplexed_call_of_the_service_loses_its_prefix_and_others_are_kept() {
        let plain = compact_call("get");
        let multiplexed = compact_call("CacheService:get");
        assert_eq!(
            demultiplex(Protocol::Compact, &multiplexed, "CacheService"),
            plain
        );
        let other = compact_call("Other:get");
        assert_eq!(
            demultiplex(Protocol::Compact, &other, "CacheService"),
            other
        );
        assert_eq!(
            demultiplex(Protocol::Compact, &plain, "CacheService"),
            plain
        );
    }
}
