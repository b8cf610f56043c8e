//! A blocking Rust client for the `CacheService`, over buffered transport and binary protocol
//! (the seed's configuration). Used by the CLI and by tests.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};

use crate::gen::cache::{
    AdminChange, AdminOp, CacheEntry, CacheServiceSyncClient, Consistency, KeyNotFound, Membership,
    NodeStatus, ReadOptions, TCacheServiceSyncClient,
};
use crate::tls::{ClientFiles, ClientTls};

type Inner = CacheServiceSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<Link>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<Link>>,
>;

/// The bytes under a client: a socket, or TLS over one. Its clones share the connection: one
/// reads answers, the other writes calls, never at once.
#[derive(Clone)]
enum Link {
    Plain(Arc<TcpStream>),
    Tls(Arc<Mutex<StreamOwned<ClientConnection, TcpStream>>>),
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(stream) => (&**stream).read(buf),
            Link::Tls(stream) => stream.lock().expect("tls stream lock").read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(stream) => (&**stream).write(buf),
            Link::Tls(stream) => stream.lock().expect("tls stream lock").write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(stream) => (&**stream).flush(),
            Link::Tls(stream) => stream.lock().expect("tls stream lock").flush(),
        }
    }
}

/// How a client speaks TLS to a node.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The CA of the node's certificate, and the client's own certificate and key if the node
    /// asks for one (`--client-auth cert`).
    pub files: ClientFiles,
    /// The name the node's certificate must carry; by default the host of the address dialed.
    pub server_name: Option<String>,
}

/// How a client reaches a node: over TLS or not, and with the client token or not.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub tls: Option<TlsOptions>,
    /// Presented with `authenticate` right after connecting (`--client-auth token` nodes).
    pub token: Option<String>,
}

/// One connection to one node.
pub struct CacheClient {
    inner: Inner,
    /// The TLS session, if any, to end with a close_notify when the client is dropped.
    tls: Option<Arc<Mutex<StreamOwned<ClientConnection, TcpStream>>>>,
}

impl Drop for CacheClient {
    fn drop(&mut self) {
        if let Some(tls) = &self.tls {
            let mut stream = tls.lock().expect("tls stream lock");
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    }
}

impl CacheClient {
    /// Connects to `addr`; every call then waits at most `timeout` for its answer.
    pub fn connect(addr: &str, timeout: Duration) -> std::io::Result<Self> {
        Self::connect_with(addr, timeout, &ClientOptions::default())
    }

