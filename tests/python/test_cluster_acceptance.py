"""Issue 6's acceptance, tried as a new user would: thriftpy2 against a real 3-node cluster.

TTL visible on all nodes then on none, counted in stats, keys identical; racing compare_and_put
through two nodes (one winner); 1,000 increments by 10 clients through different nodes;
put_many then get_with(min_index) on every node; capacity with --eviction lru and none.
Waits poll with deadlines; nothing asserts a time.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from conftest import start_cluster, stop_cluster

DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, thriftpy2_lib):
    nodes = start_cluster(tmp_path_factory.mktemp("cluster"), thriftpy2_lib, 3, ["--expiry-interval-ms", "100"])
    try:
        yield [(n.host, n.port) for n in nodes]
    finally:
        stop_cluster(nodes)


def until(what, check):
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.05)


def all_keys(lib, addr, prefix):
    with lib.connect(*addr) as c:
        return [(e.key, e.value) for e in c.scan(prefix, "", 1000, lib.ReadOptions())]


def test_a_ttl_key_is_readable_everywhere_then_nowhere_and_counted(thriftpy2_lib, cluster):
    lib = thriftpy2_lib
    tag = uuid.uuid4().hex
    key = f"ttl-{tag}"
    started_ms = time.time() * 1000
    with lib.connect(*cluster[0]) as c:
        c.put(lib.CacheEntry(key=key, value="soon gone", ttl_ms=1000))
        c.put(lib.CacheEntry(key=f"ttl-{tag}-kept", value="kept"))
        before = c.stats().expired
    linearizable = lib.ReadOptions(consistency=lib.Consistency.LINEARIZABLE)
    for addr in cluster:
        with lib.connect(*addr) as c:
            try:
                assert c.get_with(key, linearizable).value == "soon gone"
            except lib.KeyNotFound:
                # Only allowed once the ttl has certainly passed (a very slow machine).
                assert time.time() * 1000 >= started_ms + 1000, f"{addr} lost the key early"

    def gone_everywhere():
        for addr in cluster:
            with lib.connect(*addr) as c:
                try:
                    c.get(key)
                    return False
                except lib.KeyNotFound:
                    pass
        return True

    until("the key expires on every node", gone_everywhere)

    def counted_everywhere():
        for addr in cluster:
            with lib.connect(*addr) as c:
                if c.stats().expired <= before:
                    return False
        return True

    until("stats count the expired key on every node", counted_everywhere)
    until(
        "every node holds the same keys",
        lambda: len({tuple(all_keys(lib, a, f"ttl-{tag}")) for a in cluster}) == 1,
    )
    assert all_keys(lib, cluster[0], f"ttl-{tag}") == [(f"ttl-{tag}-kept", "kept")]


def test_racing_compare_and_put_through_two_nodes_has_one_winner(thriftpy2_lib, cluster):
    lib = thriftpy2_lib
    key = f"cas-{uuid.uuid4().hex}"
    with lib.connect(*cluster[0]) as c:
        c.put(lib.CacheEntry(key=key, value="0"))
    results = {}
    start = threading.Barrier(2)

    def racer(i):
        with lib.connect(*cluster[i]) as c:
            start.wait()
            results[i] = c.compare_and_put(key, "0", lib.CacheEntry(key=key, value=f"from-{i}"))

    threads = [threading.Thread(target=racer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True], results
    winner = next(i for i, won in results.items() if won)
    linearizable = lib.ReadOptions(consistency=lib.Consistency.LINEARIZABLE)
    with lib.connect(*cluster[0]) as c:
        assert c.get_with(key, linearizable).value == f"from-{winner}"


def test_a_thousand_increments_by_ten_clients_end_at_a_thousand(thriftpy2_lib, cluster):
    lib = thriftpy2_lib
    key = f"counter-{uuid.uuid4().hex}"
    seen = []
    errors = []

    def client(i):
        try:
            with lib.connect(*cluster[i % 3]) as c:
                for _ in range(100):
                    seen.append(c.increment(key, 1))
        except Exception as e:  # reported below, with the thread's node
            errors.append((i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(seen) == list(range(1, 1001))
    linearizable = lib.ReadOptions(consistency=lib.Consistency.LINEARIZABLE)
    for addr in cluster:
        with lib.connect(*addr) as c:
            assert c.get_with(key, linearizable).value == "1000"


def test_put_many_then_min_index_reads_see_the_batch_on_every_node(thriftpy2_lib, cluster):
    lib = thriftpy2_lib
    tag = uuid.uuid4().hex
    keys = [f"many-{tag}-{i:03}" for i in range(100)]
    with lib.connect(*cluster[1]) as c:
        written = c.put_many([lib.CacheEntry(key=k, value=k[-3:]) for k in keys])
    assert written.count == 100
    options = lib.ReadOptions(min_index=written.index)
    for addr in cluster:
        with lib.connect(*addr) as c:
            assert c.get_with(keys[-1], options).value == "099"
            assert [e.value for e in c.get_many(keys, options)] == [k[-3:] for k in keys]


@pytest.mark.parametrize("eviction", ["lru", "none"])
def test_capacity(thriftpy2_lib, tmp_path, eviction):
    lib = thriftpy2_lib
    max_bytes = 10_000
    flags = ["--max-bytes", str(max_bytes), "--eviction", eviction]
    nodes = start_cluster(tmp_path, lib, 3, flags)
    try:
        addrs = [(n.host, n.port) for n in nodes]
        # The readiness probes' key is held too; the values below need twice the cap.
        full = None
        with lib.connect(*addrs[0]) as c:
            for i in range(200):
                try:
                    c.put(lib.CacheEntry(key=f"cap-{i:03}", value="v" * 93))
                except Exception as e:  # the declared CacheFull, checked by name below
                    full = (i, e)
                    break
        if eviction == "none":
            assert full is not None, "a write past the cap fails with CacheFull"
            assert type(full[1]).__name__ == "CacheFull", repr(full[1])
            assert 0 < full[0] < 200
        else:
            assert full is None, f"lru makes room: {full}"
        # Rewriting a held key at its size never needs room: its index is one every node
        # must reach before the comparison.
        with lib.connect(*addrs[0]) as c:
            index = c.put_many([lib.CacheEntry(key="cap-199" if eviction == "lru" else "cap-000", value="v" * 93)]).index
        options = lib.ReadOptions(min_index=index)
        contents = []
        for addr in addrs:
            with lib.connect(*addr) as c:
                c.get_many(["cap-000"], options)  # waits until this node applied `index`
                stats = c.stats()
                assert stats.bytes <= max_bytes, stats
                contents.append(all_keys(lib, addr, "cap-"))
        assert all(c == contents[0] for c in contents), "every node holds the same keys"
    finally:
        stop_cluster(nodes)
