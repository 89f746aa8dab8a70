"""File names in the pipe: who wrote a file, for whom, when, and what kind it is.

``{sender}.{recipient}.{stamp:016x}-{token}.{kind}.mesh`` — lowercase letters, digits, ``-``
and ``.`` only, so a name is safe on every filesystem and never a path. Names sort by the
writer's creation time. A name starting with ``.`` is a file still being written: readers
skip it. A name that does not parse is not mesh's and is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

SUFFIX = ".mesh"
TEMP_PREFIX = "."

PEER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a peer's name, everywhere
PEER_NAME_RULE = "lowercase letters, digits and '-', at most 63, starting with a letter or digit"
_FILE = re.compile(
    rf"(?P<sender>{PEER_NAME.pattern})\.(?P<recipient>{PEER_NAME.pattern})\."
    r"(?P<stamp>[0-9a-f]{16})-(?P<token>[0-9a-f]{8})\.(?P<kind>hb|msg)\.mesh"
)


class FileKind(StrEnum):
    HEARTBEAT = "hb"
    MESSAGES = "msg"


@dataclass(frozen=True, order=True)
class FileName:
    """A parsed pipe file name. `stamp` is the writer's wall clock in nanoseconds."""

    stamp: int
    sender: str
    recipient: str
    token: str
    kind: FileKind

    def __str__(self) -> str:
        return f"{self.sender}.{self.recipient}.{self.stamp:016x}-{self.token}.{self.kind}{SUFFIX}"

    @property
    def temporary(self) -> str:
        """The name to write under before the rename that publishes the file."""
        return f"{TEMP_PREFIX}{self}.part"


def parse_name(name: str) -> FileName | None:
    """The parsed name, or None when `name` is not a finished mesh file."""
    match = _FILE.fullmatch(name)
    if match is None:
        return None
    return FileName(
        stamp=int(match["stamp"], 16),
        sender=match["sender"],
        recipient=match["recipient"],
        token=match["token"],
        kind=FileKind(match["kind"]),
    )
