"""raftcache: a Python client of a raftcache cluster (Thrift, thriftpy2).

    import raftcache
    with raftcache.Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as cache:
        cache.put("k", "v")
        cache.get("k").value

Layout: client.py (the API, write sessions, read-your-writes), router.py (which node, failover,
retries), connection.py (one connection, the per-node pool, TLS and tokens), session.py
(client_id and seq of writes), watch.py (watch iterator and events), errors.py (exceptions),
_idl.py (loads the cache.thrift shipped here). See README.md beside this package.
"""

from ._idl import cache as thrift
from .client import ByteEntry, CacheEntry, Client
from .errors import (
    CacheFull,
    Compacted,
    Error,
    InvalidRequest,
    KeyNotFound,
    OutcomeUnknown,
    ServerError,
    Unauthorized,
    Unavailable,
)
from .watch import Event, EventKind, Watch

__version__ = "0.1.0"

__all__ = [
    "ByteEntry",
    "CacheEntry",
    "CacheFull",
    "Client",
    "Compacted",
    "Error",
    "Event",
    "EventKind",
    "InvalidRequest",
    "KeyNotFound",
    "OutcomeUnknown",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "Watch",
    "thrift",
]
