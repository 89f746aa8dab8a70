"""Group commit: the database's commits are cheap (not fsync'd one by one) and reach the disk
together, at the barriers where something is about to leave the peer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .database import Database
from .offload import Offload


class Durability:
    """Whoever is about to let something leave the peer (a file into the pipe, a request
    to the upstream, a 202 to a caller, the removal of a file a commit made unneeded)
    first awaits `synced`: one fsync of the database's log covers every commit made before
    it, for all those waiting at the same time. A power cut can undo commits not synced
    yet, but only a suffix of them (the log is replayed in order) and nothing that any
    barrier let out. A failing fsync is logged and tried again every `retry` seconds:
    nothing leaves as if durable meanwhile.

    The fsync runs where `fsyncs` puts it: in a worker thread, or on the event loop while
    fsyncs are measured to be quick (give one that never allows that for a database on a
    network share)."""

    def __init__(
        self,
        database: Database,
        log: logging.Logger,
        retry: float = 1.0,
        fsyncs: Offload | None = None,
    ) -> None:
        self.database = database
        self.log = log
        self.retry = retry
        self.syncs = 0  # fsyncs done (each may cover many commits)
        self._synced = database.commits  # those before we started are on disk (or replayed)
        self._syncing: trio.Event | None = None
        self._hooks: list[tuple[int, Callable[[], None]]] = []  # (commits to cover, hook)
        self.fsyncs = fsyncs or Offload()
        self.sync_timed: Callable[[float], None] = lambda seconds: None  # each fsync's seconds
        self.failing: str | None = None  # why the last fsync failed, while it keeps failing

    def after_sync(self, hook: Callable[[], None]) -> None:
        """Run `hook` once every commit made so far is on disk: at once if it is, else at
        the end of the next fsync that covers them (whoever awaits `synced` next; the
        links do before every file they write)."""
        if self._synced >= self.database.commits:
            hook()
        else:
            self._hooks.append((self.database.commits, hook))

    async def synced(self) -> None:
        """Return once every commit made so far is on disk."""
        target = self.database.commits
        while self._synced < target:
            if self._syncing is not None:  # one is under way: it may not cover ours
                await self._syncing.wait()
                continue
            self._syncing = done = trio.Event()
            try:
                await self._sync(self.database.commits)
            finally:
                self._syncing = None
                done.set()

    async def _sync(self, upto: int) -> None:
        failing = False
        while True:
            began = time.perf_counter()
            try:
                await self.fsyncs.run(self.database.sync_log)
            except OSError as exc:
                if not failing:
                    self.log.error("cannot make the state durable (fsync failed): %s", exc)
                failing = True
                self.failing = f"the state cannot be made durable: {exc.strerror or exc}"
                await trio.sleep(self.retry)
                continue
            if failing:
                self.log.info("the state is durable again")
                self.failing = None
            self.sync_timed(time.perf_counter() - began)
            self.syncs += 1
            self._synced = max(self._synced, upto)
            due = [hook for covers, hook in self._hooks if covers <= self._synced]
            self._hooks = [(covers, hook) for covers, hook in self._hooks if covers > self._synced]
            for hook in due:
                hook()
            return
