"""Fixtures for the Python client tests of raftcache's Thrift API.

Set up first with `bash scripts/python-env.sh` (venv + Apache codegen), build the server with
`cargo build`, then run `.venv-test/bin/pytest tests/python -q`.

Fixtures:
  node          -- a one-node raftcache started from the built binary (module scope); yields
                   (host, port) of its client listener once it accepts connections and a put
                   succeeds; stopped with SIGTERM afterwards (SIGKILL after 10 s, which fails).
  thriftpy2_lib -- the client API built by thriftpy2.load("cache.thrift").
  apache_lib    -- the client API from Apache `thrift --gen py` output in target/py-gen.
Both *_lib fixtures are ThriftLib objects with the same shape, so a test can run over either.

Environment: RAFTCACHE_BIN overrides the server binary (default target/debug/raftcache).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
IDL = REPO / "cache.thrift"
PY_GEN = REPO / "target" / "py-gen"
DEFAULT_BIN = REPO / "target" / "debug" / "raftcache"

HOST = "127.0.0.1"
NODE_ID = 1
STARTUP_DEADLINE_S = 30.0  # from spawn until the client port accepts and a put succeeds
STOP_GRACE_S = 10.0  # from SIGTERM until we give up and SIGKILL
POLL_INTERVAL_S = 0.05
RPC_TIMEOUT_S = 10.0  # per-socket-operation timeout for test clients; a hung server fails fast
READY_KEY = "__raftcache_pytest_ready__"
SETUP_HINT = "run `bash scripts/python-env.sh` and use .venv-test/bin/pytest"


# --------------------------------------------------------------------------------------------
# Client libraries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThriftLib:
    """One Python Thrift library's view of cache.thrift, in a shape common to both."""

    name: str
    CacheEntry: Any
    ReadOptions: Any
    Consistency: Any
    KeyNotFound: Any
    InvalidRequest: Any
    Unavailable: Any
    # Exceptions the library raises when the connection itself fails (refused, reset, EOF,
    # timeout), as opposed to a declared exception the server sent back.
    transport_errors: tuple
    # connect(host, port, timeout_s=RPC_TIMEOUT_S) -> context manager yielding an open client
    # (unframed buffered transport + binary protocol, like the seed); closes it on exit.
    connect: Callable[..., ContextManager[Any]]

    def __repr__(self) -> str:  # keeps parametrized test ids and failure output short
        return f"ThriftLib({self.name})"


def _load_thriftpy2() -> ThriftLib:
    try:
        import thriftpy2
        from thriftpy2.protocol import TBinaryProtocolFactory
        from thriftpy2.thrift import TClient
        from thriftpy2.transport import TBufferedTransportFactory, TSocket, TTransportException
    except ImportError as e:
        pytest.fail(f"thriftpy2 is not importable ({e}): {SETUP_HINT}", pytrace=False)

    mod = thriftpy2.load(str(IDL), module_name="cache_thrift")

    @contextlib.contextmanager
    def connect(host: str, port: int, timeout_s: float = RPC_TIMEOUT_S):
        ms = max(1, int(timeout_s * 1000))
        sock = TSocket(host, port, socket_timeout=ms, connect_timeout=ms)
        trans = TBufferedTransportFactory().get_transport(sock)
        proto = TBinaryProtocolFactory().get_protocol(trans)
        client = TClient(mod.CacheService, proto)
        trans.open()
        try:
            yield client
        finally:
            trans.close()

    return ThriftLib(
        name="thriftpy2",
        CacheEntry=mod.CacheEntry,
        ReadOptions=mod.ReadOptions,
        Consistency=mod.Consistency,
        KeyNotFound=mod.KeyNotFound,
        InvalidRequest=mod.InvalidRequest,
        Unavailable=mod.Unavailable,
        transport_errors=(TTransportException, OSError, EOFError),
        connect=connect,
    )


