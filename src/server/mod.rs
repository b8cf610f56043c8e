//! raftcache's Thrift server, for both the client port and the peer port: an async accept loop
//! with one task per connection, a connection cap, a size limit on each message, a read
//! timeout inside a message and an idle timeout between messages, and `TCP_NODELAY`.
//!
//! Why not `thrift::server::TServer`: it hands each connection to a fixed thread pool for the
//! connection's whole life (the N+1th client waits for one to disconnect), and it has no
//! connection cap, no read timeout and leaves Nagle on. Why not a thread per connection (what
//! this server was before): every request then crossed from the connection's thread to the
//! tokio runtime and back, two thread wake-ups per request, and on these VMs a wake-up of a
//! thread on the other core is among the most expensive things a request does.
//!
//! A connection first detects its transport (unframed or framed) and protocol (binary or
//! compact) from its first bytes (`wire.rs`), then reads bytes until one whole message has
//! arrived, and hands it to the `Service`, which decodes it from memory, answers it in the
//! same protocol, and the answer is written back (framed if the request was).
//! Messages on one connection are answered in order, one at a time.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
};
use thrift::server::TProcessor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::tls::ServerTls;

pub mod frame;
pub mod wire;
use frame::Measured;
pub use wire::Protocol;

/// Limits applied to every connection of one server.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; further connections are accepted and closed at once.
    pub max_connections: usize,
    /// Largest request message, in bytes; a larger one closes the connection.
    pub max_message_bytes: usize,
    /// How long a client may stall in the middle of a message before it is disconnected; also
    /// how long writing an answer may take.
    pub read_timeout: Duration,
    /// How long a connection may sit idle between messages before it is closed.
    pub idle_timeout: Duration,
}

/// What a service knows of the connection a request came on.
#[derive(Debug, Default)]
pub struct Connection {
    /// The certificate the client presented (the first of its chain), verified against the
    /// server's client CA by the TLS handshake; `None` without TLS or without client
    /// certificates.
    pub certificate: Option<CertificateDer<'static>>,
    /// Set once the client presented the client token (`authenticate`).
    pub authenticated: std::sync::atomic::AtomicBool,
}

/// What a server does with each request.
pub trait Service: Send + Sync + 'static {
    /// Answers one whole request message in `protocol` (strict binary, or compact), in the
    /// same protocol. `None` closes the connection without an answer.
    fn call(
        &self,
        request: Vec<u8>,
        protocol: Protocol,
        connection: &Connection,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Runs a generated (synchronous) Thrift processor over one request held in memory and
/// returns what it wrote: the answer, or an exception for a request it could not decode.
/// Fails only if the message header itself is unreadable. No string or container in the
/// request is allowed to claim more bytes than the whole request has.
pub fn process(
    processor: &dyn TProcessor,
    request: &[u8],
    protocol: Protocol,
) -> thrift::Result<Vec<u8>> {
    let config = wire::limits(request.len());
    let mut answer = Vec::new();
    match protocol {
        Protocol::Binary => {
            let mut input = TBinaryInputProtocol::with_config(request, true, config);
            let mut output = TBinaryOutputProtocol::new(&mut answer, true);
            processor.process(&mut input, &mut output)?;
        }
        Protocol::Compact => {
            let mut input = TCompactInputProtocol::with_config(request, config);
            let mut output = TCompactOutputProtocol::new(&mut answer);
            processor.process(&mut input, &mut output)?;
        }
    }
    Ok(answer)
}

/// Bytes read from a socket at a time, at most.
const READ_CHUNK: usize = 16 * 1024;
/// A connection's buffer larger than this is given back once it is empty.
const KEEP_BUFFER: usize = 64 * 1024;

/// A server's connection counts, shared with whoever reports them (`/metrics`).
#[derive(Clone, Debug, Default)]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// Connections refused at `ConnectionLimits::max_connections` since the server started.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

/// A running server. Dropping it does not stop it; call `stop`.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    counts: ConnectionCounts,
    /// Dead once the accept loop and every connection task are gone (and with them the
    /// service and whatever it holds, such as the node's storage).
    alive: Weak<()>,
}

