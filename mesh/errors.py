"""Exception hierarchy: one base per layer, so callers can map errors at each boundary."""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=BaseException)
COMPLAIN_EVERY = 60.0  # seconds between two log lines about one recurring failure


def leaves(group: BaseExceptionGroup[E]) -> list[E]:
    """The exceptions in `group` and in the groups nested in it (trio nests a group per
    nursery), flattened."""
    found: list[E] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@contextmanager
def unwrapped() -> Iterator[None]:
    """Raise a group holding one exception (a nursery's, however deeply nested) as that
    exception, so a nursery inside a function does not change what it raises. A group
    of several is raised as it is."""
    try:
        yield
    except BaseExceptionGroup as group:
        found = leaves(group)
        if len(found) == 1:
            raise found[0] from None
        raise


SQLITE_FULL = 13  # SQLite's result code for "database or disk is full"


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota on it) is full: an OSError's
    ENOSPC or EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "is full" in str(exc)
    return False


class MeshError(Exception):
    """Base of every error mesh raises on purpose."""


class ConfigError(MeshError):
    """Something a user must fix before a peer can start (keys, folders, locks)."""


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, malformed, or too open."""


class PeerLockedError(ConfigError):
    """Another process already runs this peer on the same state folder."""


class FormatError(MeshError):
    """Bytes from the pipe that are not a valid mesh file; the message says what was wrong.

    `reason` is a short machine-readable slug (``bad-magic``, ``bad-signature``...) used for
    quarantine records and counters; ``str(error)`` is the human sentence.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class MessageError(MeshError):
    """A frame decoded to something that is not a valid message."""


class Complaints:
    """Log lines about recurring failures, at most one per kind every `COMPLAIN_EVERY`
    seconds, each saying how many were left out since the last."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self.log, self.name = log, name
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def say(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -COMPLAIN_EVERY) < COMPLAIN_EVERY:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        more = f" ({quiet} more like it since)" if quiet else ""
        self.log.warning(f"%s: {message}{more}", self.name, *args)
