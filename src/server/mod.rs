//! raftcache's Thrift server: an accept loop around the `thrift` crate's processors, used for
//! both the client port and the peer port.
//!
//! Why not `thrift::server::TServer`: it hands each connection to a fixed thread pool for the
//! connection's whole life (the N+1th client waits for one to disconnect), and it has no
//! connection cap, no read timeout and leaves Nagle on. Here every accepted connection gets its
//! own thread, the number of connections is capped, each message is limited in size, a client
//! that stalls mid-message or idles too long is disconnected, and `TCP_NODELAY` is set.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};
use thrift::TConfiguration;

mod watched;
use watched::WatchedInput;

/// Limits applied to every connection of one server.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; further connections are accepted and closed at once.
    pub max_connections: usize,
    /// Largest request message, in bytes; a larger one closes the connection.
    pub max_message_bytes: usize,
    /// How long a client may stall in the middle of a message before it is disconnected.
    pub read_timeout: Duration,
    /// How long a connection may sit idle between messages before it is closed.
    pub idle_timeout: Duration,
}

/// Stack size of a connection thread: a handler runs one request at a time on it.
const CONNECTION_STACK_BYTES: usize = 1024 * 1024;
/// Nesting depth allowed in a request (Thrift structs inside structs).
const MAX_RECURSION_DEPTH: usize = 64;

/// A running server. Dropping it does not stop it; call `stop`.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
    /// Open connections, so `stop` can end them.
    connections: Arc<Connections>,
    /// Dead once the server and every connection thread are gone (and with them the processor
    /// and whatever it holds, such as the node's storage).
    alive: Weak<()>,
}

/// The sockets of open connections, by a per-server serial number.
#[derive(Default)]
struct Connections {
    next: AtomicUsize,
    open: Mutex<HashMap<usize, TcpStream>>,
}

impl ServerHandle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and ends the open ones: each finishes the request it is
    /// serving (its answer is still written), then sees end-of-input and closes.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        for stream in self
            .connections
            .open
            .lock()
            .expect("connections lock")
            .values()
        {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
    }

    /// Whether every connection thread has finished since `stop`.
    pub fn drained(&self) -> bool {
        self.alive.strong_count() == 0
    }

    /// Number of connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections
            .open
            .lock()
            .expect("connections lock")
            .len()
    }
}

/// Starts serving `processor` on `listener` in a background thread. `name` labels log lines.
pub fn spawn<P>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    processor: P,
) -> io::Result<ServerHandle>
where
    P: TProcessor + Send + Sync + 'static,
{
    let local_addr = listener.local_addr()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(Connections::default());
    let server = Arc::new(Server {
        name,
        limits,
        processor,
        open: AtomicUsize::new(0),
        connections: connections.clone(),
        alive: Arc::new(()),
    });
    let alive = Arc::downgrade(&server.alive);
    let flag = stopping.clone();
    let accept_thread = std::thread::Builder::new()
        .name(format!("{name}-accept"))
        .spawn(move || server.accept_loop(listener, flag))?;
    Ok(ServerHandle {
        local_addr,
        stopping,
        accept_thread: Some(accept_thread),
        connections,
        alive,
    })
}

struct Server<P> {
    /// Label for log lines ("client" or "peer").
    name: &'static str,
    limits: ConnectionLimits,
    /// The generated Thrift processor; shared by all connection threads.
    processor: P,
    /// Connections open now, checked against `limits.max_connections`.
    open: AtomicUsize,
    /// Their sockets, shared with the handle for `stop`.
    connections: Arc<Connections>,
    /// Held only here; the handle watches it to know when the server is gone.
    alive: Arc<()>,
}

