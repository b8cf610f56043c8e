//! The HTTP port for machines (`--http-listen`): `GET /metrics` (Prometheus), `GET /health`
//! (the process runs and so does its Raft core) and `GET /ready` (this node can serve: a member
//! that follows a leader a quorum confirms, caught up to what that leader had committed).
//!
//! A deliberately small HTTP/1.1 server: one request per connection, answered with
//! `Connection: close`, which is all a Prometheus scrape, a Kubernetes probe or `curl` needs.
//! Its limits are those of the other ports: connections served at once
//! (`--http-max-connections`, further ones get a 503 and are closed), the size of a request's
//! head (`--http-max-request-bytes`, 431 past it) and how long a client may take to send it
//! (`--read-timeout-ms`). Only `GET` and `HEAD` are served; the body of a request is never read.
//! With `--http-tls` it speaks HTTPS, with the client port's certificate and key; a handshake
//! is bounded by the read timeout, and a connection over the cap is closed without an answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::tls::ServerTls;
use tokio::sync::{watch, Semaphore};

/// The HTTP port's limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once (`--http-max-connections`).
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes (`--http-max-request-bytes`).
    pub max_request_bytes: usize,
    /// How long a client may take to send its request head, and the answer to be written
    /// (`--read-timeout-ms`).
    pub read_timeout: Duration,
}

/// One answer: a status and a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What answers the HTTP port's paths.
pub trait Routes: Send + Sync + 'static {
    /// The answer to `GET path` (the path without its query string).
    fn get(&self, path: &str) -> impl std::future::Future<Output = Reply> + Send;
}

/// `GET path` on the HTTP port at `addr` (a blocking client, for the CLI and tests): its
/// status and body.
pub fn get(addr: &str, path: &str, timeout: std::time::Duration) -> Result<(u16, String), String> {
    get_with(addr, path, timeout, None)
}

/// `get`, over TLS when `tls` is given (`--http-tls`).
pub fn get_with(
    addr: &str,
    path: &str,
    timeout: std::time::Duration,
    tls: Option<&crate::client::TlsOptions>,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let failed = |e: std::io::Error| format!("{addr}: {e}");
    let target = addr
        .to_socket_addrs()
        .map_err(failed)?
        .next()
        .ok_or_else(|| format!("{addr}: the name has no address"))?;
    let stream = std::net::TcpStream::connect_timeout(&target, timeout).map_err(failed)?;
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(stream),
        Some(tls) => Box::new(crate::client::handshake(addr, stream, tls).map_err(failed)?),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(failed)?;
    stream.flush().map_err(failed)?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // A TLS server may close without a close_notify once it has answered.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(failed(e)),
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A blocking byte stream: a socket, or TLS over one.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A running HTTP server. Dropping it leaves the server running; `stop` ends it.
pub struct HttpHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl HttpHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections (those being answered finish).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Serves `routes` on `listener` until stopped, over TLS when `tls` is given.
pub fn spawn<R: Routes>(
    listener: std::net::TcpListener,
    limits: HttpLimits,
    tls: Option<Arc<ServerTls>>,
    routes: Arc<R>,
) -> std::io::Result<HttpHandle> {
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let (stop, mut stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = limits.max_connections, "http: connection refused: too many connections (--http-max-connections)");
                if tls.is_some() {
                    // A 503 in clear text would be noise to a TLS client: just close.
                    continue;
                }
                let reply = Reply::text(
                    503,
                    format!(
                        "too many connections: at most {} at once (--http-max-connections)\n",
                        limits.max_connections
                    ),
                );
                tokio::spawn(async move {
                    let mut stream = stream;
                    let written = tokio::time::timeout(
                        limits.read_timeout,
                        write_reply(&mut stream, &reply, false),
                    )
                    .await;
                    if matches!(written, Ok(Ok(()))) {
                        linger(&mut stream).await;
                    }
                });
                continue;
            };
            let routes = routes.clone();
            let acceptor = tls.as_ref().map(|tls| tls.acceptor());
            tokio::spawn(async move {
                let served = match acceptor {
                    None => serve(stream, limits, routes.as_ref()).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.read_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => serve(stream, limits, routes.as_ref()).await,
                            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                            Err(_) => Err("read timeout in the TLS handshake".into()),
                        }
                    }
                };
                if let Err(reason) = served {
                    tracing::debug!(%peer, %reason, "http: connection closed");
                }
                drop(slot);
            });
        }
    });
    Ok(HttpHandle { local_addr, stop })
}

/// Reads one request head, answers it, closes.
async fn serve<R: Routes, IO: AsyncRead + AsyncWrite + Unpin>(
    mut stream: IO,
    limits: HttpLimits,
    routes: &R,
) -> Result<(), String> {
    let read = tokio::time::timeout(
        limits.read_timeout,
        read_head(&mut stream, limits.max_request_bytes),
    )
    .await;
    let (reply, head_only) = match read {
        Err(_) => (
            Reply::text(408, "the request head did not arrive in time\n"),
            false,
        ),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(Head::TooLarge)) => (
            Reply::text(
                431,
                format!(
                    "the request head is larger than {} bytes (--http-max-request-bytes)\n",
                    limits.max_request_bytes
                ),
            ),
            false,
        ),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::Complete(head))) => match parse(&head) {
            Ok((method, path)) if method == "GET" || method == "HEAD" => {
                (routes.get(path_of(&path)).await, method == "HEAD")
            }
            Ok((method, _)) => (
                Reply::text(405, format!("{method} is not served here: use GET\n")),
                false,
            ),
            Err(reason) => (Reply::text(400, format!("{reason}\n")), false),
        },
    };
    tokio::time::timeout(
        limits.read_timeout,
        write_reply(&mut stream, &reply, head_only),
    )
    .await
    .map_err(|_| "write timeout".to_string())?
    .map_err(|e| e.to_string())?;
    linger(&mut stream).await;
    Ok(())
}

/// After answering (and closing the sending side), reads and drops what the client still sends
/// (the rest of a request head too large, or the request of a refused connection), for a
/// moment: closing a socket with unread input resets the connection, and the client could lose
/// the answer before reading it.
async fn linger<IO: AsyncRead + Unpin>(stream: &mut IO) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        let mut left = LINGER_MAX_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// How long, and how many bytes, `linger` reads after an answer at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 64 * 1024;

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends a request head.
async fn read_head<IO: AsyncRead + Unpin>(stream: &mut IO, max: usize) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf) {
            if end > max {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > max {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends (just after its blank line), if it has.
fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|at| at + 2))
}

/// The method and target of a request head.
fn parse(head: &[u8]) -> Result<(String, String), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("an incomplete request head".into()),
        Err(e) => return Err(format!("not an HTTP request: {e}")),
    }
    match (request.method, request.path) {
        (Some(method), Some(path)) => Ok((method.to_string(), path.to_string())),
        _ => Err("a request with no method or target".into()),
    }
}

/// The path of a request target, without its query string.
fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or(target)
}

async fn write_reply<IO: AsyncWrite + Unpin>(
    stream: &mut IO,
    reply: &Reply,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(find_end(b"GET / HTTP/1.0\n\n"), Some(16));
    }

    #[test]
    fn the_target_is_parsed_and_its_query_dropped() {
        let (method, target) = parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((method.as_str(), path_of(&target)), ("GET", "/metrics"));
        assert!(parse(b"\x16\x03\x01 hello\r\n\r\n").is_err());
    }
}
