"""Blocking calls where they cost least: on the event loop while they are quick, in a
worker thread otherwise.

A round trip to a worker thread costs 5-20 ms on a busy machine (the thread must be
scheduled, then the loop must notice it is done), far more than an fsync of a small
file on a local disk. But a slow call (a disk that stalls, a network share) must never
hold up the event loop for long. `Offload` measures each call and decides the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

INLINE_BELOW = 0.002  # seconds: calls that typically take less run on the event loop


class Offload:
    """Runs one kind of blocking call on the event loop while such calls are measured to
    take under `inline_below` seconds (smoothed, so one slow call sends the next ones to
    a thread until they are quick again), else in a worker thread. Until one call has
    been measured, calls go to a thread; with `allowed` False, they always do (a folder
    on a network share, where a call may hang)."""

    def __init__(self, inline_below: float = INLINE_BELOW, allowed: bool = True) -> None:
        self.inline_below = inline_below
        self.allowed = allowed
        self.typical: float | None = None  # smoothed seconds per call (None: none yet)

    @property
    def inline(self) -> bool:
        """Whether the next call runs on the event loop."""
        return self.allowed and self.typical is not None and self.typical < self.inline_below

    async def run(self, call: Callable[[], T]) -> T:
        """`call()`, on the loop or in a thread (see the class); its exceptions pass. As
        with a thread, a cancellation either stops it before it starts or lets it finish
        and return."""
        took: list[float] = []

        def timed() -> T:  # its own time, not the thread round trip's
            began = time.perf_counter()
            try:
                return call()
            finally:
                took.append(time.perf_counter() - began)

        try:
            if not self.inline:
                return await trio.to_thread.run_sync(timed)
            await trio.lowlevel.checkpoint_if_cancelled()
            result = timed()
            await trio.lowlevel.cancel_shielded_checkpoint()  # let others run, as a thread would
            return result
        finally:
            if took:
                self._measured(took[0])

    def _measured(self, took: float) -> None:
        self.typical = took if self.typical is None else 0.8 * self.typical + 0.2 * took
