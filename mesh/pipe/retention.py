"""Retention: what has been finished for `retention` seconds is removed, a little at a
time, so a peer that runs for months keeps a bounded state.

Every `every` seconds a sweep removes, oldest first, the requests that ended, the
executions answered and the mailbox's messages not consumed, each older than the
retention (`state.retention` says exactly what), and the body files of the requests
removed once their removal is on disk. It works in batches, each one short transaction,
sized so one takes about `BUDGET` seconds, and lets the event loop run between two: a
sweep never holds the loop for more than about 10 ms however much there is to remove.
SQLite reuses the pages freed, so under a steady load the database stops growing; and
after a burst (or a sweep held up) left more free pages than a steady load needs, the
sweep hands the extra back to the filesystem, a batch at a time too: the file does not
keep its peak for good.

The quarantine is bounded as files come (`quarantine.Quarantine`), not here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
import trio.lowlevel

from ..errors import Complaints
from ..state.retention import RetentionTables
from ..wire.messages import Kind
from .bodies import incoming_name

BUDGET = 0.005  # seconds a batch should take
FIRST_BATCH = 64  # rows in the first batch; later ones are sized from how long it took
MOST_BATCH = 4096
LEAST_BATCH = 16  # rows: a commit that waits on the disk must not shrink batches to one
BATCH_BYTES = 4 << 20  # of values a batch removes (each costs reading its pages' chain)
SWEEP_AT_MOST_EVERY = 60.0  # seconds; a short retention is swept more often
KEEP_FREE_PAGES = 256  # free pages kept for reuse (1 MiB), or an eighth of those in use

Step = Callable[[float, int, int], int]  # (cutoff, rows, bytes): how many it removed


@dataclass
class Swept:
    """What sweeps removed so far."""

    requests: int = 0
    executions: int = 0
    messages: int = 0
    transfers: int = 0  # bodies arriving in fragments, idle (or given up) too long
    body_files: int = 0
    free_pages: int = 0  # handed back to the filesystem


class Retention:
    """Sweeps `tables` of what ended `retention` seconds ago; body files go to `remove`
    (which removes them once the commits that let them go are on disk). A body arriving
    in fragments goes once nothing came of it for `retention`, and at least `idle`
    seconds (the longest a request still under way may wait for the rest of its body)."""

    def __init__(
        self,
        tables: RetentionTables,
        remove: Callable[[list[str]], None],
        retention: float,
        complaints: Complaints,
        idle: float = 0.0,
    ) -> None:
        self.tables, self.remove, self.retention = tables, remove, retention
        self.complaints, self.idle = complaints, idle
        self.rows = dict.fromkeys(
            ("requests", "executions", "messages", "transfers", "pages"), FIRST_BATCH
        )
        self.swept = Swept()
        self.batch_timed: Callable[[float], None] = lambda seconds: None  # told each batch's

    @property
    def every(self) -> float:
        """Seconds between two sweeps: a quarter of the retention, within [0.5 s, 60 s]."""
        return min(SWEEP_AT_MOST_EVERY, max(self.retention / 4, 0.5))

    async def run(self) -> None:
        """Sweep every `every` seconds until cancelled; a sweep the store refuses (a full
        disk, a busy database) is logged now and then, and tried at the next."""
        while True:
            await trio.sleep(self.every)
            try:
                await self.sweep(time.time() - self.retention)
            except sqlite3.Error as exc:
                self.complaints.say("retention", "retention sweep failed (tried again): %s", exc)

    async def sweep(self, cutoff: float) -> None:
        """Remove everything that ended before `cutoff` (wall clock), batch by batch."""
        swept = self.swept
        swept.requests += await self._batches("requests", self._requests, cutoff)
        executions = self.tables.answered_executions
        swept.executions += await self._batches("executions", executions, cutoff)
        swept.messages += await self._batches("messages", self._messages, cutoff)
        idle_cutoff = cutoff - max(0.0, self.idle - self.retention)
        swept.transfers += await self._batches("transfers", self._transfers, idle_cutoff)
        swept.free_pages += await self._give_back()

    def _requests(self, cutoff: float, rows: int, size: int) -> int:
        removed, files = self.tables.ended_requests(cutoff, rows, size)
        self.remove(files)
        self.swept.body_files += len(files)
        return removed

    def _messages(self, cutoff: float, rows: int, size: int) -> int:
        return self.tables.unconsumed(Kind.DATAGRAM, cutoff, rows, size)

    def _transfers(self, cutoff: float, rows: int, size: int) -> int:
        idle = self.tables.idle_transfers(cutoff, rows)  # rows of a few bytes each
        files = [incoming_name(remote, transfer) for remote, transfer in idle]
        self.remove(files)  # those given up are gone already: no harm
        return len(idle)

    async def _give_back(self) -> int:
        """Hand back free pages beyond what a steady load reuses, once more than twice
        that many are free (not at every sweep: a page handed back costs a page moved);
        how many."""
        free, pages = self.tables.free_pages()
        keep = max(KEEP_FREE_PAGES, (pages - free) // 8)  # of the pages in use
        if free <= 2 * keep:
            return 0
        extra = free - keep

        def step(cutoff: float, rows: int, size: int) -> int:
            nonlocal extra
            given = self.tables.give_back(min(rows, extra))
            extra -= given
            return given

        return await self._batches("pages", step, 0.0)

    async def _batches(self, what: str, step: Step, cutoff: float) -> int:
        """Run `step` until it removes nothing more, letting the event loop run between
        two batches, each sized for `what` from how long the last took; how many it
        removed in all."""
        total = 0
        while True:
            rows = self.rows[what]
            began = time.perf_counter()
            removed = step(cutoff, rows, BATCH_BYTES)
            self._took(what, time.perf_counter() - began, removed)
            total += removed
            await trio.lowlevel.checkpoint()
            if not removed:
                return total

    def _took(self, what: str, seconds: float, removed: int) -> None:
        """Size the next batch of `what` so it takes about `BUDGET` seconds: halved after
        any slow one, doubled after a full and quick one."""
        self.batch_timed(seconds)
        rows = self.rows[what]
        if seconds > BUDGET:  # not below LEAST_BATCH: the bytes bound big rows anyway
            self.rows[what] = max(LEAST_BATCH, min(rows, removed) // 2)
        elif removed >= rows and seconds < BUDGET / 2:
            self.rows[what] = min(MOST_BATCH, rows * 2)
