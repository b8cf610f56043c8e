"""`Client.watch`: the changes to keys under a prefix, as an iterator over long polls.

Positions (index, offset) are log positions, the same on every replica, so a watch that loses
its node resumes from the same position on another one: nothing missed, nothing repeated. A
node keeps only recent changes (`--watch-history-bytes`, since it started or installed a
snapshot); a position older than that raises Compacted, and the caller starts over from a fresh
read of the prefix (`Client.read_prefix`).
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Deque, Iterator, List, Optional, Tuple

from ._idl import cache as _thrift

if TYPE_CHECKING:
    from .client import Client


class EventKind(enum.IntEnum):
    """What happened to the key (cache.thrift's EventKind)."""

    PUT = _thrift.EventKind.PUT
    REMOVE = _thrift.EventKind.REMOVE
    EXPIRE = _thrift.EventKind.EXPIRE
    EVICT = _thrift.EventKind.EVICT


@dataclass(frozen=True)
class Event:
    """One change of one key, at log position (index, offset)."""

    index: int
    offset: int
    kind: EventKind
    key: str
    # PUT: the new value's bytes; None otherwise.
    value: Optional[bytes] = None
    # PUT with a TTL: when the key expires (ms since the Unix epoch, the leader's clock).
    expires_at_ms: Optional[int] = None

    @property
    def position(self) -> Tuple[int, int]:
        return (self.index, self.offset)

    @property
    def text(self) -> Optional[str]:
        """The value decoded as UTF-8 (what `put` of a str wrote)."""
        return None if self.value is None else self.value.decode("utf-8")

    @classmethod
    def from_thrift(cls, e) -> "Event":
        value = e.value
        if isinstance(value, str):  # thriftpy2 may hand back text for a binary field
            value = value.encode("utf-8")
        return cls(e.index, e.offset, EventKind(e.kind), e.key, value, e.expires_at_ms)


class Watch:
    """Iterates over the changes after a position, forever; `poll` for one round at a time.
    Not for sharing between threads (it holds one position)."""

    def __init__(
        self, client: "Client", prefix: str, after_index: int, after_offset: int,
        max_events: int, timeout_ms: int,
    ):  # fmt: skip
        self._client = client
        self.prefix = prefix
        self._index = after_index
        self._offset = after_offset
        self.max_events = max_events
        self.timeout_ms = timeout_ms
        # Iteration: the rest of the last poll's events, and its resume position.
        self._pending: Deque[Event] = collections.deque()
        self._batch_end = (after_index, after_offset)

    @property
    def position(self) -> Tuple[int, int]:
        """(index, offset) after the last change handed out (pass them as after_index and
        after_offset to resume in another watch)."""
        return (self._index, self._offset)

    def poll(self) -> List[Event]:
        """One long poll: waits up to timeout_ms for changes after `position`, returns them (at
        most max_events, possibly none) and moves `position` past them. Fails over like every
        read; raises Compacted when the node no longer holds the changes after `position`."""
        self._pending.clear()  # they come again: `position` is before them
        result = self._client._watch_call(
            self.prefix, self._index, self._offset, self.max_events, self.timeout_ms
        )
        events = [Event.from_thrift(e) for e in result.events]
        self._index, self._offset = result.resume_index, result.resume_offset
        return events

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while not self._pending:
            self._pending.extend(self.poll())
            self._batch_end = self.position
        event = self._pending.popleft()
        # Where a new watch would resume: after this event (its entry's changes from the next
        # one on: offset + 1), or after the whole batch once it is all handed out (the batch's
        # resume position may be past its last event).
        after_event = (event.index, event.offset + 1)
        self._index, self._offset = self._batch_end if not self._pending else after_event
        return event
