"""Fragments read where they arrived. A big fragment that crossed raw (neither compressed
nor sealed) lies in its pipe file byte for byte, so the receiver links that file into the
bodies folder instead of copying the fragment into its body file: each byte is written
once on this side. The link's name says where the fragment lies::

    p-<offset>-<length>-<position>-<body>          (the numbers in hex)

`body` is the body file's name (``in-<peer>-<transfer>``): bytes `offset` to
`offset + length` of that body are the linked file's bytes from `position`. The folder is
the map (as durable as the folder's fsync, and read again at start). A pipe file that
brought several fragments has a name for each; its space is freed with its last name, so
a body's pieces go with the body (`Pieces.remove`).

Only a file nobody else may change is linked: a regular file owned by this user, writable
by nobody else, on the bodies folder's filesystem. It is first moved out of the inbox
(`adopt`), before its frames are read and checked again, so a mirror that rewrites a
file of that name in place (as some do) makes another file; its pieces are linked through
the descriptor it was read from, never by a name another could swap. What was checked is
then what is read later. Any other file is copied, as is a small fragment (a name per
fragment would cost more than its copy).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import os
import stat
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

LINK_FROM = 256 << 10  # bytes: a smaller fragment is copied into its body file
_PREFIX = "p-"
REMOVED_KEPT = 4096  # bodies removed lately, whose readers are told so
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def link_descriptor(fd: int, name: Path) -> None:
    """Give the file open as `fd` the new name `name`: the very file, whatever names it
    has now (`linkat` of the descriptor, else through ``/proc/self/fd``: where one is
    refused the other may not be). OSError when the system will not."""
    if _libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(name), _AT_EMPTY_PATH) == 0:
        return
    refused = ctypes.get_errno()
    try:
        os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)
    except OSError:
        raise OSError(refused, os.strerror(refused), str(name)) from None


@dataclass(frozen=True, order=True)
class Piece:
    """Bytes `offset` to `end` of a body, in linked file `name` from `position`."""

    offset: int
    length: int
    position: int
    name: str

    @property
    def end(self) -> int:
        return self.offset + self.length


def piece_name(body: str, offset: int, length: int, position: int) -> str:
    return f"{_PREFIX}{offset:x}-{length:x}-{position:x}-{body}"


def parse(name: str) -> tuple[str, Piece] | None:
    """The body and piece a name in the bodies folder stands for; None for another name."""
    if not name.startswith(_PREFIX):
        return None
    fields = name[len(_PREFIX) :].split("-", 3)
    if len(fields) != 4 or not fields[3].startswith("in-"):
        return None
    try:
        offset, length, position = (int(field, 16) for field in fields[:3])
    except ValueError:
        return None
    return fields[3], Piece(offset, length, position, name)


class Pieces:
    """The pieces of the incoming bodies in one bodies folder. Safe to use from several
    threads (fragments are linked from a worker thread while bodies are read)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._device = os.stat(folder).st_dev
        self._lock = threading.Lock()
        self._of: dict[str, list[Piece]] = {}
        self._removed: OrderedDict[str, None] = OrderedDict()
        for entry in os.scandir(folder):
            found = parse(entry.name)
            if found is not None:
                self._add(*found)

    def linkable(self, fd: int) -> bool:
        """Whether the file open as `fd` may be linked here (see the module's text)."""
        info = os.fstat(fd)
        return (
            stat.S_ISREG(info.st_mode)
            and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and info.st_dev == self._device
        )

    def adopt(self, path: Path, fd: int) -> Path | None:
        """Move the file open as `fd` (`linkable`), named `path` in the inbox, into this
        folder under a temporary name (removed at the next start if left); that name, or
        None when it cannot be moved or `path` names another file now (then that one is
        removed: it is in no inbox any more). Blocking."""
        adopted = self.folder / f"tmp-{uuid.uuid4().hex}"
        try:
            os.rename(path, adopted)
        except OSError:
            return None
        held, moved = os.fstat(fd), os.stat(adopted, follow_symlinks=False)
        if (held.st_dev, held.st_ino) != (moved.st_dev, moved.st_ino):
            with contextlib.suppress(OSError):
                os.unlink(adopted)
            return None
        return adopted

    def link(self, fd: int, body: str, offset: int, length: int, position: int) -> bool:
        """Link the file open as `fd` (`linkable`) as bytes `offset`.. of `body`, which lie
        at `position` in it; False when the system would not (then copy them). Not yet
        durable: fsync the file and the folder. The same piece again replaces the old."""
        name = piece_name(body, offset, length, position)
        temporary = self.folder / f"tmp-{uuid.uuid4().hex}"
        try:  # through the descriptor: the very file checked, whatever its name is now
            link_descriptor(fd, temporary)
        except OSError:
            return False
        os.replace(temporary, self.folder / name)
        self._add(body, Piece(offset, length, position, name))
        return True

    def _add(self, body: str, piece: Piece) -> None:
        with self._lock:
            pieces = self._of.setdefault(body, [])
            if piece not in pieces:
                bisect.insort(pieces, piece)

    def of(self, body: str) -> list[Piece]:
        """The pieces of `body`, by offset (a copy: more may come meanwhile)."""
        with self._lock:
            return list(self._of.get(body, ()))

    def end(self, body: str) -> int:
        """Where the last piece of `body` ends (0 when it has none)."""
        return max((piece.end for piece in self.of(body)), default=0)

    def removed(self, body: str) -> bool:
        """Whether `body` was removed lately (`REMOVED_KEPT`): a reader holding some of
        its files open must not read on, where its pieces are no longer known."""
        return body in self._removed

    def remove(self, body: str) -> None:
        """Remove the pieces of `body` (those already gone are fine). Blocking."""
        with self._lock:
            pieces = self._of.pop(body, [])
            self._removed[body] = None
            while len(self._removed) > REMOVED_KEPT:
                self._removed.popitem(last=False)
        for piece in pieces:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / piece.name)