impl<P: TProcessor + Send + Sync + 'static> Server<P> {
    fn accept_loop(self: Arc<Self>, listener: TcpListener, stopping: Arc<AtomicBool>) {
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(server = self.name, error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = stream.peer_addr().ok();
            if self.open.fetch_add(1, Ordering::SeqCst) >= self.limits.max_connections {
                self.open.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    server = self.name,
                    ?peer,
                    max = self.limits.max_connections,
                    "connection refused: too many connections"
                );
                drop(stream);
                continue;
            }
            let serial = self.connections.next.fetch_add(1, Ordering::SeqCst);
            if let Ok(handle) = stream.try_clone() {
                self.connections
                    .open
                    .lock()
                    .expect("connections lock")
                    .insert(serial, handle);
            }
            let server = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-conn", self.name))
                .stack_size(CONNECTION_STACK_BYTES)
                .spawn(move || {
                    server.serve_connection(stream);
                    server.close(serial);
                });
            if let Err(e) = spawned {
                self.close(serial);
                tracing::warn!(server = self.name, ?peer, error = %e, "cannot start a connection thread");
            }
        }
    }

    fn close(&self, serial: usize) {
        self.connections
            .open
            .lock()
            .expect("connections lock")
            .remove(&serial);
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn serve_connection(&self, stream: TcpStream) {
        let peer = stream.peer_addr().ok();
        let setup = || -> io::Result<(TcpStream, TcpStream)> {
            stream.set_nodelay(true)?;
            stream
                .set_read_timeout(Some(self.limits.read_timeout.min(self.limits.idle_timeout)))?;
            stream.set_write_timeout(Some(self.limits.read_timeout))?;
            Ok((stream.try_clone()?, stream))
        };
        let (read_half, write_half) = match setup() {
            Ok(halves) => halves,
            Err(e) => {
                return tracing::debug!(server = self.name, ?peer, error = %e, "connection setup failed")
            }
        };
        let budget = Rc::new(MessageBudget::new(&self.limits));
        let reader = LimitedReader {
            inner: read_half,
            budget: budget.clone(),
        };
        let (mut input, input_failed) = WatchedInput::new(TBinaryInputProtocol::with_config(
            TBufferedReadTransport::new(reader),
            true,
            self.thrift_config(),
        ));
        let mut output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(write_half), true);
        loop {
            budget.start_message();
            let result = self.processor.process(&mut input, &mut output);
            if let Err(e) = result {
                return log_connection_end(self.name, peer, &e);
            }
            // The processor answered a request it could not decode with an exception; the
            // stream is now mid-message, so the connection cannot be used further.
            if let Some(reason) = input_failed.take() {
                return tracing::info!(server = self.name, ?peer, %reason, "connection closed: undecodable request");
            }
        }
    }

    fn thrift_config(&self) -> TConfiguration {
        TConfiguration::builder()
            .max_message_size(Some(self.limits.max_message_bytes))
            .max_frame_size(Some(self.limits.max_message_bytes))
            .max_string_size(Some(self.limits.max_message_bytes))
            .max_container_size(Some(self.limits.max_message_bytes))
            .max_recursion_depth(Some(MAX_RECURSION_DEPTH))
            .build()
            .expect("limits are positive")
    }
}

/// A clean close is routine; anything else says why the connection was dropped.
fn log_connection_end(server: &'static str, peer: Option<SocketAddr>, e: &thrift::Error) {
    let clean_close =
        matches!(e, thrift::Error::Transport(t) if t.kind == thrift::TransportErrorKind::EndOfFile);
    if clean_close {
        tracing::debug!(server, ?peer, "connection closed by client");
    } else {
        tracing::info!(server, ?peer, reason = %e, "connection closed");
    }
}

/// Per-connection accounting of the message being read: its size so far and when the
/// connection last went idle.
struct MessageBudget {
    max_message_bytes: usize,
    idle_timeout: Duration,
    read_in_message: Cell<usize>,
    idle_since: Cell<Instant>,
}

impl MessageBudget {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            max_message_bytes: limits.max_message_bytes,
            idle_timeout: limits.idle_timeout,
            read_in_message: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        }
    }

    fn start_message(&self) {
        self.read_in_message.set(0);
        self.idle_since.set(Instant::now());
    }
}

/// The socket's read side, refusing to read past the message size limit, and telling a read
/// timeout in the middle of a message (the client stalled: close) from one between messages
/// (idle: keep waiting until the idle timeout).
struct LimitedReader {
    inner: TcpStream,
    budget: Rc<MessageBudget>,
}

impl Read for LimitedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &self.budget;
        let remaining = b.max_message_bytes.saturating_sub(b.read_in_message.get());
        if remaining == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "message larger than the limit of {} bytes",
                    b.max_message_bytes
                ),
            ));
        }
        let len = buf.len().min(remaining);
        loop {
            match self.inner.read(&mut buf[..len]) {
                Ok(n) => {
                    b.read_in_message.set(b.read_in_message.get() + n);
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) && b.read_in_message.get() == 0 => {
                    if b.idle_since.get().elapsed() >= b.idle_timeout {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                }
                Err(e) if is_timeout(&e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "read timeout in the middle of a message",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
