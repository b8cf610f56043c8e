"""The Python client package (clients/python, `import raftcache`) against real nodes (issue 18).

Fake nodes first (a thriftpy2 server in this process that records what the client sends and
answers as each test needs): the WriteOptions of every attempt, which errors are retried, the
index sent as min_index. Then real clusters from the built binary: a write-read loop through
`kill -9` of the node in use, read-your-writes on every node, a paused node and a short client
timeout, 8 threads on one Client, idle connections closed by the node, a pickled object,
1,000 increments through two leader kills, a watcher through a leader kill and compaction and
one that falls behind the history, and TLS with client tokens.

Waits poll a condition with a deadline; each phase prints a line (shown when a test fails).
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import (
    HOST,
    REPO,
    STARTUP_DEADLINE_S,
    make_certs,
    start_cluster,
    stop_cluster,
    tls_cluster_parts,
)

raftcache = pytest.importorskip("raftcache", reason="run `bash scripts/python-env.sh` first")
thrift = raftcache.thrift

WAIT_S = 60.0  # the longest any phase may take before the test fails


def phase(text: str) -> None:
    print(f"phase: {text}", flush=True)


def failed_attempts(caplog, method: str) -> list:
    """The client's log lines of failed attempts of `method` (router.py, DEBUG)."""
    prefixes = (f"{method} failed on ", f"{method}: reused connection")
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefixes)]


