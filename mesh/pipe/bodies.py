"""Message bodies: small ones in memory, big ones spooled to files in the peer's state.

A body up to `INLINE` bytes travels inside its request or response message. A bigger one
is written to a file as it arrives from the socket, and crosses as fragments of at most
`block` bytes, each its own sequenced message; the far side writes each fragment at its
offset in a file of its own as it arrives, so a body is never whole in memory on
either side.

Files live in the peer's ``bodies`` folder under names mesh makes (never from a file
name or header of a remote): ``out-<uuid>`` for ours to send (written as it comes from a
socket, and reported durable as it grows, so its fragments can leave before its end has
come) and ``in-<peer>-<transfer>`` for those that arrive (the peer a roster name, the
transfer 32 hex digits, both checked before use). Of an incoming body, the big fragments
that crossed raw stay in the pipe files they came in, linked into the folder (`pieces`):
such a body is read through `ranges`, `chunks` and `size`, never its file alone.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from ..errors import unwrapped
from ..wire.messages import is_id
from ..wire.names import PEER_NAME
from .folder import SyncEvery, fsync_folder
from .pieces import BodyRanges, Pieces

INLINE = 1 << 20  # bytes: a body up to this size travels inside its message
BLOCK = 4 << 20  # bytes of body per fragment (at most the roster's fragment_size)
CHUNK = 1 << 20  # bytes read from a body file at a time
WRITES_AHEAD = 2  # CHUNKs of a spooled body read from its socket while one is written
_IOV_MAX = 1024  # buffers per writev (Linux's limit)

# Told (body file, bytes of it durable so far) as a spooled body grows, and once more
# when it is whole.
Grew = Callable[[str, int], None]


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is over the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Body:
    """A body: its bytes (`data`) when small, else the name of its file and its size."""

    data: bytes = b""
    file: str | None = None
    size: int = 0

    @classmethod
    def of(cls, data: bytes) -> Body:
        return cls(data, None, len(data))

    @property
    def spooled(self) -> bool:
        return self.file is not None


def incoming_name(remote: str, transfer: str) -> str:
    """The file for body `transfer` arriving from `remote`."""
    if not (PEER_NAME.fullmatch(remote) and is_id(transfer)):
        raise ValueError(f"not a body name: {remote!r}, {transfer!r}")
    return f"in-{remote}-{transfer}"


class Bodies:
    """The body files of one peer."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = folder
        self.pieces = Pieces(folder)

    def path(self, name: str) -> Path:
        return self.folder / name

    async def receive(
        self, chunks: AsyncIterator[bytes], limit: int, grew: Grew | None = None
    ) -> Body:
        """The body `chunks` make: in memory up to `INLINE` bytes, else spooled to a file
        (fsync'd) as it comes, `grew` told each time more of it is durable. BodyTooLarge
        past `limit` bytes. On any error the file is removed, unless `grew` was told of
        it (then whoever it told owns the file)."""
        held: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            held.append(chunk)
            if size > INLINE:
                return await self._spool(held, size, chunks, limit, grew)
        return Body.of(b"".join(held))

    async def _spool(
        self,
        held: list[bytes],
        size: int,
        rest: AsyncIterator[bytes],
        limit: int,
        grew: Grew | None,
    ) -> Body:
        """Write the body to a new file while more of it is read from `rest`: a writer
        task takes `CHUNK`s through a channel of `WRITES_AHEAD`, so the socket is read
        while the disk writes (and syncs), with at most that much held in memory. When
        reading fails, what was read is still written (and reported) before the error
        is raised."""
        name, fd = self.create()
        told = False
        send, receive = trio.open_memory_channel[tuple[list[bytes], int, bool]](WRITES_AHEAD)

        async def write_behind() -> None:
            nonlocal told
            sync = SyncEvery(fd)
            async with receive:
                async for pieces, written, last in receive:
                    synced = await trio.to_thread.run_sync(_append, fd, pieces, sync, last)
                    if synced and grew is not None:
                        if not told:  # its name must outlive a power cut before it is relied on
                            await trio.to_thread.run_sync(fsync_folder, self.folder)
                            told = True
                        grew(name, written)

        failure: Exception | None = None
        try:
            with unwrapped():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_behind)
                    async with send:  # closed: the writer ends once it wrote what it has
                        try:
                            size = await _read_on(held, size, rest, limit, send)
                        except Exception as exc:  # raised once what was read is written
                            failure = exc
            if failure is not None:
                raise failure
        except BaseException:
            if not told:
                with contextlib.suppress(OSError):
                    os.unlink(self.path(name))
            raise
        finally:
            os.close(fd)
        return Body(b"", name, size)

    def create(self) -> tuple[str, int]:
        """A new outgoing body file, empty: its name, and a descriptor to write it."""
        name = f"out-{uuid.uuid4().hex}"
        return name, os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    async def chunks(self, name: str) -> AsyncIterator[bytes]:
        """The bytes of body `name` (its `size` when it starts), `CHUNK` at a time;
        OSError if they are not all there."""
        with self.ranges(name) as ranges:
            size, offset = await trio.to_thread.run_sync(self.size, name), 0
            while offset < size:
                chunk = await trio.to_thread.run_sync(
                    ranges.read, offset, min(CHUNK, size - offset)
                )
                offset += len(chunk)
                yield chunk

    def ranges(self, name: str) -> BodyRanges:
        """A reader of ranges of body `name`, from its pieces and its file."""
        return BodyRanges(self.pieces, name)

    def size(self, name: str) -> int:
        """How big body `name` is: its file, or as far as its last piece when that goes
        further; FileNotFoundError when it has neither. Blocking."""
        end = self.pieces.end(name)
        try:
            return max(os.stat(self.path(name)).st_size, end)
        except FileNotFoundError:
            if end:
                return end
            raise

    def has(self, name: str) -> bool:
        """Whether anything of body `name` is kept: its file or a piece."""
        return self.path(name).exists() or bool(self.pieces.of(name))

    def writer(self) -> BodyWriter:
        return BodyWriter(self.folder)

    def reader(self) -> BodyReader:
        return BodyReader(self.folder)

    def remove(self, names: Iterable[str]) -> None:
        """Remove bodies, their files and pieces (those already gone are fine). Blocking."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
            self.pieces.remove(name)

    def sweep(self, keep: set[str]) -> int:
        """At start-up, remove our outgoing bodies nothing refers to any more (`keep`
        names those that are still referred to; those half-received from a socket are
        not), and temporaries of earlier versions; how many. Blocking."""
        removed = 0
        for entry in os.scandir(self.folder):
            stale = entry.name.startswith("tmp-") or (
                entry.name.startswith("out-") and entry.name not in keep
            )
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed


class BodyWriter:
    """Writes data at offsets in body files; on leaving the block without an error, every
    file written is fsync'd (durable). Blocking: use from a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._opened: dict[str, int] = {}
        self._syncs: dict[str, SyncEvery] = {}

    def __enter__(self) -> BodyWriter:
        return self

    def write(self, name: str, offset: int, data: bytes | memoryview) -> None:
        fd = self._opened.get(name)
        if fd is None:
            fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT, 0o600)
            self._opened[name] = fd
            self._syncs[name] = SyncEvery(fd)
        view, written = memoryview(data), 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], offset + written)
        self._syncs[name].wrote(len(view))

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        try:
            if error is None:
                for fd in self._opened.values():
                    os.fsync(fd)
        finally:
            for fd in self._opened.values():
                os.close(fd)