impl ServerHandle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections (the port is closed) and ends the open ones: a connection
    /// serving a request finishes it and writes its answer, then closes; the others close now.
    pub fn stop(&mut self) {
        self.stop.send_replace(true);
    }

    /// Whether the accept loop and every connection have finished since `stop`.
    pub fn drained(&self) -> bool {
        self.alive.strong_count() == 0
    }

    /// Number of connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The connection counts, to report.
    pub fn counts(&self) -> ConnectionCounts {
        self.counts.clone()
    }
}

/// Starts serving `service` on `listener`, on the current tokio runtime, over TLS when `tls`
/// is given. `name` labels log lines.
pub fn spawn<S: Service>(
    name: &'static str,
    listener: std::net::TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
    service: S,
) -> io::Result<ServerHandle> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let local_addr = listener.local_addr()?;
    let (stop, stopping) = watch::channel(false);
    let counts = ConnectionCounts::default();
    let open = counts.open.clone();
    let server = Arc::new(Server {
        name,
        limits,
        tls,
        service,
        open: open.clone(),
        refused: counts.refused.clone(),
        alive: Arc::new(()),
    });
    let alive = Arc::downgrade(&server.alive);
    tokio::spawn(server.accept_loop(listener, stopping));
    Ok(ServerHandle {
        local_addr,
        stop,
        open,
        counts,
        alive,
    })
}

struct Server<S> {
    /// Label for log lines ("client" or "peer").
    name: &'static str,
    limits: ConnectionLimits,
    /// When set, connections speak TLS; a plaintext client's first call is answered with an
    /// exception that says so.
    tls: Option<Arc<ServerTls>>,
    service: S,
    /// Connections open now, checked against `limits.max_connections`.
    open: Arc<AtomicUsize>,
    /// Connections refused at the cap.
    refused: Arc<std::sync::atomic::AtomicU64>,
    /// Held only here; the handle watches it to know when the server is gone.
    alive: Arc<()>,
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 22;

/// What a connection without TLS gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plain {
    /// Served: the server speaks no TLS, or the connection is past its handshake.
    Serve,
    /// Its first call is answered with an exception saying the port speaks TLS, then closed.
    Refuse,
}

/// Why a connection ended; a clean close is routine, the rest is logged.
enum End {
    ClosedByClient,
    Stopping,
    Refused(String),
}