def wait_for(what: str, check, deadline_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, f"not within {deadline_s:.0f} s: {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# The package itself
# --------------------------------------------------------------------------------------------


def test_the_shipped_idl_is_the_repository_root_copy():
    """The package loads its own copy of cache.thrift; the root copy is the source of truth.
    Fix a failure with `cp cache.thrift clients/python/raftcache/cache.thrift` and
    `bash scripts/python-env.sh` (which reinstalls the package)."""
    root = (REPO / "cache.thrift").read_bytes()
    source_copy = REPO / "clients" / "python" / "raftcache" / "cache.thrift"
    assert source_copy.read_bytes() == root, f"{source_copy} differs from {REPO / 'cache.thrift'}"
    installed = Path(raftcache._idl.IDL_PATH)
    assert installed.read_bytes() == root, f"the installed {installed} differs: reinstall the package"


def test_the_installed_package_is_the_source_tree():
    """The venv's raftcache holds exactly the files of clients/python/raftcache."""
    source = REPO / "clients" / "python" / "raftcache"
    installed = Path(importlib.util.find_spec("raftcache").origin).parent
    names = sorted(p.name for p in source.iterdir() if p.suffix in (".py", ".thrift"))
    assert names == sorted(p.name for p in installed.iterdir() if p.suffix in (".py", ".thrift"))
    for name in names:
        assert (installed / name).read_bytes() == (source / name).read_bytes(), f"{name} is stale"


def test_every_error_is_a_raftcache_error():
    for name in ("KeyNotFound", "InvalidRequest", "Unavailable", "CacheFull", "Unauthorized",
                 "Compacted", "OutcomeUnknown", "ServerError"):  # fmt: skip
        assert issubclass(getattr(raftcache, name), raftcache.Error), name


# --------------------------------------------------------------------------------------------
# Fake nodes: what the client sends
# --------------------------------------------------------------------------------------------


class FakeNode:
    """A thriftpy2 server of cache.thrift on a loopback port, serving `handler` (each
    connection in its own thread)."""

    def __init__(self, handler):
        from thriftpy2.protocol import TBinaryProtocolFactory
        from thriftpy2.server import TThreadedServer
        from thriftpy2.thrift import TProcessor
        from thriftpy2.transport import TBufferedTransportFactory, TServerSocket

        self.server = TThreadedServer(
            TProcessor(thrift.CacheService, handler),
            TServerSocket(host=HOST, port=0, client_timeout=None),
            iprot_factory=TBinaryProtocolFactory(), itrans_factory=TBufferedTransportFactory(),
        )  # fmt: skip
        self.server.trans.listen()
        self.addr = f"{HOST}:{self.server.trans.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self.server.closed:
            try:
                conn = self.server.trans.accept()
            except OSError:
                return
            threading.Thread(target=self.server.handle, args=(conn,), daemon=True).start()

    def close(self):
        self.server.closed = True
        sock = self.server.trans.sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self._thread.join(5)


class Recorder:
    """A handler that records every call's arguments, in order."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def record(self, method, *args):
        with self.lock:
            self.calls.append((method,) + args)

    def of(self, method):
        with self.lock:
            return [c[1:] for c in self.calls if c[0] == method]


@pytest.fixture
def fake_nodes():
    made = []

    def make(handler):
        node = FakeNode(handler)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def test_a_write_retried_after_a_timeout_carries_the_same_client_id_and_seq(fake_nodes):
    """The first attempt sleeps past the client's timeout; the retry (a new connection) gets
    the answer, and the late answer of the first attempt is never read by a later call."""

    class Handler(Recorder):
        def put_with(self, entry, options):
            self.record("put_with", entry.key, options)
            if len(self.of("put_with")) == 1:
                time.sleep(1.0)  # past the client's 0.3 s: this answer arrives too late
                return thrift.WriteResult(index=999, count=1)
            return thrift.WriteResult(index=7, count=1)

        def get_with(self, key, options):
            self.record("get_with", key, options)
            return thrift.CacheEntry(key=key, value="right")

    handler = Handler()
    node = fake_nodes(handler)
    with raftcache.Client([node.addr], timeout_s=0.3) as c:
        assert 0 < c.client_id < 2**63
        assert c.put("k", "v") is True
        assert c.index == 7
        time.sleep(1.0)  # the first attempt's answer is sent now, to a closed connection
        assert c.get("k").value == "right"
        assert c.put("k2", "v2") is True
    attempts = handler.of("put_with")
    assert [key for key, _ in attempts] == ["k", "k", "k2"]
    first, retry, second = (o for _, o in attempts)
    assert (first.client_id, first.seq, first.lowest_unanswered) == (c.client_id, 1, 1)
    assert (retry.client_id, retry.seq, retry.lowest_unanswered) == (c.client_id, 1, 1)
    assert (second.client_id, second.seq, second.lowest_unanswered) == (c.client_id, 2, 2)
    assert handler.of("get_with")[0][1].min_index == 7


def test_lowest_unanswered_is_the_oldest_write_still_waiting(fake_nodes):
    arrived, release = threading.Event(), threading.Event()

    class Handler(Recorder):
        def put_with(self, entry, options):
            self.record("put_with", entry.key, options)
            if entry.key == "slow":
                arrived.set()
                assert release.wait(10)
            return thrift.WriteResult(index=len(self.calls), count=1)

    handler = Handler()
    node = fake_nodes(handler)
    with raftcache.Client([node.addr]) as c:
        slow = threading.Thread(target=c.put, args=("slow", "1"))
        slow.start()
        assert arrived.wait(10)
        c.put("fast", "2")  # seq 2 while seq 1 waits
        release.set()
        slow.join(10)
        c.put("after", "3")  # nothing waits any more
    sent = {key: (o.seq, o.lowest_unanswered) for key, o in handler.of("put_with")}
    assert sent == {"slow": (1, 1), "fast": (2, 1), "after": (3, 3)}


def test_unavailable_is_retried_and_final_answers_are_not(fake_nodes):
    class Handler(Recorder):
        def put_with(self, entry, options):
            self.record("put_with", entry.key, options)
            if entry.key == "flaky" and len(self.of("put_with")) < 3:
                raise thrift.Unavailable(message="no leader yet")
            if entry.key == "big":
                raise thrift.InvalidRequest(message="too large")
            if entry.key == "full":
                raise thrift.CacheFull(message="full")
            return thrift.WriteResult(index=1, count=1)

        def get_with(self, key, options):
            self.record("get_with", key, options)
            raise thrift.KeyNotFound(key=key)

        def authenticate(self, token):
            self.record("authenticate", token)
            if token != "good":
                raise thrift.Unauthorized(message="wrong token")

    handler = Handler()
    node = fake_nodes(handler)
    with raftcache.Client([node.addr], token="good") as c:
        assert c.put("flaky", "v") is True
        assert {(o.client_id, o.seq) for _, o in handler.of("put_with")} == {(c.client_id, 1)}
        assert len(handler.of("put_with")) == 3
        for key, error in (("big", raftcache.InvalidRequest), ("full", raftcache.CacheFull)):
            with pytest.raises(error):
                c.put(key, "v")
            assert [k for k, _ in handler.of("put_with")].count(key) == 1, key
        with pytest.raises(raftcache.KeyNotFound) as missing:
            c.get("absent")
        assert missing.value.key == "absent"
        assert len(handler.of("get_with")) == 1
    with raftcache.Client([node.addr], token="bad") as c:
        with pytest.raises(raftcache.Unauthorized):
            c.get("any")
    assert [args[0] for args in handler.of("authenticate")] == ["good", "bad"]


def test_a_write_whose_retries_run_out_has_an_unknown_outcome(fake_nodes):
    class Handler(Recorder):
        def put_with(self, entry, options):
            self.record("put_with", entry.key, options)
            raise thrift.Unavailable(message="may or may not be applied")

    handler = Handler()
    node = fake_nodes(handler)
    with raftcache.Client([node.addr], retry_deadline_s=1.0) as c:
        with pytest.raises(raftcache.OutcomeUnknown) as unknown:
            c.put("k", "v")
    assert (unknown.value.client_id, unknown.value.seq) == (c.client_id, 1)
    assert len(handler.of("put_with")) > 1
    assert {(o.client_id, o.seq) for _, o in handler.of("put_with")} == {(c.client_id, 1)}

    # A write that never reached any node (nothing listens) is plainly Unavailable.
    with socket.socket() as s:
        s.bind((HOST, 0))
        dead = f"{HOST}:{s.getsockname()[1]}"
    with raftcache.Client([dead], retry_deadline_s=0.5) as c:
        with pytest.raises(raftcache.Unavailable):
            c.put("k", "v")


def test_reads_carry_the_highest_index_seen_and_the_consistency_asked(fake_nodes):
    indexes = iter([42, 40])

    class Handler(Recorder):
        def put_with(self, entry, options):
            return thrift.WriteResult(index=next(indexes), count=1)

        def get_with(self, key, options):
            self.record("get_with", key, options)
            return thrift.CacheEntry(key=key, value="v")

    handler = Handler()
    node = fake_nodes(handler)
    with raftcache.Client([node.addr]) as c:
        c.get("a")
        c.put("k", "v")
        c.put("k", "v")  # a lower index (another node's answer, say) does not lower it
        c.get("b", linearizable=True)
        c.get("c", min_index=50)
    sent = [(key, o.min_index, o.consistency) for key, o in handler.of("get_with")]
    local, linear = thrift.Consistency.LOCAL, thrift.Consistency.LINEARIZABLE
    assert sent == [("a", None, local), ("b", 42, linear), ("c", 50, local)]


# --------------------------------------------------------------------------------------------
# Real clusters
# --------------------------------------------------------------------------------------------


class Cluster:
    """Nodes of a real cluster, with kill -9, SIGSTOP/SIGCONT and restart."""

    def __init__(self, nodes, lib):
        self.nodes = nodes
        self.lib = lib
        self.down = set()
        self.restarts = 0

    @property
    def addrs(self):
        return [f"{n.host}:{n.port}" for n in self.nodes]

    def by_addr(self, addr):
        return next(n for n in self.nodes if f"{n.host}:{n.port}" == addr)

    def leader(self):
        """The node that a live node names as leader and that says it leads."""
        found = []

        def agreed():
            for n in self.nodes:
                if n.node_id in self.down:
                    continue
                try:
                    with self.lib.connect(n.host, n.port, timeout_s=2) as c:
                        st = c.status()
                except Exception:
                    continue
                if st.role == "leader":
                    found[:] = [n]
                    return True
            return False

        wait_for("a live node leads", agreed)
        return found[0]

    def kill9(self, node):
        phase(f"kill -9 node {node.node_id} ({node.host}:{node.port})")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        self.down.add(node.node_id)

    def restart(self, node):
        phase(f"restart node {node.node_id}")
        self.restarts += 1
        # Keep the killed run's log beside the new one.
        node.stderr_path.rename(node.stderr_path.with_name(f"node.stderr.{self.restarts}.log"))
        node.start()
        node.wait_ready(self.lib, time.monotonic() + STARTUP_DEADLINE_S)
        self.down.discard(node.node_id)

    def admin_snapshot(self, node):
        with self.lib.connect(node.host, node.port) as c:
            return c.admin_snapshot()

    def stats(self, node):
        with raftcache.Client([f"{node.host}:{node.port}"]) as c:
            return c.stats()

    def stop(self):
        for n in self.nodes:
            if n.node_id in self.down:
                n.proc = None  # killed by the test: nothing left to stop
        stop_cluster(self.nodes)


@pytest.fixture
def make_cluster(tmp_path_factory, thriftpy2_lib):
    made = []

    def make(size=3, flags=(), node_flags=None, connect=None):
        nodes = start_cluster(
            tmp_path_factory.mktemp("client-pkg"), thriftpy2_lib, size, list(flags), node_flags, connect
        )
        made.append(Cluster(nodes, thriftpy2_lib))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory, thriftpy2_lib):
    """A 3-node cluster for the tests that neither kill nor pause a node."""
    nodes = start_cluster(tmp_path_factory.mktemp("client-pkg-shared"), thriftpy2_lib, 3, [])
    yield Cluster(nodes, thriftpy2_lib)
    stop_cluster(nodes)


def test_a_write_read_loop_goes_on_through_kill_9_of_the_node_in_use(make_cluster, caplog):
    caplog.set_level(logging.DEBUG, logger="raftcache")
    cluster = make_cluster()
    leader = cluster.leader()
    # The leader first: the node the client uses is the one whose death hurts most.
    first = f"{leader.host}:{leader.port}"
    addrs = [first] + [a for a in cluster.addrs if a != first]
    with raftcache.Client(addrs) as c:
        for i in range(300):
            if i == 100:
                assert c.node == addrs[0]
                cluster.kill9(cluster.by_addr(c.node))
            key, value = f"loop-{i % 7}", f"value-{i}"
            assert c.put(key, value) is True
            assert c.get(key).value == value, f"iteration {i}"
        assert c.node != addrs[0]
        assert failed_attempts(caplog, "put_with"), "the kill did not fail any write: nothing tested"
        phase("every read returned the value just written")
    cluster.restart(leader)


def test_reads_see_the_clients_own_writes_on_every_node(shared_cluster):
    cluster = shared_cluster
    hits_before = [cluster.stats(n).hits for n in cluster.nodes]
    key = f"ryw-{uuid.uuid4().hex}"
    with raftcache.Client(cluster.addrs, read_from="any") as writer:
        for i in range(150):
            writer.put(key, str(i))
            assert writer.get(key).value == str(i), f"write {i} not read back"
    phase("read_from='any': no stale value; now a client per node with the writer's index")
    hits_after = [cluster.stats(n).hits for n in cluster.nodes]
    # Each node served a share of the 150 reads (round-robin: 50 each when nothing fails).
    assert all(after - before >= 40 for before, after in zip(hits_before, hits_after)), (
        hits_before, hits_after,
    )  # fmt: skip
    readers = [raftcache.Client([a]) for a in cluster.addrs]
    try:
        with raftcache.Client(cluster.addrs[0]) as writer:
            for i in range(50):
                writer.put(key, f"round-{i}")
                for reader in readers:
                    got = reader.get(key, min_index=writer.index).value
                    assert got == f"round-{i}", f"{reader.node} gave {got!r}"
    finally:
        for reader in readers:
            reader.close()


def test_no_wrong_answer_across_timeouts_on_a_paused_node(make_cluster, caplog):
    caplog.set_level(logging.DEBUG, logger="raftcache")
    cluster = make_cluster()
    leader = cluster.leader()
    paused = next(n for n in cluster.nodes if n is not leader)
    first = f"{paused.host}:{paused.port}"
    addrs = [first] + [a for a in cluster.addrs if a != first]
    stop_flag = threading.Event()
    counts = [0] * 4
    errors = []
    with raftcache.Client(addrs, timeout_s=0.5, read_from="any") as c:

        def worker(t):
            key, counter = f"pause-{t}", f"pause-count-{t}"
            try:
                n = 0
                while not stop_flag.is_set():
                    n += 1
                    value = f"{t}-{n}"
                    c.put(key, value)
                    got = c.get(key).value
                    assert got == value, f"thread {t} read {got!r} for {value!r}"
                    assert c.increment(counter) == n, f"thread {t}: increment {n}"
                    counts[t] = n
            except BaseException as e:  # noqa: B036 (reported by the main thread)
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        wait_for("some calls before the pause", lambda: min(counts) >= 5)
        phase(f"SIGSTOP node {paused.node_id} for 3 s (client timeout 0.5 s)")
        paused.proc.send_signal(signal.SIGSTOP)
        before = list(counts)
        try:
            time.sleep(3.0)  # the pause itself is the fault: several client timeouts long
        finally:
            paused.proc.send_signal(signal.SIGCONT)
        phase("SIGCONT: the node answers the calls it held, to closed connections")
        assert min(c - b for c, b in zip(counts, before)) > 0, "no progress on the other nodes"
        hits = cluster.stats(paused).hits
        after = list(counts)
        wait_for(
            "reads on the resumed node, and 20 more rounds per thread",
            lambda: cluster.stats(paused).hits > hits + 20
            and min(c - a for c, a in zip(counts, after)) >= 20,
        )
        stop_flag.set()
        for t in threads:
            t.join(WAIT_S)
    assert not errors, errors
    timeouts = [m for m in caplog.messages if f"{paused.host}:{paused.port}: TimeoutError" in m]
    assert timeouts, "no call timed out on the paused node: nothing tested"


def test_eight_threads_share_one_client(shared_cluster):
    errors = []
    tag = uuid.uuid4().hex
    with raftcache.Client(shared_cluster.addrs, read_from="any") as c:

        def worker(t):
            try:
                for i in range(60):
                    key = f"threads-{tag}-{t}-{i % 5}"
                    value = f"{t}/{i}"
                    c.put(key, value)
                    assert c.get(key).value == value
                    assert c.get_bytes(key) == value.encode()
                    assert c.increment(f"threads-{tag}-{t}-n") == i + 1
                assert c.remove(f"threads-{tag}-{t}-0") is True
                assert c.remove(f"threads-{tag}-{t}-0") is False
            except BaseException as e:  # noqa: B036
                errors.append((t, e))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
    assert not errors, errors


def test_connections_the_node_closed_when_idle_are_replaced(make_cluster):
    cluster = make_cluster(size=1, flags=["--idle-timeout-ms", "300"])
    with raftcache.Client(cluster.addrs) as c:
        c.put("idle", "before")
        assert c.get("idle").value == "before"
        pool = c._router.pools[0]
        idle = list(pool._idle)
        assert idle, "a connection was kept for the next call"
        phase("idle past --idle-timeout-ms: wait until the node has closed the kept connection")
        wait_for("the node closes the idle connection", lambda: all(x.looks_closed() for x in idle), 10)
        c.put("idle", "after")
        assert c.get("idle").value == "after"
        assert all(conn not in pool._idle for conn in idle)


def test_a_pickled_object_round_trips(shared_cluster):
    obj = {"a": 1, "nested": [1.5, None, b"\x00\xff\xfe"], "text": "h\u00e9llo"}
    data = pickle.dumps(obj, protocol=5)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # the point: bytes that are not text
    key = f"pickle-{uuid.uuid4().hex}"
    with raftcache.Client(shared_cluster.addrs, read_from="any") as c:
        assert c.put(key, data) is True
        for _ in range(3):  # every node
            assert pickle.loads(c.get_bytes(key)) == obj
        with pytest.raises(raftcache.InvalidRequest):
            c.get(key)  # not text: only get_bytes reads it (cache.thrift, ByteEntry)


def test_a_thousand_increments_through_two_leader_kills_are_exactly_once(make_cluster, caplog):
    caplog.set_level(logging.DEBUG, logger="raftcache")
    cluster = make_cluster()
    key = f"counter-{uuid.uuid4().hex}"
    gates = [threading.Event(), threading.Event()]
    stops = (40, 70)  # each client waits at these counts for the gate of its phase
    lock = threading.Lock()
    returned, errors = [], []

    def client(i):
        addrs = cluster.addrs[i % 3:] + cluster.addrs[: i % 3]
        try:
            with raftcache.Client(addrs) as c:
                for n in range(100):
                    if n in stops:
                        assert gates[stops.index(n)].wait(WAIT_S * 2), "gate never opened"
                    value = c.increment(key, 1)
                    with lock:
                        returned.append(value)
        except BaseException as e:  # noqa: B036
            errors.append((i, e))

    def progress():
        with lock:
            return len(returned)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for kill, (threshold, gate_at) in enumerate(((150, 400), (550, 700))):
        wait_for(f"{threshold} increments", lambda: progress() >= threshold or errors)
        assert not errors, errors
        leader = cluster.leader()
        failed_before = len(failed_attempts(caplog, "increment_with"))
        at_kill = progress()
        cluster.kill9(leader)
        assert at_kill < gate_at, f"kill {kill + 1} came after the clients' phase ended"
        wait_for(f"all clients at {gate_at}", lambda: progress() >= gate_at or errors)
        assert not errors, errors
        # The clients that used the dead leader retried (with the same ids) elsewhere.
        assert len(failed_attempts(caplog, "increment_with")) > failed_before, f"kill {kill + 1}"
        cluster.restart(leader)
        gates[kill].set()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    with raftcache.Client(cluster.addrs) as c:
        assert c.get(key, linearizable=True).value == "1000"
    assert sorted(returned) == list(range(1, 1001))
    repeated = [r for r in caplog.records if "earlier attempt's answer" in r.getMessage()]
    failed = len(failed_attempts(caplog, "increment_with"))
    phase(f"{failed} failed attempts, {len(repeated)} repeated answers")


def test_a_watcher_on_a_follower_sees_every_change_through_a_leader_kill_and_compaction(make_cluster):
    cluster = make_cluster()
    leader = cluster.leader()
    f1, f2 = [n for n in cluster.nodes if n is not leader]
    order = lambda *ns: [f"{n.host}:{n.port}" for n in ns]  # noqa: E731
    total, batch = 10_000, 100
    expected = {(f"w/{i:05d}", f"v{i}") for i in range(total)}
    events, errors = [], []
    done = threading.Event()
    watcher = raftcache.Client(order(f1, f2, leader))
    watch = watcher.watch("w/", max_events=1000)
    assert watcher.node == order(f1)[0]

    def watch_loop():
        try:
            deadline = time.monotonic() + WAIT_S * 3
            while not done.is_set() and time.monotonic() < deadline:
                events.extend(watch.poll())
                if len(events) >= total:
                    return
        except BaseException as e:  # noqa: B036
            errors.append(e)

    t = threading.Thread(target=watch_loop)
    t.start()
    try:
        with raftcache.Client(order(f2, f1, leader)) as writer:
            for b in range(total // batch):
                if b == total // batch // 3:
                    cluster.kill9(leader)
                if b == 2 * total // batch // 3:
                    phase("log compaction on the live nodes")
                    for n in (f1, f2):
                        assert cluster.admin_snapshot(n) > 0
                    cluster.restart(leader)
                writer.put_many({f"w/{i:05d}": f"v{i}" for i in range(b * batch, (b + 1) * batch)})
                writer.put(f"other/{b}", "not watched")
        t.join(WAIT_S * 3)
    finally:
        done.set()
        t.join(WAIT_S)
        watcher.close()
    assert not errors, errors
    positions = [e.position for e in events]
    assert all(a < b for a, b in zip(positions, positions[1:])), "positions not strictly increasing"
    assert all(e.kind == raftcache.EventKind.PUT for e in events)
    got = [(e.key, e.text) for e in events]
    assert len(got) == total, f"{len(got)} events for {total} writes"
    assert set(got) == expected


def test_a_watch_resumes_on_another_node_when_its_node_dies(make_cluster, caplog):
    caplog.set_level(logging.DEBUG, logger="raftcache")
    cluster = make_cluster()
    leader = cluster.leader()
    watched, other = [n for n in cluster.nodes if n is not leader]
    order = lambda *ns: [f"{n.host}:{n.port}" for n in ns]  # noqa: E731
    total, batch = 2000, 50
    events, errors = [], []
    done = threading.Event()
    watcher = raftcache.Client(order(watched, other, leader))
    watch = watcher.watch("f/", max_events=100)

    def watch_loop():  # through the iterator; a daemon, as it blocks until the next event
        try:
            for event in watch:
                events.append(event)
                if len(events) >= total or done.is_set():
                    return
        except BaseException as e:  # noqa: B036
            errors.append(e)

    t = threading.Thread(target=watch_loop, daemon=True)
    t.start()
    try:
        with raftcache.Client(order(leader, other)) as writer:
            for b in range(total // batch):
                if b == total // batch // 2:
                    # The watcher has everything so far: it waits in a long poll when its node dies.
                    wait_for("the watcher catches up", lambda: len(events) >= b * batch or errors)
                    cluster.kill9(watched)
                writer.put_many({f"f/{i:05d}": f"v{i}" for i in range(b * batch, (b + 1) * batch)})
        t.join(WAIT_S)
    finally:
        done.set()
        t.join(WAIT_S)
        watcher.close()
    assert not errors, errors
    assert failed_attempts(caplog, "watch"), "the watch never failed: nothing tested"
    assert watcher.node == order(other)[0]
    positions = [e.position for e in events]
    assert all(a < b for a, b in zip(positions, positions[1:])), "positions not strictly increasing"
    got = [(e.key, e.text) for e in events]
    assert len(got) == total, f"{len(got)} events for {total} writes"
    assert set(got) == {(f"f/{i:05d}", f"v{i}") for i in range(total)}
    cluster.restart(watched)


def test_a_watcher_behind_the_history_gets_compacted_then_rereads_and_misses_nothing(make_cluster):
    cluster = make_cluster(size=1, flags=["--watch-history-bytes", "4096"])
    with raftcache.Client(cluster.addrs) as c:
        start = c.stats().applied_index
        state = {}
        for b in range(10):  # far more than 4096 bytes of changes
            batch = {f"c/{b}-{i:02d}": f"first-{b}-{i}" + "x" * 20 for i in range(50)}
            c.put_many(batch)
            state.update(batch)
        with pytest.raises(raftcache.Compacted) as compacted:
            next(iter(c.watch("c/", after_index=start)))
        assert compacted.value.oldest_index > start
        phase(f"Compacted (oldest_index {compacted.value.oldest_index}): read the prefix again")
        index, entries = c.read_prefix("c/")
        assert {e.key: e.value for e in entries} == state
        watch = c.watch("c/", after_index=index)
        later = []
        for i in range(30):  # well under 4096 bytes of changes
            key = f"c/later-{i}"
            c.put(key, f"new-{i}")
            later.append((raftcache.EventKind.PUT, key, f"new-{i}"))
            if i % 3 == 0:
                c.remove(f"c/0-{i:02d}")
                later.append((raftcache.EventKind.REMOVE, f"c/0-{i:02d}", None))
        seen = []
        deadline = time.monotonic() + WAIT_S
        while watch.position[0] < c.index:
            assert time.monotonic() < deadline, "the watch never reached the last write"
            seen.extend(watch.poll())
    positions = [e.position for e in seen]
    assert all(a < b for a, b in zip(positions, positions[1:]))
    assert [(e.kind, e.key, e.text) for e in seen] == later


TOKEN = "pytest-package-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_and_a_client_token(make_cluster, certs):
    """A cluster with TLS on both ports and client tokens (as tests/python/test_tls.py)."""
    node_flags, connect = tls_cluster_parts(certs, TOKEN, thrift.CacheService, 10)
    cluster = make_cluster(node_flags=node_flags, connect=connect)
    ca = str(certs / "ca.pem")
    with raftcache.Client(cluster.addrs, tls_ca=ca, token=TOKEN, read_from="any") as c:
        watch = c.watch("tls-")
        assert c.put("tls", "v1") is True
        assert c.get("tls").value == "v1"
        assert c.put("tls-bytes", b"\x00\x01") and c.get_bytes("tls-bytes") == b"\x00\x01"
        assert c.increment("tls-n", 5) == 5
        assert c.remove("tls") is True
        seen = []
        while watch.position[0] < c.index:
            seen.extend((e.kind, e.key, e.value) for e in watch.poll())
        put = raftcache.EventKind.PUT
        assert seen == [(put, "tls-bytes", b"\x00\x01"), (put, "tls-n", b"5")]
    # The name the certificates carry, dialling an address.
    with raftcache.Client(cluster.addrs, tls_ca=ca, token=TOKEN, server_hostname="localhost") as c:
        assert c.get("tls-n", linearizable=True).value == "5"
    phase("refusals: no token, a wrong token, a name the certificate lacks")
    with raftcache.Client(cluster.addrs, tls_ca=ca) as c:
        with pytest.raises(raftcache.InvalidRequest) as refused:
            c.get("tls-n")
        assert "client token" in refused.value.message
    with raftcache.Client(cluster.addrs, tls_ca=ca, token="wrong") as c:
        with pytest.raises(raftcache.Unauthorized):
            c.get("tls-n")
    with raftcache.Client(cluster.addrs, tls_ca=ca, token=TOKEN, server_hostname="elsewhere.example",
                          retry_deadline_s=1.0) as c:  # fmt: skip
        with pytest.raises(raftcache.Unavailable) as unreachable:
            c.get("tls-n")
        assert "certificate verify failed" in str(unreachable.value)


def test_a_watch_resumed_from_the_middle_of_an_entry_repeats_nothing(shared_cluster):
    """One entry holds several changes (a put_many): a watch left after its first event and
    started again from `position` hands out the second next, not the first again."""
    prefix = f"mid-{uuid.uuid4().hex}/"
    with raftcache.Client(shared_cluster.addrs) as c:
        start = c.stats().applied_index
        c.put_many({f"{prefix}{i}": f"v{i}" for i in range(3)})
        first = c.watch(prefix, after_index=start)
        event = next(iter(first))
        assert (event.key, event.offset) == (f"{prefix}0", 1)
        index, offset = first.position
        rest = c.watch(prefix, after_index=index, after_offset=offset)
        after = [next(iter(rest)) for _ in range(2)]
        assert [(e.key, e.offset) for e in after] == [(f"{prefix}1", 2), (f"{prefix}2", 3)]


def test_a_watch_asks_every_node_before_it_gives_up_on_compacted(make_cluster):
    """A node that holds fewer changes (restarted, a snapshot installed, or here a tiny
    --watch-history-bytes) answers Compacted; the watch goes on through a node that holds them,
    and raises Compacted only when every node does."""
    cluster = make_cluster(node_flags=lambda i: ["--watch-history-bytes", "1"] if i == 1 else [])
    short, *others = cluster.addrs
    prefix = f"few-{uuid.uuid4().hex}/"
    with raftcache.Client(cluster.addrs) as c:
        start = c.stats().applied_index
        c.put_many({f"{prefix}{i}": f"v{i}" for i in range(3)})
        index = c.index

    def applied(addr):
        with raftcache.Client([addr]) as one:
            return one.stats().applied_index

    wait_for("every node applied the writes", lambda: all(applied(a) >= index for a in cluster.addrs))
    with raftcache.Client([short] + others) as c:
        watch = c.watch(prefix, after_index=start)
        assert [e.key for e in (next(iter(watch)) for _ in range(3))] == [f"{prefix}{i}" for i in range(3)]
    with raftcache.Client([short]) as c, pytest.raises(raftcache.Compacted):
        next(iter(c.watch(prefix, after_index=start)))
