"""Free space where a peer keeps things (its state, its outbox), measured in a worker
thread every few seconds, so that asking (``/mesh/health``, open to all, and
``/metrics``) never waits on a disk: a network share that hangs holds up one thread, not
the peer."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import trio

MEASURE_EVERY = 5.0  # seconds between two measurements
GIVE_UP_AFTER = 5.0  # seconds a measurement may take before the place counts as unreachable


def free_bytes(folder: Path) -> int | None:
    """Bytes free for us where `folder` is; None if it cannot be reached. Blocking."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class FreeSpace:
    """The free bytes of each of `places` (name: folder), as last measured: None for one
    that could not be reached. Measured once at start (blocking), then by `run`."""

    def __init__(self, places: Mapping[str, Path]) -> None:
        self.places = dict(places)
        self.free: dict[str, int | None] = {name: free_bytes(p) for name, p in places.items()}

    async def run(self) -> None:
        """Measure every `MEASURE_EVERY` seconds until cancelled."""
        while True:
            await trio.sleep(MEASURE_EVERY)
            for name, folder in self.places.items():
                self.free[name] = None
                with trio.move_on_after(GIVE_UP_AFTER):
                    self.free[name] = await trio.to_thread.run_sync(
                        free_bytes, folder, abandon_on_cancel=True
                    )