    /// Connects to `addr` as `options` say: over TLS (the handshake is made here, so a
    /// certificate the client does not trust fails the connect), then `authenticate` with the
    /// token (a refused token fails the connect).
    pub fn connect_with(
        addr: &str,
        timeout: Duration,
        options: &ClientOptions,
    ) -> std::io::Result<Self> {
        let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr} resolves to nothing"),
            )
        })?;
        let stream = TcpStream::connect_timeout(&sock, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let link = match &options.tls {
            None => Link::Plain(Arc::new(stream)),
            Some(tls) => Link::Tls(Arc::new(Mutex::new(handshake(addr, stream, tls)?))),
        };
        let tls = match &link {
            Link::Tls(stream) => Some(stream.clone()),
            Link::Plain(_) => None,
        };
        let input = TBinaryInputProtocol::new(TBufferedReadTransport::new(link.clone()), true);
        let output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(link), true);
        let mut client = Self {
            inner: CacheServiceSyncClient::new(input, output),
            tls,
        };
        if let Some(token) = &options.token {
            client.inner.authenticate(token.clone()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("authenticate: {}", describe_error(&e)),
                )
            })?;
        }
        Ok(client)
    }

    /// The value of `key`, `None` when absent.
    pub fn get(&mut self, key: &str, linearizable: bool) -> thrift::Result<Option<String>> {
        let consistency = if linearizable {
            Consistency::LINEARIZABLE
        } else {
            Consistency::LOCAL
        };
        let options = ReadOptions {
            consistency: Some(consistency),
            min_index: None,
        };
        match self.inner.get_with(key.to_string(), options) {
            Ok(entry) => Ok(Some(entry.value)),
            Err(thrift::Error::User(e)) if e.is::<KeyNotFound>() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put(&mut self, key: &str, value: &str) -> thrift::Result<bool> {
        self.put_ttl(key, value, None)
    }

    /// Stores `value` under `key`, expiring `ttl_ms` after the leader proposes it (if given).
    pub fn put_ttl(&mut self, key: &str, value: &str, ttl_ms: Option<i64>) -> thrift::Result<bool> {
        self.inner.put(CacheEntry {
            key: key.to_string(),
            value: value.to_string(),
            ttl_ms,
        })
    }

    /// The generated client, for every other method of the `CacheService`.
    pub fn service(&mut self) -> &mut impl TCacheServiceSyncClient {
        &mut self.inner
    }

    /// Whether the key existed.
    pub fn remove(&mut self, key: &str) -> thrift::Result<bool> {
        self.inner.remove(key.to_string())
    }

    pub fn status(&mut self) -> thrift::Result<NodeStatus> {
        self.inner.status()
    }

    /// Builds a snapshot on the node; returns the log index it covers.
    pub fn admin_snapshot(&mut self) -> thrift::Result<i64> {
        self.inner.admin_snapshot()
    }

    /// `admin_snapshot` with the admin token ("" for none).
    pub fn admin_snapshot_with(&mut self, token: &str) -> thrift::Result<i64> {
        self.inner.admin_snapshot_with(token.to_string())
    }

    /// The membership as the leader sees it. `token`: the admin token ("" for none).
    pub fn admin_members(&mut self, token: &str) -> thrift::Result<Membership> {
        self.inner.admin_members(token.to_string())
    }

    /// Makes one membership change through the leader; returns the membership after it.
    pub fn admin_change(
        &mut self,
        op: AdminOp,
        id: u64,
        peer_addr: Option<&str>,
        new_id: Option<u64>,
        force: bool,
        token: &str,
    ) -> thrift::Result<Membership> {
        let change = AdminChange {
            op,
            id: id as i64,
            peer_addr: peer_addr.map(str::to_string),
            new_id: new_id.map(|n| n as i64),
            force: Some(force),
        };
        self.inner.admin_change(change, token.to_string())
    }
}

/// A readable one-line description of a client-side error, naming declared exceptions.
pub fn describe_error(e: &thrift::Error) -> String {
    use crate::gen::cache::{AdminRefused, CacheFull, InvalidRequest, Unauthorized, Unavailable};
    if let thrift::Error::User(user) = e {
        if let Some(x) = user.downcast_ref::<AdminRefused>() {
            return format!("refused: {}", x.message);
        }
        if let Some(x) = user.downcast_ref::<Unauthorized>() {
            return format!("unauthorized: {}", x.message);
        }
        if let Some(x) = user.downcast_ref::<Unavailable>() {
            return format!("unavailable: {}", x.message);
        }
        if let Some(x) = user.downcast_ref::<CacheFull>() {
            return format!("cache full: {}", x.message);
        }
        if let Some(x) = user.downcast_ref::<InvalidRequest>() {
            return format!("invalid request: {}", x.message);
        }
    }
    // thrift's own Display says only which kind of error it was; the message says why.
    match e {
        thrift::Error::Transport(t) => format!("transport error: {}", t.message),
        thrift::Error::Protocol(p) => format!("protocol error: {}", p.message),
        thrift::Error::Application(a) => format!("server error: {}", a.message),
        other => other.to_string(),
    }
}

/// Makes the TLS handshake with the node at `addr` over `stream`.
pub(crate) fn handshake(
    addr: &str,
    mut stream: TcpStream,
    tls: &TlsOptions,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let config = ClientTls::build(&tls.files).map_err(|e| invalid(e.to_string()))?;
    let name = crate::tls::server_name(addr, tls.server_name.as_deref())
        .map_err(|e| invalid(e.to_string()))?;
    let mut connection = ClientConnection::new(config, name).map_err(|e| invalid(e.to_string()))?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut stream)
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
    }
    Ok(StreamOwned::new(connection, stream))
}
