"""Watching an inbox: a wake-up as soon as a file may have arrived, with no grouping delay.

``notify`` reads inotify's events on the event loop itself (its descriptor polled by
trio, no thread, nothing waited for): a file renamed into place or closed after writing
wakes the reader at once. It still wakes every ten poll intervals in case an event was
lost. ``poll`` wakes every `poll_interval` (network shares, where inotify sees nothing);
``auto`` picks by the folder's filesystem. A folder missing, vanishing (an unmounted
share) or that cannot be watched is polled until it can be watched again.

Wake-ups coalesce: a reader that is busy gets one, not a backlog. Writes to a file still
open wake nobody (a big file copied in by a mirror would otherwise wake the reader at
every block); its closing does.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import trio
import trio.lowlevel
from inotify_simple import INotify
from inotify_simple import flags as inotify

from ..wire.names import parse_name
from .folder import WatchMode, resolve_watch_mode

log = logging.getLogger("mesh.pipe")

ARRIVALS = inotify.CREATE | inotify.CLOSE_WRITE | inotify.MOVED_TO
GONE = inotify.DELETE_SELF | inotify.MOVE_SELF | inotify.IGNORED | inotify.UNMOUNT
SAFETY_TICKS = 10  # poll intervals between two wake-ups when watching with inotify


async def watch(
    folder: Path,
    me: str,
    mode: WatchMode,
    poll_interval: float,
    wake: trio.MemorySendChannel[None],
) -> None:
    """Send a wake-up on `wake` whenever files for `me` may have arrived in `folder` (a
    shared folder's files to others, our own among them, wake nobody), until
    cancelled (see the module's docstring)."""
    if resolve_watch_mode(mode, folder) == "poll":
        await _tick(wake, poll_interval)
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_notify, folder, me, wake, poll_interval)
        await _tick(wake, poll_interval * SAFETY_TICKS)


def _post(wake: trio.MemorySendChannel[None]) -> None:
    with contextlib.suppress(trio.WouldBlock):
        wake.send_nowait(None)


async def _tick(wake: trio.MemorySendChannel[None], interval: float) -> None:
    while True:
        await trio.sleep(interval)
        _post(wake)


async def _notify(
    folder: Path, me: str, wake: trio.MemorySendChannel[None], poll_interval: float
) -> None:
    """Post a wake-up per batch of inotify events about mesh's files for `me`. While the
    folder cannot be watched, post one every `poll_interval` and try again."""
    trouble: str | None = None
    while True:
        try:
            with INotify(nonblocking=True) as events:
                events.add_watch(folder, ARRIVALS | GONE | inotify.ONLYDIR)
                if trouble is not None:
                    log.info("watching %s again", folder)
                    trouble = None
                _post(wake)  # what came before the watch began
                await _until_gone(events, me, wake)
        except OSError as exc:
            if trouble is None:
                log.warning("cannot watch %s (%s); polling it meanwhile", folder, exc)
            trouble = str(exc)
        _post(wake)
        await trio.sleep(poll_interval)


async def _until_gone(events: INotify, me: str, wake: trio.MemorySendChannel[None]) -> None:
    """Post a wake-up for each batch of `events` naming one of mesh's files for `me` (or
    telling that some were lost: the queue overflowed); return when the folder watched
    is gone (removed, moved, unmounted)."""
    while True:
        await trio.lowlevel.wait_readable(events.fileno())
        batch = events.read(timeout=0)
        if any(event.mask & inotify.Q_OVERFLOW or _for(me, event.name) for event in batch):
            _post(wake)
        if any(event.mask & GONE for event in batch):
            return


def _for(me: str, name: str) -> bool:
    """Whether `name` could be a file of mesh's for `me`, whole (`parse_name` takes no
    name still being written)."""
    parsed = parse_name(name)
    return parsed is not None and parsed.recipient == me