impl<S: Service> Server<S> {
    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        mut stopping: watch::Receiver<bool>,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(server = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.open.fetch_add(1, Ordering::SeqCst) >= self.limits.max_connections {
                self.open.fetch_sub(1, Ordering::SeqCst);
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    server = self.name,
                    %peer,
                    max = self.limits.max_connections,
                    "connection refused: too many connections"
                );
                drop(stream);
                continue;
            }
            let server = self.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let end = server.open_connection(stream, stopping).await;
                server.open.fetch_sub(1, Ordering::SeqCst);
                match end {
                    End::ClosedByClient => {
                        tracing::debug!(server = server.name, %peer, "connection closed by client")
                    }
                    End::Stopping => {
                        tracing::debug!(server = server.name, %peer, "connection closed: stopping")
                    }
                    End::Refused(reason) => {
                        tracing::info!(server = server.name, %peer, %reason, "connection closed")
                    }
                }
            });
        }
    }

    /// Sets the socket up, makes the TLS handshake if the server speaks TLS, and serves the
    /// connection.
    async fn open_connection(&self, stream: TcpStream, mut stopping: watch::Receiver<bool>) -> End {
        if let Err(e) = stream.set_nodelay(true) {
            return End::Refused(format!("cannot set TCP_NODELAY: {e}"));
        }
        let Some(tls) = &self.tls else {
            return self
                .serve(stream, Connection::default(), Plain::Serve, stopping)
                .await;
        };
        // A TLS client speaks first, with a handshake record (content type 22).
        let mut first = [0u8; 1];
        let peeked = tokio::select! {
            peeked = tokio::time::timeout(self.limits.idle_timeout, stream.peek(&mut first)) => peeked,
            _ = stopping.wait_for(|stop| *stop) => return End::Stopping,
        };
        match peeked {
            Err(_) => return End::Refused("idle timeout".into()),
            Ok(Ok(0)) => return End::ClosedByClient,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return End::Refused(e.to_string()),
        }
        if first[0] != TLS_HANDSHAKE {
            return self
                .serve(stream, Connection::default(), Plain::Refuse, stopping)
                .await;
        }
        let handshake = tls.acceptor().accept(stream);
        let stream = tokio::select! {
            done = tokio::time::timeout(self.limits.read_timeout, handshake) => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return End::Refused(format!("TLS handshake failed: {e}")),
                Err(_) => return End::Refused("read timeout in the TLS handshake".into()),
            },
            _ = stopping.wait_for(|stop| *stop) => return End::Stopping,
        };
        let connection = Connection {
            authenticated: Default::default(),
            certificate: stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.clone().into_owned()),
        };
        self.serve(stream, connection, Plain::Serve, stopping).await
    }

    async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: IO,
        connection: Connection,
        plain: Plain,
        mut stopping: watch::Receiver<bool>,
    ) -> End {
        let max = self.limits.max_message_bytes;
        let mut buf: Vec<u8> = Vec::new();
        let mut detected: Option<wire::Wire> = None;
        loop {
            let (len, wire) = loop {
                if detected.is_none() {
                    detected = match wire::detect(&buf, max) {
                        Ok(found) => found,
                        Err(reason) => return End::Refused(reason),
                    };
                }
                let needed = match detected.map(|wire| (wire, wire::measure(wire, &buf, max))) {
                    Some((wire, Measured::Complete(len))) => break (len, wire),
                    Some((_, Measured::Invalid(reason))) => return End::Refused(reason),
                    Some((_, Measured::Incomplete(needed))) => needed,
                    None => buf.len() + 1,
                };
                let (timeout, what) = if buf.is_empty() {
                    (self.limits.idle_timeout, "idle timeout")
                } else {
                    (
                        self.limits.read_timeout,
                        "read timeout in the middle of a message",
                    )
                };
                let want = (needed - buf.len()).clamp(1, READ_CHUNK);
                buf.reserve(want);
                let read = tokio::select! {
                    read = tokio::time::timeout(timeout, stream.read_buf(&mut buf)) => read,
                    _ = stopping.wait_for(|stop| *stop) => return End::Stopping,
                };
                match read {
                    Err(_) => return End::Refused(what.into()),
                    Ok(Ok(0)) if buf.is_empty() => return End::ClosedByClient,
                    Ok(Ok(0)) => {
                        return End::Refused("end of input in the middle of a message".into())
                    }
                    Ok(Ok(_)) => {}
                    // A TLS client that closes without a close_notify, between messages.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof && buf.is_empty() => {
                        return End::ClosedByClient
                    }
                    Ok(Err(e)) => return End::Refused(e.to_string()),
                }
            };
            let rest = buf.split_off(len);
            let mut request = std::mem::replace(&mut buf, rest);
            if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
                buf = Vec::new();
            }
            if wire.framed {
                request = wire::payload(wire, &request).to_vec();
            }
            if plain == Plain::Refuse {
                let refusal = wire::wrap(wire, wire::refuse_plaintext(wire.protocol, &request));
                let _ =
                    tokio::time::timeout(self.limits.read_timeout, write(&mut stream, &refusal))
                        .await;
                return End::Refused("a plaintext client on a TLS port".into());
            }
            if let Some(refusal) = wire::refuse_unless_call(wire.protocol, &request) {
                let refusal = wire::wrap(wire, refusal);
                let _ =
                    tokio::time::timeout(self.limits.read_timeout, write(&mut stream, &refusal))
                        .await;
                return End::Refused("a message that is not a call".into());
            }
            let Some(answer) = self.service.call(request, wire.protocol, &connection).await else {
                return End::Refused("undecodable request".into());
            };
            let answer = wire::wrap(wire, answer);
            match tokio::time::timeout(self.limits.read_timeout, write(&mut stream, &answer)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Refused(format!("cannot write the answer: {e}")),
                Err(_) => return End::Refused("write timeout".into()),
            }
            if *stopping.borrow() {
                return End::Stopping;
            }
        }
    }
}

/// Writes all of `bytes` and flushes them (TLS may hold the end of a message until flushed).
async fn write<IO: AsyncWrite + Unpin>(stream: &mut IO, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
