"""Blocking calls on the loop while quick, in a thread otherwise."""

from __future__ import annotations

import threading
from functools import partial
from types import SimpleNamespace

import pytest
import trio

from mesh.state import offload as offload_module
from mesh.state.offload import INLINE_BELOW, Offload


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The clock `Offload` measures with, moved on by hand (trio keeps the real one)."""
    now = [0.0]
    monkeypatch.setattr(offload_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


async def test_quick_calls_run_on_the_loop_and_a_slow_one_sends_the_next_to_a_thread(
    clock: list[float],
) -> None:
    offload = Offload()
    on_the_loop: list[bool] = []

    def call(cost: float) -> float:
        on_the_loop.append(threading.current_thread() is threading.main_thread())
        clock[0] += cost
        return cost

    with trio.fail_after(10):
        for cost in (0.0001, 0.0001, 0.5, 0.0001, 0.0001):
            assert await offload.run(partial(call, cost)) == cost
    # The first (nothing measured yet) and those after the slow one ran in a thread.
    assert on_the_loop == [False, True, True, False, False]
    assert offload.typical is not None and offload.typical > INLINE_BELOW


async def test_calls_not_allowed_on_the_loop_always_go_to_a_thread(clock: list[float]) -> None:
    offload = Offload(allowed=False)
    with trio.fail_after(10):
        for _ in range(3):
            assert not await offload.run(
                lambda: threading.current_thread() is threading.main_thread()
            )
    assert not offload.inline


async def test_a_failing_call_is_measured_and_raises(clock: list[float]) -> None:
    offload = Offload()

    def fails() -> None:
        clock[0] += 0.0001
        raise OSError(5, "Input/output error")

    with trio.fail_after(10):
        for _ in range(2):  # in a thread, then on the loop
            with pytest.raises(OSError):
                await offload.run(fails)
    assert offload.inline


async def test_a_call_cancelled_before_it_starts_does_not_run(clock: list[float]) -> None:
    offload = Offload()
    ran: list[str] = []
    with trio.fail_after(10):
        await offload.run(lambda: ran.append("measured"))  # now it runs on the loop
        assert offload.inline
        with trio.CancelScope() as scope:
            scope.cancel()
            await offload.run(lambda: ran.append("cancelled"))
    assert ran == ["measured"]
