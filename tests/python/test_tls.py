"""The README's TLS clients against a 3-node cluster with TLS on both ports and client tokens.

The certificates come from `cluster/make-certs.sh` (openssl), as a user trying TLS would make
them. Every node serves its client port over TLS (`--tls-cert`, `--tls-key`), requires the
client token (`--client-auth token`), and talks to the others over mutual TLS (`--peer-tls-*`).
The seed's flow (authenticate, then put, get, a missing key, remove) runs from thriftpy2
(`make_client(..., cafile=...)`) and from Apache Thrift (`TSSLSocket`), each on a different node,
so that writes are forwarded between nodes over peer TLS. A client without the token is refused
with InvalidRequest, a plaintext client gets an exception that says the port speaks TLS, and a
client of another CA is refused.
"""

from __future__ import annotations

import ssl

import pytest

from conftest import REPO, RPC_TIMEOUT_S, make_certs, start_cluster, stop_cluster, tls_cluster_parts

TOKEN = "pytest-client-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, thriftpy2_lib, certs):
    import thriftpy2

    cache = thriftpy2.load(str(REPO / "cache.thrift"), module_name="cache_thrift")
    node_flags, connect = tls_cluster_parts(certs, TOKEN, cache.CacheService, RPC_TIMEOUT_S)
    nodes = start_cluster(
        tmp_path_factory.mktemp("tls"), thriftpy2_lib, 3, [], node_flags=node_flags, connect=connect
    )
    yield nodes
    stop_cluster(nodes)


def test_thriftpy2_runs_the_seed_flow_over_tls(tls_cluster, certs):
    import thriftpy2
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TBufferedTransportFactory

    cache = thriftpy2.load(str(REPO / "cache.thrift"), module_name="cache_thrift")
    node = tls_cluster[1]
    # As in the README: the CA of the nodes' certificates, and a timeout above the server's
    # request deadline (5 s).
    client = make_client(
        cache.CacheService, node.host, node.port, cafile=str(certs / "ca.pem"),
        trans_factory=TBufferedTransportFactory(), proto_factory=TBinaryProtocolFactory(),
        timeout=10_000,
    )  # fmt: skip
    try:
        with pytest.raises(cache.InvalidRequest) as refused:
            client.get("tls_key")
        assert "client token" in refused.value.message
        client.authenticate(TOKEN)  # once per connection
        assert client.put(cache.CacheEntry(key="tls_key", value="tls_value")) is True
        assert client.get("tls_key").value == "tls_value"
        with pytest.raises(cache.KeyNotFound):
            client.get("tls_missing")
        opts = cache.ReadOptions(consistency=cache.Consistency.LINEARIZABLE)
        assert client.get_with("tls_key", opts).value == "tls_value"
        assert client.remove("tls_key") is True
    finally:
        client.close()


def test_apache_thrift_runs_the_seed_flow_over_tls(tls_cluster, certs, apache_lib):
    from cache import CacheService
    from cache.ttypes import CacheEntry, KeyNotFound
    from thrift.protocol import TBinaryProtocol
    from thrift.transport import TSSLSocket, TTransport

    node = tls_cluster[2]
    sock = TSSLSocket.TSSLSocket(node.host, node.port, ca_certs=str(certs / "ca.pem"))
    sock.setTimeout(10_000)
    transport = TTransport.TBufferedTransport(sock)
    client = CacheService.Client(TBinaryProtocol.TBinaryProtocol(transport))
    transport.open()
    try:
        client.authenticate(TOKEN)
        assert client.put(CacheEntry(key="apache_tls", value="v1")) is True
        assert client.get("apache_tls").value == "v1"
        with pytest.raises(KeyNotFound):
            client.get("apache_tls_missing")
        assert client.remove("apache_tls") is True
    finally:
        transport.close()


def test_a_plaintext_client_is_told_the_port_speaks_tls(tls_cluster, thriftpy2_lib):
    from thriftpy2.thrift import TApplicationException

    node = tls_cluster[0]
    with thriftpy2_lib.connect(node.host, node.port) as client:
        with pytest.raises(TApplicationException) as refused:
            client.get("anything")
    assert "speaks TLS" in str(refused.value)


def test_a_client_of_another_ca_refuses_the_node(tls_cluster, tmp_path):
    import thriftpy2
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TTransportException

    other = tmp_path / "other"
    make_certs(other)
    cache = thriftpy2.load(str(REPO / "cache.thrift"), module_name="cache_thrift")
    node = tls_cluster[0]
    with pytest.raises(TTransportException) as refused:
        make_client(
            cache.CacheService, node.host, node.port, cafile=str(other / "ca.pem"), timeout=10_000
        )
    # thriftpy2 reports "Could not connect"; the TLS error underneath says why.
    cause = refused.value.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
    assert "certificate verify failed" in str(cause)
