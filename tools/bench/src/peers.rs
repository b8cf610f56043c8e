//! The other stores the generator can drive, so that raftcache is measured beside them with the
//! same clients: Redis (RESP over one connection per client) and etcd (gRPC over one HTTP/2
//! connection per client). Both requests are written by hand, a few bytes each, so the
//! generator spends as little per request on them as on Thrift.

use bytes::Bytes;

/// A Redis command as a RESP array of bulk strings.
pub fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// How much of `buf` one RESP reply takes, once it is all there.
#[derive(Debug, PartialEq)]
pub enum RespReply {
    Incomplete,
    /// `len` bytes; `ok` unless it is an error reply.
    Complete {
        len: usize,
        ok: bool,
    },
    Invalid(String),
}

/// Measures the first reply in `buf`: a simple string, an error, an integer or a bulk string
/// (the replies of SET and GET).
pub fn resp_measure(buf: &[u8]) -> RespReply {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return RespReply::Incomplete;
    };
    let line = &buf[1..line_end];
    match buf[0] {
        b'+' | b':' => RespReply::Complete {
            len: line_end + 2,
            ok: true,
        },
        b'-' => RespReply::Complete {
            len: line_end + 2,
            ok: false,
        },
        b'$' => {
            let Some(n) = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            else {
                return RespReply::Invalid(format!(
                    "bad bulk length {:?}",
                    String::from_utf8_lossy(line)
                ));
            };
            if n < 0 {
                return RespReply::Complete {
                    len: line_end + 2,
                    ok: true,
                };
            }
            let len = line_end + 2 + n as usize + 2;
            if buf.len() < len {
                RespReply::Incomplete
            } else {
                RespReply::Complete { len, ok: true }
            }
        }
        other => RespReply::Invalid(format!("unexpected reply type {:?}", other as char)),
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn proto_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// etcd's `PutRequest { key = 1, value = 2 }`, in a gRPC frame.
pub fn etcd_put(key: &[u8], value: &[u8]) -> Bytes {
    let mut message = Vec::with_capacity(key.len() + value.len() + 8);
    proto_bytes(&mut message, 1, key);
    proto_bytes(&mut message, 2, value);
    grpc_frame(&message)
}

/// etcd's `RangeRequest { key = 1, serializable = 7 }` for one key, in a gRPC frame: a
/// serializable read is answered from the member's own state, a linearizable one after a
/// quorum round.
pub fn etcd_range(key: &[u8], serializable: bool) -> Bytes {
    let mut message = Vec::with_capacity(key.len() + 4);
    proto_bytes(&mut message, 1, key);
    if serializable {
        varint(&mut message, 7 << 3);
        varint(&mut message, 1);
    }
    grpc_frame(&message)
}

/// A gRPC message: not compressed, its length (big-endian), the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// One unary gRPC call on an HTTP/2 connection: whether it answered with status 0.
pub async fn grpc_call(
    send: &mut h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    frame: Bytes,
) -> bool {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let Ok(ready) = send.clone().ready().await else {
        return false;
    };
    *send = ready;
    let Ok((response, mut stream)) = send.send_request(request, false) else {
        return false;
    };
    if stream.send_data(frame, true).is_err() {
        return false;
    }
    let Ok(response) = response.await else {
        return false;
    };
    let (parts, mut body) = response.into_parts();
    // A call that fails at once answers with its status in the headers (trailers-only).
    if let Some(status) = parts.headers.get("grpc-status") {
        return status == "0";
    }
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return false;
        };
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    match body.trailers().await {
        Ok(Some(trailers)) => trailers.get("grpc-status").is_some_and(|s| s == "0"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_set_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        resp_command(&mut out, &[b"SET", b"k1", b"vv"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$2\r\nvv\r\n");
    }

    #[test]
    fn redis_replies_are_measured_once_whole() {
        assert_eq!(resp_measure(b"+OK\r"), RespReply::Incomplete);
        assert_eq!(
            resp_measure(b"+OK\r\n+OK\r\n"),
            RespReply::Complete { len: 5, ok: true }
        );
        assert_eq!(
            resp_measure(b"-ERR wrong\r\n"),
            RespReply::Complete { len: 12, ok: false }
        );
        assert_eq!(
            resp_measure(b"$-1\r\n"),
            RespReply::Complete { len: 5, ok: true }
        );
        assert_eq!(resp_measure(b"$3\r\nab"), RespReply::Incomplete);
        assert_eq!(
            resp_measure(b"$3\r\nabc\r\n"),
            RespReply::Complete { len: 9, ok: true }
        );
        assert!(matches!(resp_measure(b"$x\r\n"), RespReply::Invalid(_)));
    }

    #[test]
    fn etcd_requests_are_protobuf_in_a_grpc_frame() {
        // key "k" (field 1), value "vv" (field 2).
        assert_eq!(
            &etcd_put(b"k", b"vv")[..],
            &[0, 0, 0, 0, 7, 0x0a, 1, b'k', 0x12, 2, b'v', b'v']
        );
        // key "k", serializable = true (field 7, varint).
        assert_eq!(
            &etcd_range(b"k", true)[..],
            &[0, 0, 0, 0, 5, 0x0a, 1, b'k', 0x38, 1]
        );
        assert_eq!(
            &etcd_range(b"k", false)[..],
            &[0, 0, 0, 0, 3, 0x0a, 1, b'k']
        );
        let mut long = Vec::new();
        varint(&mut long, 300);
        assert_eq!(long, [0xac, 0x02]);
    }
}
