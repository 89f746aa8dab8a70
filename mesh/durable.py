"""Group commit: the store's commits are cheap (not fsync'd one by one) and reach the disk
together, at the barriers where something is about to leave the peer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .store import Store

# An fsync of the log that typically takes less than this is done on the event loop: a
# round trip to a worker thread costs more than that on a busy loop (5-20 ms measured on
# two loaded cores), and the loop would only wait for the answer anyway.
INLINE_BELOW = 0.002  # seconds


class Durability:
    """Whoever is about to let something leave the peer (a file into the pipe, a request
    to the upstream, a 202 to a caller, the removal of a file a commit made unneeded)
    first awaits `synced`: one fsync of the store's log covers every commit made before
    it, for all those waiting at the same time. A power cut can undo commits not synced
    yet, but only a suffix of them (the log is replayed in order) and nothing that any
    barrier let out. A failing fsync is logged and tried again every `retry` seconds:
    nothing leaves as if durable meanwhile.

    The fsync runs in a worker thread, or on the event loop while fsyncs are measured to
    take under `INLINE_BELOW` (a smoothed figure, so one slow fsync sends the next ones
    to a thread until the disk is fast again)."""

    def __init__(self, store: Store, log: logging.Logger, retry: float = 1.0) -> None:
        self.store = store
        self.log = log
        self.retry = retry
        self.syncs = 0  # fsyncs done (each may cover many commits)
        self._synced = store.commits  # those before we started are on disk (or replayed)
        self._syncing: trio.Event | None = None
        self._hooks: list[tuple[int, Callable[[], None]]] = []  # (commits to cover, hook)
        self.typical: float | None = None  # smoothed seconds per fsync (None: none yet)

    def after_sync(self, hook: Callable[[], None]) -> None:
        """Run `hook` once every commit made so far is on disk: at once if it is, else at
        the end of the next fsync that covers them (whoever awaits `synced` next; the
        links do before every file they write)."""
        if self._synced >= self.store.commits:
            hook()
        else:
            self._hooks.append((self.store.commits, hook))

    async def synced(self) -> None:
        """Return once every commit made so far is on disk."""
        target = self.store.commits
        while self._synced < target:
            if self._syncing is not None:  # one is under way: it may not cover ours
                await self._syncing.wait()
                continue
            self._syncing = done = trio.Event()
            try:
                await self._sync(self.store.commits)
            finally:
                self._syncing = None
                done.set()

    async def _sync(self, upto: int) -> None:
        failing = False
        while True:
            try:
                await self._fsync()
            except OSError as exc:
                if not failing:
                    self.log.error("cannot make the state durable (fsync failed): %s", exc)
                failing = True
                await trio.sleep(self.retry)
                continue
            if failing:
                self.log.info("the state is durable again")
            self.syncs += 1
            self._synced = max(self._synced, upto)
            due = [hook for covers, hook in self._hooks if covers <= self._synced]
            self._hooks = [(covers, hook) for covers, hook in self._hooks if covers > self._synced]
            for hook in due:
                hook()
            return

    async def _fsync(self) -> None:
        if self.typical is not None and self.typical < INLINE_BELOW:
            took = self._timed_fsync()
            await trio.lowlevel.checkpoint()
        else:
            took = await trio.to_thread.run_sync(self._timed_fsync)
        self.typical = took if self.typical is None else 0.8 * self.typical + 0.2 * took

    def _timed_fsync(self) -> float:
        """Seconds one fsync of the log took (not counting a thread round trip)."""
        began = time.perf_counter()
        self.store.sync_log()
        return time.perf_counter() - began
