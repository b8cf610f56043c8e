"""Every standard client configuration on one port: thriftpy2 and Apache Thrift, each over the
unframed (buffered) and framed transports with the binary and compact protocols, and through
TMultiplexedProtocol with the service name "CacheService". Each runs the same flow, using the
cache API (TTL, batches, conditional writes, counters, scans, stats), against the same node.

See conftest.py for the fixtures and for how to set up and run these tests.
"""

from __future__ import annotations

import contextlib
import sys
import uuid

import pytest

from conftest import IDL, PY_GEN, RPC_TIMEOUT_S

TRANSPORTS = ["buffered", "framed"]
PROTOCOLS = ["binary", "compact"]
SERVICE = "CacheService"


@contextlib.contextmanager
def thriftpy2_client(host, port, transport, protocol, multiplexed):
    import thriftpy2
    from thriftpy2.protocol import (
        TBinaryProtocolFactory,
        TCompactProtocolFactory,
        TMultiplexedProtocolFactory,
    )
    from thriftpy2.thrift import TClient
    from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory, TSocket

    mod = thriftpy2.load(str(IDL), module_name="cache_thrift")
    ms = int(RPC_TIMEOUT_S * 1000)
    sock = TSocket(host, port, socket_timeout=ms, connect_timeout=ms)
    trans_factory = TFramedTransportFactory() if transport == "framed" else TBufferedTransportFactory()
    trans = trans_factory.get_transport(sock)
    proto_factory = TCompactProtocolFactory() if protocol == "compact" else TBinaryProtocolFactory()
    if multiplexed:
        proto_factory = TMultiplexedProtocolFactory(proto_factory, SERVICE)
    client = TClient(mod.CacheService, proto_factory.get_protocol(trans))
    trans.open()
    try:
        yield client, mod
    finally:
        trans.close()


@contextlib.contextmanager
def apache_client(host, port, transport, protocol, multiplexed):
    from thrift.protocol import TBinaryProtocol, TCompactProtocol, TMultiplexedProtocol
    from thrift.transport import TSocket, TTransport

    if str(PY_GEN) not in sys.path:
        sys.path.insert(0, str(PY_GEN))
    from cache import CacheService, ttypes

    sock = TSocket.TSocket(host, port)
    sock.setTimeout(int(RPC_TIMEOUT_S * 1000))
    trans = TTransport.TFramedTransport(sock) if transport == "framed" else TTransport.TBufferedTransport(sock)
    proto = (
        TCompactProtocol.TCompactProtocol(trans)
        if protocol == "compact"
        else TBinaryProtocol.TBinaryProtocol(trans)
    )
    if multiplexed:
        proto = TMultiplexedProtocol.TMultiplexedProtocol(proto, SERVICE)
    client = CacheService.Client(proto)
    trans.open()
    try:
        yield client, ttypes
    finally:
        trans.close()


CLIENTS = {"thriftpy2": thriftpy2_client, "apache": apache_client}


def the_flow(client, types):
    """put, get, get_many, put_many, put_if_absent, compare_and_put, increment, scan,
    remove_many, stats, and a declared exception, on one connection."""
    tag = uuid.uuid4().hex
    key = f"flow-{tag}"
    assert client.put(types.CacheEntry(key=key, value="v1", ttl_ms=60_000)) is True
    entry = client.get(key)
    assert entry.value == "v1"
    assert 0 < entry.ttl_ms <= 60_000

    entries = [types.CacheEntry(key=f"{key}-{i}", value=str(i)) for i in range(5)]
    written = client.put_many(entries)
    assert written.count == 5
    options = types.ReadOptions(min_index=written.index)
    found = client.get_many([f"{key}-{i}" for i in range(6)], options)
    assert [e.value for e in found] == ["0", "1", "2", "3", "4"]

    assert client.put_if_absent(types.CacheEntry(key=key, value="other")) is False
    assert client.compare_and_put(key, "v1", types.CacheEntry(key=key, value="v2")) is True
    assert client.compare_and_put(key, "v1", types.CacheEntry(key=key, value="v3")) is False
    assert client.get(key).value == "v2"

    assert client.increment(f"{key}-n", 5) == 5
    assert client.increment(f"{key}-n", -2) == 3
    with pytest.raises(types.InvalidRequest):
        client.increment(key, 1)

    page = client.scan(f"{key}-", "", 3, types.ReadOptions())
    assert [e.key for e in page] == [f"{key}-0", f"{key}-1", f"{key}-2"]
    removed = client.remove_many([f"{key}-0", f"{key}-1", f"{key}-missing"])
    assert removed.count == 2

    with pytest.raises(types.KeyNotFound):
        client.get(f"{key}-missing")
    stats = client.stats()
    assert stats.keys > 0 and stats.hits > 0 and stats.misses > 0
    assert stats.applied_index >= written.index


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_every_transport_and_protocol_on_one_port(library, transport, protocol, node, apache_lib):
    host, port = node
    with CLIENTS[library](host, port, transport, protocol, multiplexed=False) as (client, types):
        the_flow(client, types)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_multiplexed_clients_reach_the_cache_service(library, protocol, node, apache_lib):
    host, port = node
    with CLIENTS[library](host, port, "buffered", protocol, multiplexed=True) as (client, types):
        the_flow(client, types)
