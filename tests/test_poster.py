"""The poster's retries, in process, in virtual time (`MockClock`, autojump): a real
database, real HTTP to a real socket on loopback that hangs up on every POST."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.http.poster import Poster
from mesh.pipe.bodies import Bodies
from mesh.state.store import Store
from tests.helpers.virtual import durability, wall


async def test_a_failing_callback_is_retried_with_backoff_then_given_up_at_its_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    store = Store(tmp_path)
    clock = wall()
    tries: list[float] = []

    async def hang_up(stream: trio.SocketStream) -> None:
        tries.append(trio.current_time())
        await stream.aclose()

    bodies = Bodies(tmp_path / "bodies")
    poster = Poster("alpha", store.posts, bodies, durability(store.database), wall=clock)
    caplog.set_level(logging.WARNING)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            with store.database.transaction():
                url = f"http://127.0.0.1:{port}/hook?token=SECRET"
                store.posts.add("a" * 32, url, [], b"the answer", clock() + 10.0, clock())
            nursery.start_soon(poster.run)
            while store.posts.next_due() is not None:  # noqa: ASYNC110 (virtual time)
                await trio.sleep(0.25)
            nursery.cancel_scope.cancel()
    assert tries == [0.0, 0.5, 1.5, 3.5, 7.5]  # then due at 15.5: past its deadline
    assert trio.current_time() == pytest.approx(15.5, abs=0.25)
    [gave_up] = [r.message for r in caplog.records if "gave up posting" in r.message]
    assert "5 attempts" in gave_up and f"http://127.0.0.1:{port} " in gave_up
    assert "SECRET" not in gave_up and "/hook" not in gave_up  # may hold a caller's secret
    store.close()
