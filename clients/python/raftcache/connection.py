"""One Thrift connection to one node, and the per-node pool that lends them out.

A connection carries one call at a time, and one that timed out or failed is closed, never put
back: thriftpy2 does not check an answer's sequence id, so a late answer left on a reused
socket would be read as the next call's. A connection put back idle is checked before it is
lent again: a node that closed it (`--idle-timeout-ms`) has left it readable (EOF), so it is
dropped and another is opened.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TClient
from thriftpy2.transport import TBufferedTransportFactory, TSocket, TTransportException

from ._idl import cache as _thrift

# What a failed connection raises, as opposed to a declared exception the node sent back.
TRANSPORT_ERRORS = (TTransportException, TProtocolException, OSError, EOFError, struct.error)


def is_timeout(exc: BaseException) -> bool:
    """True when `exc` means the node did not answer in time (it may still be working on it)."""
    if isinstance(exc, socket.timeout):
        return True
    return isinstance(exc, TTransportException) and exc.type == TTransportException.TIMED_OUT


@dataclass(frozen=True)
class Settings:
    """How every connection of one Client is opened."""

    timeout_s: float
    connect_timeout_s: float
    token: Optional[str]
    # None: plaintext. Built once per Client from tls_ca / tls_cert / tls_key.
    ssl_context: Optional[ssl.SSLContext]
    # The name the node's certificate must carry (None: the host dialled).
    server_hostname: Optional[str]


def make_ssl_context(
    tls: bool, ca: Optional[str], cert: Optional[str], key: Optional[str]
) -> Optional[ssl.SSLContext]:
    """A client TLS context that checks the node's certificate against `ca` (the system's CAs
    when None), presenting `cert`/`key` when given; None when TLS is off."""
    if not (tls or ca or cert):
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, keyfile=key)
    return ctx


class _TlsSocket(TSocket):
    """thriftpy2's TSocket over TLS, checking the certificate for `server_hostname` (thriftpy2's
    own TSSLSocket always checks the dialled host). The handshake runs inside connect(), so
    the connect timeout bounds it."""

    def __init__(self, host, port, ctx, server_hostname, socket_timeout_ms, connect_timeout_ms):
        super().__init__(
            host=host, port=port, socket_timeout=socket_timeout_ms, connect_timeout=connect_timeout_ms
        )
        self._ctx = ctx
        self._server_hostname = server_hostname or host

    def _init_sock(self):
        raw = socket.socket(self.socket_family, socket.SOCK_STREAM)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self._server_hostname)


class Connection:
    """An open, authenticated connection to one node."""

    def __init__(self, host: str, port: int, settings: Settings):
        timeout_ms = max(1, int(settings.timeout_s * 1000))
        connect_ms = max(1, int(settings.connect_timeout_s * 1000))
        if settings.ssl_context is None:
            self._sock = TSocket(host, port, socket_timeout=timeout_ms, connect_timeout=connect_ms)
        else:
            self._sock = _TlsSocket(
                host, port, settings.ssl_context, settings.server_hostname, timeout_ms, connect_ms
            )
        self._default_timeout_s = settings.timeout_s
        trans = TBufferedTransportFactory().get_transport(self._sock)
        self._trans = trans
        self._client = TClient(_thrift.CacheService, TBinaryProtocolFactory().get_protocol(trans))
        trans.open()
        if settings.token is not None:
            try:
                self._client.authenticate(settings.token)
            except BaseException:
                self.close()
                raise

    def call(self, method: str, args: Tuple[Any, ...], timeout_s: Optional[float] = None) -> Any:
        """Sends one call and reads its answer, waiting at most `timeout_s` (the Client's
        timeout when None) for each read from the socket."""
        sock = self._sock.sock
        if sock is None:
            raise TTransportException(TTransportException.NOT_OPEN, "connection is closed")
        sock.settimeout(timeout_s if timeout_s is not None else self._default_timeout_s)
        return getattr(self._client, method)(*args)

    def looks_closed(self) -> bool:
        """True when the idle socket has something to read: EOF from a node that closed it, or
        bytes no call asked for. Either way it must not carry another call."""
        sock = self._sock.sock
        if sock is None:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        try:
            self._trans.close()
        except TRANSPORT_ERRORS:
            pass


class NodePool:
    """The idle connections to one node (at most `max_idle`), lent one call at a time."""

    def __init__(self, host: str, port: int, settings: Settings, max_idle: int):
        self.host = host
        self.port = port
        self._settings = settings
        self._max_idle = max_idle
        self._idle: List[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Tuple[Connection, bool]:
        """A connection for one call, and whether it was reused from the pool (False: opened
        now). Opening may raise a transport error, or Unauthorized-as-Thrift from the token."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Connection(self.host, self.port, self._settings), False
            if conn.looks_closed():
                conn.close()
                continue
            return conn, True

    def give_back(self, conn: Connection) -> None:
        """Keeps a connection whose last call got its whole answer; closes it when the pool is
        full or closed."""
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
