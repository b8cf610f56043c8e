"""A Client's write session: its client id, the numbering of its writes, and which are still
waiting for an answer (WriteOptions in cache.thrift).

The cluster keeps the answer of each (client_id, seq) and answers a retry with it instead of
applying the write again; `lowest_unanswered` tells it which answers it may forget. Writes of
several threads are numbered from one counter, so they may reach the cluster out of order;
the lowest still waiting, not the latest sent, is what the cluster may forget below.
"""

from __future__ import annotations

import secrets
import threading
from typing import Set

from ._idl import cache as _thrift

_CLIENT_ID_BITS = 63  # a positive i64


def new_client_id() -> int:
    """A random, non-zero, positive 63-bit id."""
    while True:
        client_id = secrets.randbits(_CLIENT_ID_BITS)
        if client_id != 0:
            return client_id


class Session:
    """Numbers writes 1, 2, 3, ... for one client id; thread-safe."""

    def __init__(self) -> None:
        self.client_id = new_client_id()
        self._lock = threading.Lock()
        self._next_seq = 1
        self._waiting: Set[int] = set()

    def begin(self) -> int:
        """The seq of a new write, waiting for its answer until `end`."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._waiting.add(seq)
            return seq

    def end(self, seq: int) -> None:
        """The write `seq` has its answer, or will never be sent again."""
        with self._lock:
            self._waiting.discard(seq)

    def options(self, seq: int) -> "_thrift.WriteOptions":
        """The WriteOptions of one attempt of write `seq` (the same seq on every attempt)."""
        with self._lock:
            assert seq in self._waiting, f"write {seq} sent after its end"
            lowest = min(self._waiting)
        return _thrift.WriteOptions(client_id=self.client_id, seq=seq, lowest_unanswered=lowest)
