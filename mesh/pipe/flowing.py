"""Bodies that stream. Sending: spooled to a body file as it comes, each piece sent on
as a fragment as soon as it is durable, its size maybe known only at its end (`flow`).
Receiving: read in order from the body file its fragments land in, as far as they came
from its start, while more come (`follow`).

Where `Bodies.receive` sends a body of a declared size a block at a time, this is for a
body whose size is not known, or that comes slowly (a server's event stream, a download
read by its caller as it goes): what came while the last piece was written and synced
goes as the next fragment, so each piece is at most one write (and one file) behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import trio

from ..errors import unwrapped
from . import folder
from .bodies import BLOCK, CHUNK, INLINE, Bodies, Body, BodyTooLarge, append, incoming_name
from .folder import fsync_folder
from .pieces import BodyRanges
from .receiving import Receiving
from .sending import Sending
from .streams import BodyStream

PIECES_AHEAD = 64  # pieces read (up to 64 KiB each from h11) while one is written
REREAD_AFTER = 1.0  # seconds a body whose file went waits to learn why, at most
E = TypeVar("E", bound=Exception)


async def flow(
    bodies: Bodies,
    sending: Sending,
    stream: BodyStream,
    first: list[bytes],
    rest: trio.MemoryReceiveChannel[bytes],
    limit: int,
) -> Body:
    """The body `first` and then `rest` (to its end: the channel closed) make, spooled to
    a new body file; after each write is synced, what it added leaves as fragments of
    `stream` (`Sending.grew`). BodyTooLarge past `limit` bytes. On any error (or when
    cancelled) `stream` is given up, so the far side drops it and cuts whoever it was
    going to; the file goes once nothing needs it."""
    name, fd = bodies.create()
    size = unsynced = 0
    stream.flowing = True
    try:
        pending = first
        while True:
            pending += _ready(rest, BLOCK - sum(map(len, pending)))
            if pending:
                size += sum(map(len, pending))
                if size > limit:
                    raise BodyTooLarge(limit)
                unsynced += await trio.to_thread.run_sync(append, fd, pending)
            if unsynced and _sync_now(stream, unsynced, rest):
                await _synced(bodies, sending, stream, fd, name, size)
                unsynced = 0
            try:
                pending = [await rest.receive()]
            except trio.EndOfChannel:
                if unsynced:
                    await _synced(bodies, sending, stream, fd, name, size)
                return Body(b"", name, size)
    except BaseException:
        opened = stream.opened  # before abandoning: that closes it once committed
        if opened or stream.ahead:  # the far side waits for it: told to drop it
            sending.abandon(stream)
        if not opened:  # no fragment reads the file
            with contextlib.suppress(OSError):
                os.unlink(bodies.path(name))
        raise
    finally:
        os.close(fd)


def _sync_now(stream: BodyStream, unsynced: int, rest: trio.MemoryReceiveChannel[bytes]) -> bool:
    """Whether to make what was written durable (and send it) now: whatever came once
    nothing more is waiting; while more keeps coming, its first block (so its first
    bytes leave at once), then each `folder.SYNC_EVERY` (a fast body is synced as a
    file written whole would be)."""
    enough = folder.SYNC_EVERY if stream.opened else BLOCK
    return unsynced >= enough or rest.statistics().current_buffer_used == 0


async def _synced(
    bodies: Bodies, sending: Sending, stream: BodyStream, fd: int, name: str, size: int
) -> None:
    """The first `size` bytes of body file `name` made durable, and sent on."""
    await trio.to_thread.run_sync(os.fdatasync, fd)
    if not stream.opened:  # its name must outlive a power cut first
        await trio.to_thread.run_sync(fsync_folder, bodies.folder)
    sending.grew(stream, name, size)


def _ready(channel: trio.MemoryReceiveChannel[bytes], room: int) -> list[bytes]:
    """The pieces waiting in `channel` now, while their size is under `room`."""
    pieces: list[bytes] = []
    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
        while room > 0:
            piece = channel.receive_nowait()
            pieces.append(piece)
            room -= len(piece)
    return pieces


async def flow_from(
    bodies: Bodies,
    sending: Sending,
    stream: BodyStream,
    chunks: AsyncIterator[bytes],
    limit: int,
) -> Body:
    """`flow` of the body `chunks` bring, read while the last piece is written. What
    reading them raises is raised (`stream` given up)."""
    send, receive = trio.open_memory_channel[bytes](PIECES_AHEAD)
    with unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, chunks, send)
            return await flow(bodies, sending, stream, [], receive, limit)
    raise AssertionError("unreachable")  # pragma: no cover


async def gathered(
    pieces: trio.MemoryReceiveChannel[bytes], into: list[bytes], limit: int, seconds: float
) -> bool:
    """Gather into `into` what comes, until the body ends (False: it is whole) or it is
    over `INLINE` bytes or `seconds` (True: stream it). BodyTooLarge past `limit` bytes."""
    size = 0
    with trio.move_on_after(seconds):
        async for piece in pieces:
            into.append(piece)
            size += len(piece)
            if size > limit:
                raise BodyTooLarge(limit)
            if size > INLINE:
                return True
        return False
    return True


async def pump_noting(
    chunks: AsyncIterator[bytes],
    into: trio.MemorySendChannel[bytes],
    kind: type[E],
    broke: list[E],
) -> None:
    """`pump`, and when reading `chunks` raises `kind`, that is added to `broke` (what
    came before still goes on), before the channel closes: whoever reads the channel to
    its end must look at `broke` then, before taking the body as whole. Any other error
    leaves the channel open: raised, it cancels the reader with the nursery both run in,
    which so never sees an end."""
    try:
        async for chunk in chunks:
            if chunk:
                await into.send(chunk)
    except kind as exc:
        broke.append(exc)
    into.close()  # not `aclose`: its checkpoint would let the reader see the end first


async def pump(chunks: AsyncIterator[bytes], into: trio.MemorySendChannel[bytes]) -> None:
    """Move `chunks` (the empty ones dropped) into the channel, and close it at their
    end, or when reading them raises (raised on)."""
    async with into:
        async for chunk in chunks:
            if chunk:
                await into.send(chunk)


class BodyBrokeOff(Exception):
    """A body that was followed as it came will not come whole."""


async def follow(
    receiving: Receiving,
    bodies: Bodies,
    remote: str,
    transfer: str,
    length: int | None,
    deadline: float,
    before_last: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The `length` bytes of body `transfer` from `remote` (None: as many as its sender
    tells at its end, `Receiving.told_length`), in order, as their fragments come
    (`CHUNK` at a time at most), from the file they land in; `before_last` is awaited
    before the piece that ends it is given, or, when its length was told only after its
    last piece, before the end (whoever takes it may then act on the whole).
    BodyBrokeOff when its sender gave it up, it was dropped as over the body limit, it
    is not whole by `deadline` (wall-clock seconds), or more of it came than told."""
    prefix = receiving.streamed(remote, transfer)
    offset, marked = 0, False

    async def ending(at: int) -> None:
        if length is None and not receiving.as_told(remote, transfer, max(prefix.length, at)):
            raise BodyBrokeOff(f"its sender told {at} bytes, and it is not that")
        await before_last()

    with bodies.ranges(incoming_name(remote, transfer)) as ranges:
        while True:
            known = length if length is not None else receiving.told_length(remote, transfer)
            if known is not None and offset >= known:
                break
            end = known if known is not None else math.inf
            whole = known is not None and receiving.body_here(remote, transfer, known)
            here = end if whole else min(prefix.length, end)
            if here > offset:
                data = await _read_on(receiving, ranges, offset, int(min(CHUNK, here - offset)))
                offset += len(data)
                if offset == known:
                    await ending(known)
                    marked = True
                yield data
                continue
            if prefix.abandoned or receiving.given_up(remote, transfer):
                raise BodyBrokeOff(f"its sender gave it up after {offset} bytes")
            with trio.move_on_after(max(deadline - time.time(), 0.0)) as waited:
                await receiving.delivered()
            if waited.cancelled_caught:
                came = f"{offset} of its {known} bytes" if known else f"{offset} bytes of it"
                raise BodyBrokeOff(f"{came} came by the deadline")
    if not marked:  # its length was told after its last piece went (or it is empty)
        await ending(offset)


