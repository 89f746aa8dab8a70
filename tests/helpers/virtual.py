"""For tests of timer-driven parts under `trio.testing.MockClock(autojump_threshold=0)`.

With autojump, the clock jumps to the next timer whenever every task waits, including
while a worker thread runs: a blocking call sent to a thread would let virtual time race
ahead (and a `fail_after` fire). These parts take their blocking calls through an
`Offload`; `on_the_loop()` is one that runs every call on the event loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from mesh.state.database import Database
from mesh.state.durable import Durability
from mesh.state.offload import Offload

EPOCH = 1.7e9  # wall-clock seconds that virtual time 0 stands for


def on_the_loop() -> Offload:
    """An `Offload` that runs every call on the event loop, however long calls take."""
    offload = Offload(inline_below=math.inf)
    offload.typical = 0.0  # as if measured: it starts on the loop too
    return offload


def durability(database: Database, retry: float = 1.0) -> Durability:
    """Group commit on `database` with its fsyncs on the event loop."""
    return Durability(database, logging.getLogger("test"), retry, fsyncs=on_the_loop())


def wall() -> Callable[[], float]:
    """A wall clock that follows trio's (virtual) clock."""
    return lambda: EPOCH + trio.current_time()
