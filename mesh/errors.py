"""Exception hierarchy: one base per layer, so callers can map errors at each boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


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
