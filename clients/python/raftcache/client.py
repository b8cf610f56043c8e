"""`Client`: the cache as a user sees it, over every node of a cluster.

Reads and writes go through the Router (failover and retries, one place). What this module
adds: the WriteOptions of each write (its Session's client_id and seq, the same on every
attempt, so a retried write is applied once), the highest log index the client has seen (sent
as ReadOptions.min_index, so a read on any node sees the client's own writes), and the seed's
shapes (`get` returns an entry, `put` True, `remove` a bool).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ._idl import cache as _thrift
from .connection import Settings, make_ssl_context
from .errors import OutcomeUnknown, Unavailable
from .router import GaveUp, Router, describe
from .session import Session
from .watch import Watch

CacheEntry = _thrift.CacheEntry
ByteEntry = _thrift.ByteEntry

DEFAULT_TIMEOUT_S = 10.0  # above the server's 5 s request deadline (--request-deadline-ms)
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_RETRY_DEADLINE_S = 30.0
DEFAULT_MAX_IDLE_PER_NODE = 16
DEFAULT_WATCH_TIMEOUT_MS = 4000  # the server caps it at its request deadline
DEFAULT_WATCH_MAX_EVENTS = 1000  # the server caps it at --max-scan-items
SCAN_PAGE = 1000

Value = Union[str, bytes, bytearray, memoryview]

log = logging.getLogger("raftcache")


class Client:
    """A thread-safe client of a raftcache cluster. See clients/python/README.md.

    nodes: "host:port" addresses of the nodes' client ports (one string or a list).
    timeout_s: how long one call waits for its answer before the connection is dropped and
        the call tried on the next node; keep it above the server's request deadline (5 s).
    retry_deadline_s: how long a call keeps trying nodes before it gives up (Unavailable for
        a read, OutcomeUnknown for a write that may have been applied).
    read_from: "current" (reads go to the node in use, like writes) or "any" (reads rotate
        over all nodes; each still sees this client's own writes).
    token: the client token of nodes started with --client-auth token.
    tls, tls_ca, tls_cert, tls_key, server_hostname: TLS to the client port (tls_ca or
        tls_cert turns it on; tls=True alone trusts the system's CAs).
    """

    def __init__(
        self,
        nodes: Union[str, Sequence[str]],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        read_from: str = "current",
        token: Optional[str] = None,
        tls: bool = False,
        tls_ca: Optional[str] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        server_hostname: Optional[str] = None,
        max_idle_per_node: int = DEFAULT_MAX_IDLE_PER_NODE,
    ):
        if read_from not in ("current", "any"):
            raise ValueError(f"read_from must be 'current' or 'any', not {read_from!r}")
        addrs = [nodes] if isinstance(nodes, str) else list(nodes)
        settings = Settings(
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            token=token,
            ssl_context=make_ssl_context(tls, tls_ca, tls_cert, tls_key),
            server_hostname=server_hostname,
        )
        self._router = Router(addrs, settings, retry_deadline_s, max_idle_per_node)
        self._timeout_s = timeout_s
        self._rotate_reads = read_from == "any"
        self._session = Session()
        self._index_lock = threading.Lock()
        self._index = 0

    # ---------------------------------------------------------------- lifecycle and state

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes every connection (idle ones now, lent ones as their calls end)."""
        self._router.close()

    @property
    def client_id(self) -> int:
        """The random id under which the cluster recognises this client's retried writes."""
        return self._session.client_id

    @property
    def index(self) -> int:
        """The highest log index of a write this client has seen answered (0: none yet). Pass it
        as another client's `min_index` to let that client read these writes."""
        return self._index

    @property
    def node(self) -> str:
        """The "host:port" of the node in use."""
        pool = self._router.pools[self._router.current]
        return f"{pool.host}:{pool.port}"

    # ---------------------------------------------------------------- reads

    def get(self, key: str, *, linearizable: bool = False, min_index: Optional[int] = None):
        """The entry of `key` (.key, .value as str, .ttl_ms left); KeyNotFound if absent."""
        return self._read("get_with", lambda o: (key, o), linearizable, min_index)

    def get_bytes(
        self, key: str, *, linearizable: bool = False, min_index: Optional[int] = None
    ) -> bytes:
        """The value of `key` as bytes, whatever wrote it; KeyNotFound if absent."""
        entry = self._read("get_bytes", lambda o: (key, o), linearizable, min_index)
        value = entry.value
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)

    def get_many(
        self, keys: Sequence[str], *, linearizable: bool = False, min_index: Optional[int] = None
    ) -> list:
        """The entries of `keys` that exist, in request order."""
        return self._read("get_many", lambda o: (list(keys), o), linearizable, min_index)

    def scan(
        self, prefix: str = "", start_after: str = "", limit: int = SCAN_PAGE, *,
        linearizable: bool = False, min_index: Optional[int] = None,
    ) -> list:  # fmt: skip
        """At most `limit` entries with `prefix` after `start_after`, in key order (the node caps
        `limit` at its --max-scan-items)."""
        return self._read(
            "scan", lambda o: (prefix, start_after, limit, o), linearizable, min_index
        )

    def read_prefix(self, prefix: str) -> Tuple[int, list]:
        """Every entry under `prefix`, and a log index to watch from: `applied_index` of the node
        in use, noted before the scan, which reads every page at that index or later. Replaying
        the changes after it over these entries gives the current state (what to do after a
        watch's Compacted)."""
        applied = self.stats().applied_index
        entries: list = []
        start_after = ""
        while True:
            page = self.scan(prefix, start_after, SCAN_PAGE, min_index=applied)
            if not page:
                return applied, entries
            entries.extend(page)
            start_after = page[-1].key

    def stats(self):
        """The counters of the node in use (CacheStats: keys, bytes, ..., applied_index)."""
        return self._call_read("stats", lambda: (), rotate=False)

    def status(self):
        """The node in use's view of the cluster (NodeStatus: role, leader, members, ...)."""
        return self._call_read("status", lambda: (), rotate=False)

    # ---------------------------------------------------------------- writes

    def put(
        self, key_or_entry: Union[str, Any], value: Optional[Value] = None, ttl_ms: Optional[int] = None
    ) -> bool:
        """Writes a key: put("k", "v"), put("k", b"bytes"), put(CacheEntry(...)) or
        put(ByteEntry(...)); `ttl_ms` expires it. True once written (the seed's answer)."""
        entry = _entry(key_or_entry, value, ttl_ms)
        if isinstance(entry, ByteEntry):
            self._write("put_bytes", lambda o: (entry, o))
        else:
            self._write("put_with", lambda o: (entry, o))
        return True

    def put_many(
        self, entries: Union[Dict[str, str], Iterable[Any]], ttl_ms: Optional[int] = None
    ) -> int:
        """Writes several text entries (a dict, or CacheEntry objects) in one log entry, all or
        nothing; returns how many."""
        if isinstance(entries, dict):
            batch = [_entry(k, v, ttl_ms) for k, v in entries.items()]
        else:
            batch = [_entry(e, None, ttl_ms) for e in entries]
        if any(isinstance(e, ByteEntry) for e in batch):
            raise TypeError("put_many takes text values; write bytes with put")
        return self._write("put_many_with", lambda o: (batch, o)).count

    def remove(self, key: str) -> bool:
        """Removes a key; True when it existed."""
        return self._write("remove_with", lambda o: (key, o)).count == 1

    def remove_many(self, keys: Sequence[str]) -> int:
        """Removes keys in one log entry, all or nothing; returns how many existed."""
        batch = list(keys)
        return self._write("remove_many_with", lambda o: (batch, o)).count

    def put_if_absent(
        self, key_or_entry: Union[str, Any], value: Optional[str] = None, ttl_ms: Optional[int] = None
    ) -> bool:
        """Writes only if the key is absent (or expired); True when it wrote."""
        entry = _text_entry(key_or_entry, value, ttl_ms)
        return self._write("put_if_absent_with", lambda o: (entry, o)).count == 1

    def compare_and_put(
        self, key: str, expected_value: str, value: str, ttl_ms: Optional[int] = None
    ) -> bool:
        """Writes `value` only if the key holds exactly `expected_value`; True when it wrote."""
        entry = _text_entry(key, value, ttl_ms)
        return self._write("compare_and_put_with", lambda o: (key, expected_value, entry, o)).count == 1

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds `delta` to the key's decimal integer value (absent: 0); returns the sum."""
        return self._write("increment_with", lambda o: (key, delta, o)).value

    # ---------------------------------------------------------------- watch

    def watch(
        self, prefix: str, after_index: Optional[int] = None, *, after_offset: int = 0,
        max_events: int = DEFAULT_WATCH_MAX_EVENTS, timeout_ms: int = DEFAULT_WATCH_TIMEOUT_MS,
    ) -> Watch:  # fmt: skip
        """The changes to keys under `prefix` after (after_index, after_offset), as an iterator
        of Event (see watch.py). after_index None: from the node's applied index now."""
        if after_index is None:
            after_index, after_offset = self.stats().applied_index, 0
        return Watch(self, prefix, after_index, after_offset, max_events, timeout_ms)

    def _watch_call(
        self, prefix: str, after_index: int, after_offset: int, max_events: int, timeout_ms: int
    ):
        # The node may hold the call for timeout_ms before it answers.
        timeout_s = self._timeout_s + timeout_ms / 1000
        args = (prefix, after_index, max_events, timeout_ms, after_offset)
        return self._call_read("watch", lambda: args, rotate=False, timeout_s=timeout_s)

    # ---------------------------------------------------------------- the calls

    def _read(
        self, method: str, make_args: Callable[[Any], tuple], linearizable: bool,
        min_index: Optional[int],
    ):  # fmt: skip
        def args() -> tuple:
            floor = max(self._index, min_index or 0)
            consistency = _thrift.Consistency.LINEARIZABLE if linearizable else _thrift.Consistency.LOCAL
            return make_args(_thrift.ReadOptions(consistency=consistency, min_index=floor or None))

        return self._call_read(method, args, rotate=self._rotate_reads)

    def _call_read(self, method: str, make_args: Callable[[], tuple], rotate: bool, timeout_s=None):
        try:
            return self._router.call(method, make_args, rotate=rotate, timeout_s=timeout_s)
        except GaveUp as e:
            raise Unavailable(f"{method}: {e}") from e.last

    def _write(self, method: str, make_args: Callable[[Any], tuple]):
        """The WriteResult of a write, sent with the same seq on every attempt."""
        seq = self._session.begin()
        try:
            result = self._router.call(method, lambda: make_args(self._session.options(seq)))
        except GaveUp as e:
            if not e.maybe_sent:
                raise Unavailable(f"{method}: no node could be reached: {describe(e.last)}") from e.last
            raise OutcomeUnknown(
                f"{method}: outcome unknown (client_id {self.client_id}, seq {seq}): {e}",
                self.client_id, seq, e.last,
            ) from e.last  # fmt: skip
        finally:
            self._session.end(seq)
        if result.repeated:
            log.debug("%s seq %d: an earlier attempt's answer (applied once)", method, seq)
        self._saw_index(result.index)
        return result

    def _saw_index(self, index: int) -> None:
        with self._index_lock:
            if index > self._index:
                self._index = index


def _entry(key_or_entry: Any, value: Optional[Value], ttl_ms: Optional[int]):
    """A CacheEntry for text, a ByteEntry for bytes, from put's arguments."""
    if isinstance(key_or_entry, (CacheEntry, ByteEntry)):
        if value is not None or ttl_ms is not None:
            raise TypeError("give either an entry, or a key, a value and a ttl_ms")
        return key_or_entry
    if not isinstance(key_or_entry, str):
        raise TypeError(f"key must be str, not {type(key_or_entry).__name__}")
    if isinstance(value, str):
        return CacheEntry(key=key_or_entry, value=value, ttl_ms=ttl_ms)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ByteEntry(key=key_or_entry, value=bytes(value), ttl_ms=ttl_ms)
    raise TypeError(f"value must be str or bytes, not {type(value).__name__}")


def _text_entry(key_or_entry: Any, value: Optional[str], ttl_ms: Optional[int]):
    entry = _entry(key_or_entry, value, ttl_ms)
    if isinstance(entry, ByteEntry):
        raise TypeError("this write takes a text value")
    return entry

