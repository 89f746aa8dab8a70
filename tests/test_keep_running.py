"""A part of a peer that fails on an OSError starts again and never ends the peer; its
complaints are logged now and then (virtual time)."""

from __future__ import annotations

import logging

import pytest
import trio

from mesh.errors import COMPLAIN_EVERY, Complaints
from mesh.peer import RESTART_AFTER, keep_running


class Flaky:
    """Fails with `error` `times` times (inside a nursery, as real parts do), then ends."""

    def __init__(self, error: Exception, times: int) -> None:
        self.error, self.times, self.runs = error, times, 0

    async def run(self) -> None:
        self.runs += 1
        async with trio.open_nursery():
            if self.runs <= self.times:
                raise self.error


async def test_an_os_error_restarts_the_part(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    part = Flaky(OSError(24, "Too many open files"), times=3)
    complaints = Complaints(logging.getLogger("mesh.test"), "alpha")
    started = trio.current_time()
    with caplog.at_level(logging.WARNING):
        await keep_running(part, complaints)
    assert part.runs == 4 and trio.current_time() - started == pytest.approx(3 * RESTART_AFTER)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["alpha: Flaky stopped ([Errno 24] Too many open files); starting it again"]


async def test_any_other_error_still_ends_it() -> None:
    complaints = Complaints(logging.getLogger("mesh.test"), "alpha")
    with pytest.RaisesGroup(ValueError, flatten_subgroups=True):
        await keep_running(Flaky(ValueError("a bug"), times=1), complaints)


def test_complaints_are_rate_limited_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("mesh.errors.time.monotonic", lambda: now[0])
    complaints = Complaints(logging.getLogger("mesh.test"), "alpha")
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            complaints.say("disk", "cannot write: %s", n)
        complaints.say("other", "else")
        now[0] += COMPLAIN_EVERY
        complaints.say("disk", "cannot write: %s", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "alpha: cannot write: 0",
        "alpha: else",
        "alpha: cannot write: 5 (4 more like it since)",
    ]
