"""Free space, measured off the event loop: a place whose disk hangs counts as
unreachable after a while, and holds up no one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.pipe import space
from mesh.pipe.space import MEASURE_EVERY, FreeSpace


async def test_a_hanging_disk_counts_as_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    measured = FreeSpace({"state": tmp_path, "outbox": tmp_path / "gone"})
    assert (measured.free["state"] or 0) > 0 and measured.free["outbox"] is None
    hung = threading.Event()
    monkeypatch.setattr(space, "free_bytes", lambda folder: hung.wait() and None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(measured.run)
        await trio.sleep(MEASURE_EVERY + space.GIVE_UP_AFTER + 1)
        assert measured.free["state"] is None  # the loop went on meanwhile
        nursery.cancel_scope.cancel()
    hung.set()
