"""Fragments read where they arrived. A big fragment that crossed raw (neither compressed
nor sealed) lies in its pipe file byte for byte, so the receiver links that file into the
bodies folder instead of copying the fragment into its body file: each byte is written
once on this side. The link's name says where the fragment lies and how to check it::

    p-<offset>-<length>-<position>-<frame length>-<digest>-<body>    (numbers in hex)

`body` is the body file's name (``in-<peer>-<transfer>``): bytes `offset` to
`offset + length` of that body are the linked file's bytes from `position`, the end of a
frame of `frame length` bytes whose signed BLAKE3 digest is `digest`. The folder is the
map (as durable as the folder's fsync, and read again at start). A pipe file that brought
several fragments has a name for each; its space is freed with its last name, so a body's
pieces go with the body (`Pieces.remove`).

**A piece is checked again each time it is read** (`BodyRanges`): its whole frame is read
into memory and its digest compared before any of it is handed out, so bytes changed
since they arrived (by a writer that had the file open, say) are an error, never data.
Only a file nobody else may change is linked, too: a regular file owned by this user,
writable by nobody else, on the bodies folder's filesystem, with no other name once it is
moved out of the inbox (`adopt`, before its frames are read), so a mirror rewriting a file
of that name in place makes another file. Any other file is copied, as is a small
fragment (a name per fragment would cost more than its copy).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import os
import stat
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from ..wire.layout import new_digest

LINK_FROM = 256 << 10  # bytes: a smaller fragment is copied into its body file
_PREFIX = "p-"
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
    """Bytes `offset` to `end` of a body, in linked file `name` from `position`: the end
    of a frame of `frame_length` bytes whose digest is `digest`."""

    offset: int
    length: int
    position: int
    frame_length: int
    digest: bytes
    name: str = ""

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def frame_start(self) -> int:
        return self.position + self.length - self.frame_length

    def named(self, body: str) -> Piece:
        """This piece with the name it has as a piece of `body`."""
        numbers = (self.offset, self.length, self.position, self.frame_length)
        hexes = "-".join(f"{number:x}" for number in numbers)
        return replace(self, name=f"{_PREFIX}{hexes}-{self.digest.hex()}-{body}")


def parse(name: str) -> tuple[str, Piece] | None:
    """The body and piece a name in the bodies folder stands for; None for another name."""
    if not name.startswith(_PREFIX):
        return None
    fields = name[len(_PREFIX) :].split("-", 5)
    if len(fields) != 6 or not fields[5].startswith("in-") or len(fields[4]) != 64:
        return None
    try:
        offset, length, position, frame_length = (int(field, 16) for field in fields[:4])
        digest = bytes.fromhex(fields[4])
    except ValueError:
        return None
    piece = Piece(offset, length, position, frame_length, digest, name)
    return (fields[5], piece) if piece.named(fields[5]).name == name else None


class Pieces:
    """The pieces of the incoming bodies in one bodies folder. Safe to use from several
    threads (fragments are linked from a worker thread while bodies are read)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._device = os.stat(folder).st_dev
        self._lock = threading.Lock()
        self._of: dict[str, list[Piece]] = {}
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

    def link(self, fd: int, body: str, piece: Piece) -> bool:
        """Link the file open as `fd` (`linkable`) as `piece` of `body`; False when the
        system would not (then copy it). Not yet durable: fsync the file and the folder.
        The same piece again replaces the old. Blocking."""
        named = piece.named(body)
        temporary = self.folder / f"tmp-{uuid.uuid4().hex}"
        try:  # through the descriptor: the very file checked, whatever its name is now
            link_descriptor(fd, temporary)
            os.replace(temporary, self.folder / named.name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return False
        self._add(body, named)
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

    def remove(self, body: str) -> None:
        """Remove the pieces of `body` (those already gone are fine). Blocking."""
        with self._lock:
            pieces = self._of.pop(body, [])
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
        self._frame: tuple[Piece, bytes] | None = None  # the last piece checked, its frame

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes of the body from `offset`; OSError if it does not hold them all
        (its file shorter, a hole no piece fills: removed meanwhile) or a piece changed."""
        self._known.update(self.pieces.of(self.body))  # again each time: more come
        pieces = sorted(self._known)
        starts = [piece.offset for piece in pieces]
        parts, end = [], offset + size
        while offset < end:
            at = bisect.bisect_right(starts, offset) - 1
            covering = next((p for p in reversed(pieces[: at + 1]) if p.end > offset), None)
            if covering is not None:
                want = min(end, covering.end) - offset
                data = self._from_piece(covering, offset, want)
            else:
                following = pieces[at + 1].offset if at + 1 < len(pieces) else end
                want = min(end, following) - offset
                data = self._read(self.body, want, offset)
                self._no_hole(offset, want)
            parts.append(data)
            offset += want
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _no_hole(self, offset: int, size: int) -> None:
        """OSError unless the body file holds data all along `offset`..`offset + size`:
        a hole is where a piece was (removed with its body meanwhile, unseen here), not
        zeros that came."""
        if os.lseek(self._opened[self.body], offset, os.SEEK_HOLE) < offset + size:
            raise OSError(f"body {self.body} has a hole where a piece was: removed meanwhile")

    def _from_piece(self, piece: Piece, offset: int, size: int) -> bytes:
        """`size` bytes of the body from `offset`, out of `piece`'s frame, read whole and
        checked against its digest (once for the reads that follow in it); OSError when
        it no longer matches."""
        if self._frame is None or self._frame[0] != piece:
            frame = self._read(piece.name, piece.frame_length, piece.frame_start)
            if new_digest(frame).digest() != piece.digest:
                raise OSError(f"a piece of body {self.body} changed since it came")
            self._frame = piece, frame
        frame = self._frame[1]  # the fragment's data is its end
        start = len(frame) - piece.length + offset - piece.offset
        return frame[start : start + size]

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
        self._frame = None

    def __enter__(self) -> BodyRanges:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