def _load_apache() -> ThriftLib:
    try:
        from thrift.protocol import TBinaryProtocol
        from thrift.transport import TSocket, TTransport
    except ImportError as e:
        pytest.fail(f"Apache thrift is not importable ({e}): {SETUP_HINT}", pytrace=False)

    ttypes_py = PY_GEN / "cache" / "ttypes.py"
    if not ttypes_py.is_file():
        pytest.fail(f"no Apache generated code at {PY_GEN}: {SETUP_HINT}", pytrace=False)
    if IDL.stat().st_mtime > ttypes_py.stat().st_mtime:
        pytest.fail(f"{PY_GEN} is older than {IDL.name}: {SETUP_HINT}", pytrace=False)

    gen = str(PY_GEN)
    if gen not in sys.path:
        sys.path.insert(0, gen)
    from cache import CacheService, ttypes  # noqa: E402  (generated; package named by `namespace py`)

    if Path(ttypes.__file__).resolve().parent != (PY_GEN / "cache").resolve():
        pytest.fail(f"imported `cache` from {ttypes.__file__}, not from {PY_GEN}", pytrace=False)

    @contextlib.contextmanager
    def connect(host: str, port: int, timeout_s: float = RPC_TIMEOUT_S):
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(max(1, int(timeout_s * 1000)))
        trans = TTransport.TBufferedTransport(sock)
        proto = TBinaryProtocol.TBinaryProtocol(trans)
        client = CacheService.Client(proto)
        trans.open()
        try:
            yield client
        finally:
            trans.close()

    return ThriftLib(
        name="apache",
        CacheEntry=ttypes.CacheEntry,
        ReadOptions=ttypes.ReadOptions,
        Consistency=ttypes.Consistency,
        KeyNotFound=ttypes.KeyNotFound,
        InvalidRequest=ttypes.InvalidRequest,
        Unavailable=ttypes.Unavailable,
        transport_errors=(TTransport.TTransportException, OSError, EOFError),
        connect=connect,
    )


@pytest.fixture(scope="session")
def thriftpy2_lib() -> ThriftLib:
    return _load_thriftpy2()


@pytest.fixture(scope="session")
def apache_lib() -> ThriftLib:
    return _load_apache()


