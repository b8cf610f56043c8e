"""The exceptions raftcache raises: one base class, one class per answer a caller acts on.

The server's declared Thrift exceptions become the classes of the same name, so a caller never
imports the IDL. Two more say what the server never says itself: OutcomeUnknown (a write whose
retries ran out after at least one attempt may have reached the cluster) and ServerError (a
Thrift application exception: a method the node does not know, a plaintext call to a TLS port).
"""

from __future__ import annotations

from typing import Optional

from ._idl import cache as _thrift


class Error(Exception):
    """Base class of every error this package raises."""


class KeyNotFound(Error):
    """The key does not exist (an answer, not a failure; never retried)."""

    def __init__(self, key: str):
        super().__init__(f"key not found: {key!r}")
        self.key = key


class InvalidRequest(Error):
    """The request itself is wrong (too large, a bad argument, no client token): nothing was
    done, and sending it again fails the same way (never retried)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unavailable(Error):
    """No node could serve the request before the client's retry deadline (reads), or a write
    that certainly never reached a node (every attempt failed to connect)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class CacheFull(Error):
    """The cache is at its capacity and evicts nothing: the write was not applied."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unauthorized(Error):
    """A wrong client token, or an admin call without the admin token."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Compacted(Error):
    """A watch asked for changes older than the node keeps. Read the keys again (note
    `stats().applied_index`, then scan; `Client.read_prefix` does both) and watch from that
    index; `oldest_index` is the smallest position the node could answer."""

    def __init__(self, message: str, oldest_index: int):
        super().__init__(message)
        self.message = message
        self.oldest_index = oldest_index


class OutcomeUnknown(Error):
    """A write was retried (same client_id and seq) until the retry deadline without an answer:
    it may have been applied, or may still be. Read the key linearizably to find out.
    `cause` is the last failure seen."""

    def __init__(self, message: str, client_id: int, seq: int, cause: Optional[BaseException]):
        super().__init__(message)
        self.message = message
        self.client_id = client_id
        self.seq = seq
        self.cause = cause


class ServerError(Error):
    """The node answered with a Thrift application exception rather than a declared one: a
    method it does not know (an older server), a plaintext client on a TLS port. Not retried."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# Declared exceptions that end a call for good: the same request gets the same answer anywhere.
_FINAL = {
    _thrift.KeyNotFound: lambda e: KeyNotFound(e.key),
    _thrift.InvalidRequest: lambda e: InvalidRequest(e.message),
    _thrift.CacheFull: lambda e: CacheFull(e.message),
    _thrift.Unauthorized: lambda e: Unauthorized(e.message),
    _thrift.Compacted: lambda e: Compacted(e.message, e.oldest_index),
}


def final_error(exc: BaseException) -> Optional[Error]:
    """This package's exception for a declared Thrift exception that must not be retried, or
    None when `exc` is not one."""
    make = _FINAL.get(type(exc))
    return make(exc) if make else None