class BodyReader:
    """Reads ranges of body files straight into buffers, each file opened once. Blocking:
    use from a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._opened: dict[str, int] = {}

    def __enter__(self) -> BodyReader:
        return self

    def read_into(self, name: str, offset: int, buffer: memoryview) -> None:
        """Fill `buffer` from `name` at `offset` (OSError if the file is shorter)."""
        fd = self._opened.get(name)
        if fd is None:
            fd = self._opened[name] = os.open(self.folder / name, os.O_RDONLY)
        done = 0
        while done < len(buffer):
            got = os.preadv(fd, [buffer[done:]], offset + done)
            if got == 0:
                raise OSError(f"body file {name} is shorter than expected")
            done += got

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        for fd in self._opened.values():
            os.close(fd)


async def _read_on(
    held: list[bytes],
    size: int,
    rest: AsyncIterator[bytes],
    limit: int,
    to_disk: trio.MemorySendChannel[tuple[list[bytes], int, bool]],
) -> int:
    """Read `rest` to its end, sending what `held` has and what comes to `to_disk` a
    `CHUNK` at a time (pieces, size so far, whether it is the end); the body's size.
    BodyTooLarge past `limit` bytes."""
    pending = sum(map(len, held))
    async for chunk in rest:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        held.append(chunk)
        pending += len(chunk)
        if pending >= CHUNK:  # one hop to a thread per CHUNK, not per chunk
            await to_disk.send((held, size, False))
            held, pending = [], 0
    await to_disk.send((held, size, True))
    return size


def _append(fd: int, pieces: list[bytes], sync: SyncEvery, last: bool) -> bool:
    """Append `pieces` (in one `writev`, not joined first); whether all written so far is
    durable (always, when `last`)."""
    if sync.wrote(append(fd, pieces)):
        return True
    if last:
        os.fsync(fd)
    return last


def append(fd: int, pieces: list[bytes]) -> int:
    """Write `pieces` at `fd`'s end, in as few `writev` as may be (not joined first); how
    many bytes. Blocking."""
    views = [memoryview(piece) for piece in pieces if piece]
    size = sum(map(len, views))
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written:  # drop what went; a partial write leaves the rest of a piece
            taken = min(written, len(views[0]))
            views[0] = views[0][taken:]
            written -= taken
            if not views[0]:
                views.pop(0)
    return size
