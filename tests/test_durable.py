"""Group commit on a real store: one fsync covers every commit made before it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.state.durable import Durability
from mesh.state.links import OutboundRow
from mesh.state.store import Store
from tests.helpers.virtual import durability


def commit(store: Store, seq: int) -> None:
    store.links.add_outbound("bravo", [OutboundRow(seq, b"x")], 0.0)


async def test_waiters_at_the_same_time_share_one_fsync(tmp_path: Path) -> None:
    store = Store(tmp_path)
    durable = Durability(store.database, logging.getLogger("test"))
    with trio.fail_after(10):
        await durable.synced()
        assert durable.syncs == 0  # nothing committed since it began: nothing to do
        for seq in range(1, 4):
            commit(store, seq)
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(durable.synced)
        assert durable.syncs == 1
        await durable.synced()
        assert durable.syncs == 1  # no commit since: no second fsync
        commit(store, 4)
        await durable.synced()
        assert durable.syncs == 2
    store.close()


async def test_a_commit_made_while_an_fsync_runs_waits_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    durable = Durability(store.database, logging.getLogger("test"))
    entered, release = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = store.database.sync_log

    def slow_sync() -> None:  # runs in a thread: the first one waits for the test
        if durable.syncs == 0:
            trio.from_thread.run_sync(entered.set, trio_token=token)
            trio.from_thread.run(release.wait, trio_token=token)
        real()

    monkeypatch.setattr(store.database, "sync_log", slow_sync)
    with trio.fail_after(10):
        commit(store, 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(durable.synced)
            await entered.wait()
            commit(store, 2)  # after that fsync began: it may not be covered
            second = trio.Event()

            async def wait_second() -> None:
                await durable.synced()
                second.set()

            nursery.start_soon(wait_second)
            await trio.testing.wait_all_tasks_blocked()
            assert not second.is_set()
            release.set()
        assert durable.syncs == 2
    store.close()


async def test_a_failing_fsync_is_logged_and_retried_and_nothing_passes_meanwhile(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Store(tmp_path)
    durable = durability(store.database, retry=1.0)  # its fsyncs on the loop: virtual time
    failures = [OSError(5, "Input/output error")] * 3
    real = store.database.sync_log

    def flaky() -> None:
        if failures:
            raise failures.pop()
        real()

    monkeypatch.setattr(store.database, "sync_log", flaky)
    commit(store, 1)
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        passed = False

        async def wait() -> None:
            nonlocal passed
            await durable.synced()
            passed = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(2.5)  # two failures and their retries so far
            assert not passed and durable.syncs == 0
        assert trio.current_time() == 3.0  # three failures, a retry a second after each
    assert durable.syncs == 1
    errors = [r for r in caplog.records if "cannot make the state durable" in r.message]
    assert len(errors) == 1  # said once, not at every retry
    assert any("durable again" in r.message for r in caplog.records)
    store.close()


async def test_a_hook_runs_once_what_was_committed_before_it_is_on_disk(tmp_path: Path) -> None:
    store = Store(tmp_path)
    durable = Durability(store.database, logging.getLogger("test"))
    ran: list[str] = []
    durable.after_sync(lambda: ran.append("nothing to wait for"))
    assert ran == ["nothing to wait for"]
    commit(store, 1)
    durable.after_sync(lambda: ran.append("after the next fsync"))
    assert ran == ["nothing to wait for"]
    with trio.fail_after(10):
        await durable.synced()  # anyone's: the links' before a file, say
    assert ran == ["nothing to wait for", "after the next fsync"]
    store.close()
