"""A waiting caller's answer whose body its sender gave up: cut once the answer saying
why has come (so the request's record says why when the caller sees the cut), or after
`ENDING_GRACE` seconds without it. The peers run in this process; bravo's part is played
by hand on its links (its upstream never answers in time)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio

from mesh.http.requests import Requests
from mesh.peer import Peer
from mesh.pipe.streams import ABANDON
from mesh.state.requests import RequestRecord
from mesh.wire.messages import Control, Fragment, Response
from tests.test_forwarder import Upstream, mesh


class Caller:
    """A caller waiting for an answer at alpha: what came of its body, and whether its
    connection was cut (with the request's record as it stood then)."""

    def __init__(self, alpha: Peer) -> None:
        self.alpha, self.got, self.cut_when_done = alpha, b"", None
        self.came = trio.Event()  # the first piece of the body
        self.ended = trio.Event()
        self.request_id = ""

    async def call(self) -> None:
        base = f"http://{self.alpha.settings.listen}"
        async with (
            httpx.AsyncClient(base_url=base, trust_env=False, timeout=30) as client,
            client.stream("GET", "/bravo/x") as reply,
        ):
            try:
                async for piece in reply.aiter_raw():
                    self.got += piece
                    self.came.set()
            except httpx.RemoteProtocolError:
                record = self.alpha.requests.get(self.request_id)
                self.cut_when_done = record is not None and record.done
        self.ended.set()


async def _streaming_then_given_up(alpha: Peer, bravo: Peer, caller: Caller) -> str:
    """Start `caller`'s request; answer it from bravo with a head and a piece of body,
    then give the body up; the transfer."""
    events = alpha.requests.events.subscribe()
    caller.request_id = (await events.receive()).request_id
    transfer, sending = uuid.uuid4().hex, bravo.links.sending
    await sending.send("alpha", Response(caller.request_id, 200, (), b"", None, transfer))
    await sending.send("alpha", Fragment(caller.request_id, transfer, 0, 0, None, b"first"))
    await caller.came.wait()
    await sending.send("alpha", Control(ABANDON, {"transfer": transfer}))
    return transfer


async def _given_up_then(
    tmp_path: Path, meanwhile: Callable[[Peer, Caller], Awaitable[None]]
) -> tuple[Caller, RequestRecord | None]:
    """A caller's answer streaming from bravo, its body given up; then `meanwhile` (with
    bravo), until the caller's connection ends: the caller, and the request's record."""
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"late", delay=60)) as peers:
            alpha, bravo = peers["alpha"], peers["bravo"]
            caller = Caller(alpha)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller.call)
                await _streaming_then_given_up(alpha, bravo, caller)
                await meanwhile(bravo, caller)
                await caller.ended.wait()
            return caller, alpha.requests.get(caller.request_id)


async def test_a_body_given_up_is_cut_once_the_answer_saying_why_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamer waits for the request's end once the body is given up: the far
    side's 502 comes after, and only then is the caller cut, the record saying why."""
    waiting = trio.Event()
    wait = Requests.wait

    async def noted(self: Requests, request_id: str, seconds: float) -> object:
        waiting.set()
        return await wait(self, request_id, seconds)

    async def answered(bravo: Peer, caller: Caller) -> None:
        await waiting.wait()  # given up, and not cut yet: now the answer
        why = Response(caller.request_id, 502, (), b'{"title": "broke off"}')
        await bravo.links.sending.send("alpha", why)

    monkeypatch.setattr(Requests, "wait", noted)
    monkeypatch.setattr("mesh.http.streaming.ENDING_GRACE", 60.0)  # the end cuts, not this
    caller, record = await _given_up_then(tmp_path, answered)
    assert caller.got == b"first" and caller.cut_when_done is True
    assert record is not None and record.status == 502


async def test_a_body_given_up_is_cut_after_the_grace_when_no_answer_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer saying why comes: the caller is cut all the same, `ENDING_GRACE`
    seconds on, with what came of the body."""

    async def nothing(bravo: Peer, caller: Caller) -> None:
        pass

    monkeypatch.setattr("mesh.http.streaming.ENDING_GRACE", 0.2)
    caller, _ = await _given_up_then(tmp_path, nothing)
    assert caller.got == b"first" and caller.cut_when_done is False


async def test_a_body_given_up_before_its_caller_follows_it_is_cut_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The head, a piece of the body and the giving up come in one file, so the body is
    given up (and what came of it dropped) before the caller's answer follows it: the
    caller is cut `ENDING_GRACE` seconds on when no answer saying why comes, as when it
    followed the body from its start (it waited for the request's deadline, an hour by
    default, its answer's body never ending)."""
    monkeypatch.setattr("mesh.http.streaming.ENDING_GRACE", 0.2)
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"late", delay=60)) as peers:
            alpha, bravo = peers["alpha"], peers["bravo"]
            caller = Caller(alpha)
            async with trio.open_nursery() as nursery:
                events = alpha.requests.events.subscribe()
                nursery.start_soon(caller.call)
                caller.request_id = (await events.receive()).request_id
                transfer, sending = uuid.uuid4().hex, bravo.links.sending
                with sending.database.transaction():  # one commit: one file
                    head = Response(caller.request_id, 200, (), b"", None, transfer)
                    await sending.send("alpha", head)
                    piece = Fragment(caller.request_id, transfer, 0, 0, None, b"first")
                    await sending.send("alpha", piece)
                    await sending.send("alpha", Control(ABANDON, {"transfer": transfer}))
                await caller.ended.wait()
    assert caller.got == b"" and caller.cut_when_done is False
    why = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(why) == 1 and why[0].endswith("cut short: its sender gave it up"), why
