"""The seed's Python client (thriftpy2) against every published port of the compose cluster.

For each port: a put through it, then a linearizable get of that key through every port, and a
remove. Prints one line per port and exits non-zero on the first failure.

    .venv-test/bin/python cluster/check_ports.py            # ports 9091 9092 9093
    .venv-test/bin/python cluster/check_ports.py 9091 9092  # some of them

(scripts/python-env.sh makes .venv-test.)
"""

import os
import sys
import uuid

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TBufferedTransportFactory

IDL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cache.thrift")
cache = thriftpy2.load(IDL, module_name="cache_thrift")
LINEARIZABLE = cache.ReadOptions(consistency=cache.Consistency.LINEARIZABLE)


def client(port):
    return make_client(cache.CacheService, "127.0.0.1", port, timeout=10000,
                       trans_factory=TBufferedTransportFactory(),
                       proto_factory=TBinaryProtocolFactory())


def check(port, ports):
    key = "check-%d-%s" % (port, uuid.uuid4().hex[:8])
    value = "from %d" % port
    writer = client(port)
    assert writer.put(cache.CacheEntry(key=key, value=value)) is True
    for other in ports:
        got = client(other).get_with(key, LINEARIZABLE).value
        assert got == value, "port %d read %r, expected %r" % (other, got, value)
    assert writer.remove(key) is True
    try:
        client(ports[-1]).get_with(key, LINEARIZABLE)
        raise AssertionError("%s still present after remove" % key)
    except cache.KeyNotFound:
        pass
    status = writer.status()
    print("port %d: node %d (%s, leader %s): put, read on %s, removed: ok"
          % (port, status.id, status.role, status.leader, ",".join(map(str, ports))))


def main():
    ports = [int(p) for p in sys.argv[1:]] or [9091, 9092, 9093]
    for port in ports:
        check(port, ports)


if __name__ == "__main__":
    main()