class BodyRanges:
    """Reads ranges of one body: from its pieces where they hold them, from its body file
    for the rest, each file opened once. Blocking: use from a thread."""

    def __init__(self, pieces: Pieces, body: str) -> None:
        self.pieces, self.body = pieces, body
        self._opened: dict[str, int] = {}
        self._known: set[Piece] = set()

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes of the body from `offset`; OSError if it does not hold them all
        (removed meanwhile, its file shorter, a hole no piece fills)."""
        self._known.update(self.pieces.of(self.body))  # again each time: more come
        pieces = sorted(self._known)
        starts = [piece.offset for piece in pieces]
        parts, end = [], offset + size
        while offset < end:
            at = bisect.bisect_right(starts, offset) - 1
            covering = next((p for p in reversed(pieces[: at + 1]) if p.end > offset), None)
            if covering is not None:
                want = min(end, covering.end) - offset
                data = self._read(covering.name, want, covering.position + offset - covering.offset)
            else:
                following = pieces[at + 1].offset if at + 1 < len(pieces) else end
                want = min(end, following) - offset
                data = self._read(self.body, want, offset)
            parts.append(data)
            offset += want
        if self.pieces.removed(self.body):  # meanwhile: read from where a piece no longer is
            raise OSError(f"body {self.body} was removed")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read(self, name: str, size: int, position: int) -> bytes:
        fd = self._opened.get(name)
        if fd is None:
            fd = self._opened[name] = os.open(
                self.pieces.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        data = os.pread(fd, size, position)
        while len(data) < size:  # pread may return less: a short file returns b""
            more = os.pread(fd, size - len(data), position + len(data))
            if not more:
                raise OSError(f"body {self.body} is shorter than what came")
            data += more
        return data

    def close(self) -> None:
        for fd in self._opened.values():
            os.close(fd)
        self._opened.clear()

    def __enter__(self) -> BodyRanges:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