async def whole(receiving: Receiving, remote: str, transfer: str, deadline: float) -> int:
    """The length of body `transfer` from `remote`, whose message went without it, once
    its sender told it and all of it is here (to be sent on with its length);
    BodyBrokeOff if it is given up, or not whole by `deadline` (wall-clock seconds)."""

    def wanted() -> bool:
        return time.time() < deadline and not receiving.given_up(remote, transfer)

    if await receiving.body_arrived(remote, transfer, None, wanted) is None:
        raise BodyBrokeOff("it did not come whole (given up, or not by the deadline)")
    length = receiving.told_length(remote, transfer)
    assert length is not None  # told, as it is whole
    return length


async def _read_on(receiving: Receiving, ranges: BodyRanges, offset: int, size: int) -> bytes:
    """`_read_at` in a thread. Its BodyBrokeOff is raised once the delivery under way is
    stored (or after `REREAD_AFTER` seconds): a body dropped (given up, or over the limit)
    loses its file just before that is stored, and whoever follows it then learns why."""
    try:
        return await trio.to_thread.run_sync(_read_at, ranges, offset, size)
    except BodyBrokeOff:
        with trio.move_on_after(REREAD_AFTER):
            await receiving.delivered()
        raise


def _read_at(ranges: BodyRanges, offset: int, size: int) -> bytes:
    """`size` bytes of the body from `offset`; BodyBrokeOff if it does not hold them
    (given up meanwhile). Blocking."""
    try:
        return ranges.read(offset, size)
    except OSError as exc:
        raise BodyBrokeOff(f"its file cannot be read: {exc.strerror or exc}") from None
