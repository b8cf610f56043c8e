//! A blocking Rust client for the `CacheService`, over buffered transport and binary protocol
//! (the seed's configuration). Used by the CLI and by tests.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};

use crate::gen::cache::{
    AdminChange, AdminOp, CacheEntry, CacheServiceSyncClient, Consistency, KeyNotFound, Membership,
    NodeStatus, ReadOptions, TCacheServiceSyncClient,
};

type Inner = CacheServiceSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<TcpStream>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<TcpStream>>,
>;

/// One connection to one node.
pub struct CacheClient {
    inner: Inner,
}

impl CacheClient {
    /// Connects to `addr`; every call then waits at most `timeout` for its answer.
    pub fn connect(addr: &str, timeout: Duration) -> std::io::Result<Self> {
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
        let input =
            TBinaryInputProtocol::new(TBufferedReadTransport::new(stream.try_clone()?), true);
        let output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(stream), true);
        Ok(Self {
            inner: CacheServiceSyncClient::new(input, output),
        })
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
    e.to_string()
}