# --------------------------------------------------------------------------------------------
# Server node
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list:
    ports: list = []
    while len(ports) < n:
        p = _free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _tail(path: Path, limit: int = 16_000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<could not read {path}: {e}>"
    text = data[-limit:].decode("utf-8", errors="replace")
    if len(data) > limit:
        text = f"... ({len(data) - limit} earlier bytes cut) ...\n" + text
    return text or "<empty>"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if pytest itself dies, so no orphaned node is left
    holding ports. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


@dataclass
class Node:
    bin: Path
    host: str
    port: int
    peer_port: int
    http_port: int
    data_dir: Path
    stderr_path: Path
    stdout_path: Path
    proc: Optional[subprocess.Popen] = None
    sent_sigterm: bool = False
    node_id: int = NODE_ID
    # Further flags of `raftcache serve` (e.g. --initial-cluster for a multi-node cluster).
    extra: list = field(default_factory=list)

    @property
    def argv(self) -> list:
        return [
            str(self.bin), "serve",
            "--id", str(self.node_id),
            "--listen", f"{self.host}:{self.port}",
            "--peer-listen", f"{self.host}:{self.peer_port}",
            "--http-listen", f"{self.host}:{self.http_port}",
            "--data-dir", str(self.data_dir),
        ] + list(self.extra)  # fmt: skip

    def output(self) -> str:
        parts = [f"command: {' '.join(self.argv)}"]
        if self.proc is not None and self.proc.returncode is not None:
            after = " (after the fixture's SIGTERM)" if self.sent_sigterm else ""
            parts.append(f"exit status: {self.proc.returncode}{after}")
        parts.append(f"--- node stderr ({self.stderr_path}) ---\n{_tail(self.stderr_path)}")
        if self.stdout_path.exists() and self.stdout_path.stat().st_size:
            parts.append(f"--- node stdout ({self.stdout_path}) ---\n{_tail(self.stdout_path)}")
        return "\n".join(parts)

    def start(self) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("RUST_LOG", "info")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=str(self.data_dir.parent),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def stop(self) -> Optional[str]:
        """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL. Returns why the stop was not clean,
        or None when the node exited with status 0 on SIGTERM."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is not None:
            return f"node had already exited (status {proc.returncode}) before it was stopped"
        proc.send_signal(signal.SIGTERM)
        self.sent_sigterm = True
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return f"node did not exit within {STOP_GRACE_S:.0f} s of SIGTERM; killed with SIGKILL"
        if proc.returncode != 0:
            return f"node exited with status {proc.returncode} on SIGTERM (expected a clean 0)"
        return None

    def wait_ready(self, lib: ThriftLib, deadline: float, connect=None) -> None:
        """Poll until the client port accepts a TCP connection, then until a put succeeds
        (retrying on Unavailable and on connection errors while the node elects itself), over
        `connect` (host, port, timeout_s) if given, else `lib.connect`. Raises _StartupError
        on timeout or if the process exits."""
        connect = connect or lib.connect
        assert self.proc is not None
        last: object = "no attempt yet"

        def check_alive(stage: str) -> None:
            if self.proc.poll() is not None:
                raise _StartupError(f"node exited while {stage} (last error: {last!r})")

        def check_deadline(stage: str) -> None:
            if time.monotonic() >= deadline:
                raise _StartupError(
                    f"node not ready after {STARTUP_DEADLINE_S:.0f} s: still {stage} "
                    f"(last error: {last!r})"
                )

        stage = f"waiting for {self.host}:{self.port} to accept TCP connections"
        while True:
            check_alive(stage)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError as e:
                last = e
            check_deadline(stage)
            time.sleep(POLL_INTERVAL_S)

        stage = "waiting for a put to succeed (leader election)"
        entry = lib.CacheEntry(key=READY_KEY, value="ready")
        while True:
            check_alive(stage)
            remaining = deadline - time.monotonic()
            try:
                timeout_s = max(1.0, min(RPC_TIMEOUT_S, remaining))
                with connect(self.host, self.port, timeout_s=timeout_s) as c:
                    c.put(entry)
                return  # any answer that is not an exception: the write path works
            except lib.Unavailable as e:
                last = e
            except lib.transport_errors as e:
                last = e
            check_deadline(stage)
            time.sleep(POLL_INTERVAL_S)


class _StartupError(Exception):
    pass


def _server_bin() -> Path:
    raw = os.environ.get("RAFTCACHE_BIN")
    path = Path(raw) if raw else DEFAULT_BIN
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        how = "RAFTCACHE_BIN" if raw else "`cargo build` (or set RAFTCACHE_BIN)"
        pytest.fail(f"raftcache server binary not found or not executable at {path}: {how}", pytrace=False)
    return path


def _looks_like_port_clash(node: Node) -> bool:
    text = _tail(node.stderr_path).lower()
    return "address already in use" in text or "addrinuse" in text or "os error 98" in text


@pytest.fixture(scope="module")
def node(tmp_path_factory, thriftpy2_lib):
    """A fresh one-node raftcache for this test module. Yields (host, port) of its client API.

    Ports are picked by binding port 0 and reusing the number, so another process can grab one
    in between; if the node exits complaining its address is in use, it is started again on new
    ports with a new data dir (up to 3 tries)."""
    binary = _server_bin()
    base = tmp_path_factory.mktemp("raftcache-node")
    attempts = 3
    for attempt in range(1, attempts + 1):
        port, peer_port, http_port = _free_ports(3)
        n = Node(
            bin=binary,
            host=HOST,
            port=port,
            peer_port=peer_port,
            http_port=http_port,
            data_dir=base / f"try{attempt}" / "data",
            stderr_path=base / f"try{attempt}" / "node.stderr.log",
            stdout_path=base / f"try{attempt}" / "node.stdout.log",
        )
        n.data_dir.parent.mkdir(parents=True)
        failure = None
        try:
            n.start()
            n.wait_ready(thriftpy2_lib, time.monotonic() + STARTUP_DEADLINE_S)
        except Exception as e:
            n.stop()
            if attempt < attempts and _looks_like_port_clash(n):
                continue
            why = str(e) if isinstance(e, _StartupError) else f"{type(e).__name__}: {e!r}"
            failure = f"raftcache node failed to start: {why}\n{n.output()}"
        except BaseException:  # KeyboardInterrupt and the like: don't leave the node running
            n.stop()
            raise
        if failure is not None:
            pytest.fail(failure, pytrace=False)  # outside `except`: no chained traceback noise
        break

    try:
        yield (n.host, n.port)
    finally:
        problem = n.stop()
    if problem:
        pytest.fail(f"{problem}\n{n.output()}", pytrace=False)


def start_cluster(
    base: Path, lib: ThriftLib, size: int, flags: list, node_flags=None, connect=None
) -> list:
    """Starts a `size`-node raftcache cluster with `flags` on every node, and `node_flags(id)`
    on node `id` if given, and waits until each node accepts a put (over `connect` if given,
    see `Node.wait_ready`). Returns the Node objects (stop them with `stop_cluster`)."""
    binary = _server_bin()
    ports = _free_ports(3 * size)
    members = ",".join(f"{i + 1}={HOST}:{ports[size + i]}" for i in range(size))
    nodes = []
    for i in range(size):
        d = base / f"n{i + 1}"
        d.mkdir(parents=True)
        nodes.append(
            Node(
                bin=binary,
                host=HOST,
                port=ports[i],
                peer_port=ports[size + i],
                http_port=ports[2 * size + i],
                data_dir=d / "data",
                stderr_path=d / "node.stderr.log",
                stdout_path=d / "node.stdout.log",
                node_id=i + 1,
                extra=["--initial-cluster", members]
                + list(flags)
                + (list(node_flags(i + 1)) if node_flags else []),
            )
        )
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(lib, time.monotonic() + STARTUP_DEADLINE_S, connect)
    except Exception as e:
        for n in nodes:
            n.stop()
        outputs = "\n".join(n.output() for n in nodes)
        pytest.fail(f"raftcache cluster failed to start: {e}\n{outputs}", pytrace=False)
    return nodes


def stop_cluster(nodes: list) -> None:
    problems = [(n, n.stop()) for n in nodes]
    bad = [f"{p}\n{n.output()}" for n, p in problems if p]
    if bad:
        pytest.fail("\n".join(bad), pytrace=False)


def make_certs(out: Path) -> Path:
    """Certificates for a CA and nodes 1 to 5, made by cluster/make-certs.sh (openssl), as a
    user trying TLS would make them."""
    subprocess.run([str(REPO / "cluster" / "make-certs.sh"), str(out)], check=True)
    return out


def tls_cluster_parts(certs: Path, token: str, service, default_timeout_s: float):
    """What start_cluster needs for a cluster with TLS on both ports and client tokens: each
    node's flags (its certificate on the client and peer ports, mutual TLS between nodes,
    `--client-auth token`), and a thriftpy2 connection that trusts the CA and authenticates."""
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TBufferedTransportFactory

    @contextlib.contextmanager
    def connect(host, port, timeout_s=default_timeout_s):
        client = make_client(
            service, host, port, cafile=str(certs / "ca.pem"),
            trans_factory=TBufferedTransportFactory(), proto_factory=TBinaryProtocolFactory(),
            timeout=int(timeout_s * 1000),
        )  # fmt: skip
        try:
            client.authenticate(token)
            yield client
        finally:
            client.close()

    def node_flags(i):
        cert, key = certs / f"node-{i}.pem", certs / f"node-{i}-key.pem"
        return [
            "--tls-cert", str(cert), "--tls-key", str(key),
            "--peer-tls-cert", str(cert), "--peer-tls-key", str(key),
            "--peer-tls-ca", str(certs / "ca.pem"),
            "--client-auth", "token", "--client-token", token,
        ]  # fmt: skip

    return node_flags, connect
