"""Which node a call goes to, and what happens when it fails there: the one place of failover.

Every call runs `Router.call`: it tries a node; on a transport error, a timeout or an
Unavailable answer it moves on to the next node and tries again, with a short pause after each
full round of failures, until the Client's retry deadline. A declared answer (KeyNotFound,
InvalidRequest, CacheFull, Unauthorized) ends the call at once; so does Compacted, once every
node gave it (a node that restarted or installed a snapshot holds fewer changes than the others,
so a watch asks them all before it gives up). The caller makes the
arguments again for each attempt, so a write carries its own WriteOptions on every attempt (the
same client_id and seq).

Calls share a "node in use": it moves on when a call fails there. Calls made with `rotate`
(reads with read_from="any") start at the next node round-robin instead. A node that failed
at the transport level is avoided for SUSPECT_S unless every node is. Each failed attempt is
logged at DEBUG on the "raftcache" logger.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from thriftpy2.thrift import TApplicationException, TException

from ._idl import cache as _thrift
from .connection import TRANSPORT_ERRORS, NodePool, Settings, is_timeout
from .errors import Compacted, ServerError, Unauthorized, final_error

log = logging.getLogger("raftcache")

SUSPECT_S = 2.0  # how long a node that failed at the transport level is passed over
BACKOFF_FIRST_S = 0.05  # pause after the first full round of failures; doubles each round
BACKOFF_MAX_S = 1.0


class GaveUp(Exception):
    """The retry deadline passed. `maybe_sent`: some attempt may have reached a node (its
    outcome is unknown for a write); `last`: the last failure."""

    def __init__(self, last: Optional[BaseException], maybe_sent: bool, attempts: int):
        super().__init__(f"no answer after {attempts} attempts; last: {describe(last)}")
        self.last = last
        self.maybe_sent = maybe_sent
        self.attempts = attempts


class _Failed(Exception):
    """One attempt failed in a way worth another: `error` is why; `sent`: the request may have
    reached the node; `stale_connection`: a reused connection broke (not a timeout)."""

    def __init__(self, error: BaseException, sent: bool, stale_connection: bool):
        super().__init__(describe(error))
        self.error = error
        self.sent = sent
        self.stale_connection = stale_connection


def describe(exc: Optional[BaseException]) -> str:
    """A one-line account of a failure, with the TLS or socket error thriftpy2 wraps."""
    if exc is None:
        return "none"
    text = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(exc, _thrift.Unavailable):
        text += f" ({type(cause).__name__}: {cause})"
    return text


def parse_address(addr: str) -> Tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"node address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


class Router:
    def __init__(self, addrs: List[str], settings: Settings, retry_deadline_s: float, max_idle: int):
        if not addrs:
            raise ValueError("no node addresses")
        self.pools = [NodePool(*parse_address(a), settings, max_idle) for a in addrs]
        self.retry_deadline_s = retry_deadline_s
        self._lock = threading.Lock()
        self._current = 0
        self._suspect_until = [0.0] * len(self.pools)
        self._round_robin = itertools.count()

    @property
    def current(self) -> int:
        """The index of the node in use."""
        return self._current

    def call(
        self,
        method: str,
        make_args: Callable[[], Tuple[Any, ...]],
        rotate: bool = False,
        timeout_s: Optional[float] = None,
    ) -> Any:
        """The answer of `method(*make_args())` from the first node that gives one; see the
        module doc. Raises this package's errors for final answers, GaveUp at the deadline."""
        deadline = time.monotonic() + self.retry_deadline_s
        node = self._first(rotate)
        last: Optional[BaseException] = None
        maybe_sent = False
        attempts = failures = 0
        fresh_retry_done = False
        compacted: dict = {}  # node -> its Compacted
        while time.monotonic() < deadline:
            attempts += 1
            pool = self.pools[node]
            try:
                result = self._attempt(pool, method, make_args, timeout_s)
            except Compacted as e:
                compacted[node] = e
                if len(compacted) == len(self.pools):
                    raise min(compacted.values(), key=lambda c: c.oldest_index) from None
                log.debug("%s: %s:%s no longer holds those changes; asking the next node",
                          method, pool.host, pool.port)  # fmt: skip
                node = next(i for i in range(node + 1, node + 1 + len(self.pools))
                            if i % len(self.pools) not in compacted) % len(self.pools)  # fmt: skip
                continue
            except _Failed as f:
                last, maybe_sent = f.error, maybe_sent or f.sent
                if f.stale_connection and not fresh_retry_done:
                    # Most likely the node closed the idle connection just as we sent: the
                    # node is fine, try it once more on a new connection.
                    fresh_retry_done = True
                    log.debug("%s: reused connection to %s:%s failed (%s); again on a new one",
                              method, pool.host, pool.port, describe(last))  # fmt: skip
                    continue
            else:
                if attempts > 1:
                    log.debug("%s answered by %s:%s after %d attempts",
                              method, pool.host, pool.port, attempts)  # fmt: skip
                return result
            failures += 1
            log.debug("%s failed on %s:%s: %s", method, pool.host, pool.port, describe(last))
            node = self._failed(node, rotate, suspect=not isinstance(last, _thrift.Unavailable))
            fresh_retry_done = False
            self._pause(failures, deadline)
        raise GaveUp(last, maybe_sent, attempts)

    @staticmethod
    def _attempt(pool: NodePool, method: str, make_args, timeout_s: Optional[float]) -> Any:
        """One attempt on one node: its answer, a final error, or _Failed (try again)."""
        try:
            conn, reused = pool.take()
        except TRANSPORT_ERRORS as e:
            raise _Failed(e, sent=False, stale_connection=False) from None
        except _thrift.Unauthorized as e:
            raise Unauthorized(e.message) from None
        except TApplicationException as e:
            raise ServerError(f"{pool.host}:{pool.port} refused the connection: {e}") from None
        try:
            result = conn.call(method, make_args(), timeout_s)
        except _thrift.Unavailable as e:
            pool.give_back(conn)  # a whole answer: the connection is fine
            raise _Failed(e, sent=True, stale_connection=False) from None
        except TApplicationException as e:
            conn.close()
            raise ServerError(f"{pool.host}:{pool.port} answered {method}: {e}") from None
        except TRANSPORT_ERRORS as e:
            conn.close()  # never reused: its answer may still come
            raise _Failed(e, sent=True, stale_connection=reused and not is_timeout(e)) from None
        except TException as e:
            pool.give_back(conn)
            final = final_error(e)
            if final is None:
                raise ServerError(f"{pool.host}:{pool.port} answered {method}: {e!r}") from None
            raise final from None
        except BaseException:
            conn.close()
            raise
        pool.give_back(conn)
        return result

    def _first(self, rotate: bool) -> int:
        if not rotate:
            return self._current
        start = next(self._round_robin) % len(self.pools)
        with self._lock:
            return self._healthy_from(start, time.monotonic())

    def _failed(self, node: int, rotate: bool, suspect: bool) -> int:
        """Notes a failure on `node`; returns the node for this call's next attempt."""
        now = time.monotonic()
        with self._lock:
            if suspect:
                self._suspect_until[node] = now + SUSPECT_S
            nxt = self._healthy_from(node + 1, now)
            if self._current == node:
                self._current = nxt
            return nxt if rotate else self._current

    def _healthy_from(self, start: int, now: float) -> int:
        """The first node from `start` on (cyclically) not under suspicion; `start` if all are."""
        n = len(self.pools)
        for k in range(n):
            i = (start + k) % n
            if self._suspect_until[i] <= now:
                return i
        return start % n

    def _pause(self, failures: int, deadline: float) -> None:
        """After each full round of failed nodes, wait a little longer (bounded) before the next."""
        n = len(self.pools)
        if failures % n:
            return
        pause = min(BACKOFF_FIRST_S * 2 ** (failures // n - 1), BACKOFF_MAX_S)
        time.sleep(max(0.0, min(pause, deadline - time.monotonic())))

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
