"""The forwarder in process: two peers in this trio run over a real folder, and a real
upstream HTTP server on loopback (no subprocesses). A request is submitted at alpha's
`Requests`, forwarded by bravo, answered back."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import watchfiles

from mesh.config import keys
from mesh.config.roster import load_roster
from mesh.http.asgi import Receive, Scope, Send, lifespan, read_body
from mesh.http.forwarder import Forwarder
from mesh.http.relaying import Relay
from mesh.peer import Peer, open_peers
from mesh.pipe.bodies import Body, incoming_name
from mesh.pipe.streams import ABANDON, ENDED
from mesh.proto.lifecycle import COMPLETED, FAILED, RequestState
from mesh.state.requests import NOBODY, Asker
from mesh.wire.messages import Control, Datagram, Fragment, Request, Response
from tests.helpers.ports import free_ports
from tests.helpers.processes import peer, served, write_roster

MiB = 1 << 20


class Upstream:
    """An ASGI upstream that answers `status` with `body` (after `delay` seconds),
    keeping what it received."""

    def __init__(self, status: int, body: bytes, delay: float = 0.0) -> None:
        self.status, self.body, self.delay = status, body, delay
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 64 * MiB)
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.received.append({**scope, "headers": headers, "body": body})
        await trio.sleep(self.delay)  # the upstream's own pace
        length = str(len(self.body)).encode()
        start = {"type": "http.response.start", "status": self.status}
        await send({**start, "headers": [(b"content-length", length)]})
        await send({"type": "http.response.body", "body": self.body})


@asynccontextmanager
async def mesh(
    tmp_path: Path,
    upstream: Upstream,
    alpha: dict[str, Any] | None = None,
    bravo: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Peer]]:
    """alpha and bravo running in this trio run, bravo forwarding to `upstream`."""
    alpha_port, bravo_port, upstream_port = free_ports(3)
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"], **(alpha or {})),
            "bravo": peer(
                bravo_port, ["alpha"], upstream=f"http://127.0.0.1:{upstream_port}", **(bravo or {})
            ),
        },
        defaults={"heartbeat": "100ms", "linger": "0s", "fragment_size": "1MiB"},
    )
    async with started(path, upstream, upstream_port) as peers:
        yield peers


@asynccontextmanager
async def with_carol(tmp_path: Path, upstream: Upstream) -> AsyncIterator[dict[str, Peer]]:
    """alpha, bravo (forwarding to `upstream`) and carol, a peer alpha also talks to,
    running in this trio run."""
    alpha_port, bravo_port, carol_port, upstream_port = free_ports(4)
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo", "carol"]),
            "bravo": peer(bravo_port, ["alpha"], upstream=f"http://127.0.0.1:{upstream_port}"),
            "carol": peer(carol_port, ["alpha"]),
        },
        defaults={"heartbeat": "100ms", "linger": "0s"},
    )
    async with started(path, upstream, upstream_port) as peers:
        yield peers


@asynccontextmanager
async def started(
    path: Path, upstream: Upstream, upstream_port: int
) -> AsyncIterator[dict[str, Peer]]:
    """The peers of the roster at `path` (keys made for them), and `upstream`, running."""
    roster = load_roster(path)
    keys.keygen(roster.keys, list(roster.peers))
    async with served(upstream, upstream_port), trio.open_nursery() as nursery:
        peers = {p.name: p for p in open_peers(roster, [])}
        for running in peers.values():
            await nursery.start(running.run)
        yield peers
        nursery.cancel_scope.cancel()


async def call(alpha: Peer, method: str, target: str, body: bytes) -> tuple[str, RequestState]:
    """Submit at alpha, wait for the end; the request's id and final state."""
    headers = ((b"content-type", b"text/plain"),)
    request_id = await alpha.requests.submit("bravo", method, target, headers, Body.of(body), 60)
    record = await alpha.requests.wait(request_id, 30)
    assert record is not None and record.done, record
    return request_id, record.state


async def test_a_post_is_forwarded_once_with_what_the_far_side_adds(tmp_path: Path) -> None:
    upstream = Upstream(201, b"made")
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream) as peers:
            request_id, state = await call(peers["alpha"], "POST", "/orders?x=1", b"order")
            record = peers["alpha"].requests.get(request_id)
            assert record is not None and state is COMPLETED
            assert (record.status, record.body) == (201, b"made")
            assert [s for s, _ in record.events][-3:] == ["forwarded", "responded", "completed"]
            assert peers["bravo"].store.executions.unfinished() == []
    [seen] = upstream.received  # exactly once
    assert (seen["method"], seen["path"], seen["query_string"]) == ("POST", "/orders", b"x=1")
    assert seen["body"] == b"order"
    assert seen["headers"]["via"] == "1.1 mesh-bravo"
    assert seen["headers"]["content-length"] == "5"
    assert seen["headers"]["content-type"] == "text/plain"


async def test_an_answer_over_the_callers_body_limit_fails_the_request(tmp_path: Path) -> None:
    upstream = Upstream(200, b"x" * (3 * MiB))
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream, {"body_limit": "2MiB"}) as peers:
            request_id, state = await call(peers["alpha"], "GET", "/big", b"")
            record = peers["alpha"].requests.get(request_id)
    assert record is not None and state is FAILED and record.status == 502
    assert [s for s, _ in record.events][-2:] == ["responded", "failed"]
    assert "over this peer's body_limit" in json.loads(record.body)["title"]
    assert len(upstream.received) == 1


async def test_a_request_the_far_side_cannot_read_is_refused_502(tmp_path: Path) -> None:
    """A request the ingress would have refused (1,100 headers), sent anyway: bravo
    cannot read it, refuses it (502) by its id, never forwards it; alpha's request ends."""
    upstream = Upstream(200, b"never")
    headers = tuple((b"x-h%d" % n, b"1") for n in range(1100))
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream) as peers:
            alpha = peers["alpha"]
            request_id = await alpha.requests.submit(
                "bravo", "GET", "/x", headers, Body.of(b""), 60
            )
            record = await alpha.requests.wait(request_id, 20)
    assert record is not None and record.state is FAILED and record.status == 502
    assert "bravo could not read the request" in json.loads(record.body)["title"]
    assert dict(record.headers)[b"mesh-problem"] == b"bravo"
    assert upstream.received == []


async def test_an_upstream_silent_past_its_timeout_is_asked_once(tmp_path: Path) -> None:
    """A GET the upstream sits on past `upstream_timeout` is a 502 at once, not sent
    again (it would ask the upstream to do the work twice, for as long as the deadline)."""
    upstream = Upstream(200, b"late", delay=3.0)
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream, bravo={"upstream_timeout": "300ms"}) as peers:
            request_id, state = await call(peers["alpha"], "GET", "/slow", b"")
            record = peers["alpha"].requests.get(request_id)
    assert record is not None and state is FAILED and record.status == 502
    assert "no data from the upstream" in json.loads(record.body)["title"]
    assert len(upstream.received) == 1


async def test_an_answer_from_another_peer_than_the_request_went_to_is_dropped(
    tmp_path: Path,
) -> None:
    """carol, a peer alpha also talks to, answers (and sends a streamed head for) the
    request alpha sent bravo: neither is taken, and bravo's answer is the one kept."""
    upstream = Upstream(200, b"from bravo", delay=1.0)
    with trio.fail_after(30):
        async with with_carol(tmp_path, upstream) as peers:
            alpha, carol = peers["alpha"], peers["carol"].requests.sending
            request_id = await alpha.requests.submit("bravo", "GET", "/x", (), Body.of(b""), 60)
            head = Response(request_id, 200, (), b"", body_id="c" * 32)
            await carol.send("alpha", head)
            await carol.send("alpha", Response(request_id, 200, (), b"forged by carol"))
            record = await alpha.requests.wait(request_id, 20)
            assert record is not None and (record.state, record.body) == (COMPLETED, b"from bravo")


async def test_a_failure_nothing_foresaw_fails_its_request_not_the_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bringing an answer back raises what no error map knows: that request ends with
    bravo's 502 (its outcome unknown, for a POST), and the next one is served."""
    relay_answer = Relay.answer

    async def failing(self: Relay, asker: str, response: Response, *rest: Any) -> Any:
        if response.status == 201:
            raise RuntimeError("a bug")
        return await relay_answer(self, asker, response, *rest)

    monkeypatch.setattr(Relay, "answer", failing)
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(201, b"made")) as peers:
            request_id, state = await call(peers["alpha"], "POST", "/x", b"")
            record = peers["alpha"].requests.get(request_id)
            assert record is not None and (state, record.status) == (FAILED, 502)
            assert (b"mesh-outcome", b"unknown") in record.headers
            monkeypatch.setattr(Relay, "answer", relay_answer)
            _, state = await call(peers["alpha"], "POST", "/x", b"")
            assert state is COMPLETED


class Counting(Upstream):
    """An upstream that counts the requests that reach it at all (body read or not)."""

    def __init__(self) -> None:
        super().__init__(200, b"")
        self.started = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.started += 1
        await super().__call__(scope, receive, send)


async def test_a_request_whose_body_was_given_up_before_it_was_taken_never_reaches_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that went ahead of its body, and the word that the body was given up
    (its caller left), both here before bravo takes the request: bravo answers it
    without opening a connection to the upstream for a body that will never come."""
    upstream = Counting()
    transfer = "a" * 32
    answers: list[Response] = []
    answer = Forwarder._answer

    async def noted(self: Forwarder, asker: str, request: Request, outcome: Any) -> None:
        answers.append(outcome.response)
        await answer(self, asker, request, outcome)

    monkeypatch.setattr(Forwarder, "_answer", noted)
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream) as peers:
            alpha = peers["alpha"]
            request = Request("b" * 32, "POST", "/x", (), b"", time.time() + 60, 8 * MiB, transfer)
            with alpha.store.database.transaction():  # one file, in this order
                await alpha.links.sending.send("bravo", request)
                await alpha.links.sending.send("bravo", Control(ABANDON, {"transfer": transfer}))
            answered = alpha.links.protocol.status  # bravo's first message: its answer
            while answered("bravo").received_upto < 1:
                await alpha.links.receiving.delivered()
    assert upstream.started == 0
    [refused] = answers
    assert refused.status == 400 and "body up" in json.loads(refused.body)["title"]


async def test_forwarded_keeps_the_far_peers_time_when_it_comes_with_the_answer(
    tmp_path: Path,
) -> None:
    """bravo's note that it forwarded the request waits for its next file, which is the
    answer's (its heartbeat is far off): the note is read first, so ``forwarded``
    carries bravo's time, the upstream's 0.3 s before ``responded``."""
    with trio.fail_after(30):
        async with mesh(
            tmp_path, Upstream(200, b"ok", delay=0.3), bravo={"heartbeat": "10s"}
        ) as peers:
            request_id, state = await call(peers["alpha"], "POST", "/x", b"")
            record = peers["alpha"].requests.get(request_id)
    assert record is not None and state is COMPLETED
    at = dict(record.events)
    assert at["responded"] - at["forwarded"] >= 0.25, record.events


async def test_an_answer_whose_body_never_ends_is_dropped_when_its_request_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bravo's answer names a body of 8 MiB, of which one piece ever comes (its sender
    stopped for good: wiped, say): once the request expires, alpha lets the body go
    (its file and its transfer), instead of waiting for the rest for ever."""
    monkeypatch.setattr("mesh.http.requests.ANSWER_GRACE", 0.0)
    transfer = "c" * 32
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"late", delay=60)) as peers:
            alpha, bravo = peers["alpha"], peers["bravo"].links.sending
            request_id = await alpha.requests.submit("bravo", "GET", "/x", (), Body.of(b""), 1)
            answer = Response(request_id, 200, (), b"", 8 * MiB, transfer)
            piece = Fragment(request_id, transfer, 0, 0, 8 * MiB, b"x" * 1024)
            await bravo.send("alpha", piece)
            await bravo.send("alpha", answer)
            body = alpha.bodies.path(incoming_name("bravo", transfer))
            while not body.exists():
                await alpha.links.receiving.delivered()
            record = await alpha.requests.wait(request_id, 20)
            assert record is not None and (record.state, record.status) == (FAILED, 504)
            async for _ in watchfiles.awatch(body.parent, yield_on_timeout=True, rust_timeout=100):
                if not body.exists():  # removed once the request is seen ended
                    break
            assert alpha.store.links.receiving() == [] and alpha.store.links.delivered(0) == []


async def test_a_note_with_no_time_or_from_another_peer_changes_nothing_it_should_not(
    tmp_path: Path,
) -> None:
    """bravo's notes whose time is no time (a string, a list, NaN) are taken with alpha's
    time, and the peer goes on (one stopped it, at every start); a note from carol on
    the request alpha sent bravo is dropped."""
    with trio.fail_after(30):
        async with with_carol(tmp_path, Upstream(200, b"ok", delay=1.0)) as peers:
            alpha = peers["alpha"]
            request_id = await alpha.requests.submit("bravo", "GET", "/x", (), Body.of(b""), 60)
            forged = Control("forwarded", {"id": request_id, "at": 1.0})
            await peers["carol"].requests.sending.send("alpha", forged)
            for at in ("soon", [1, 2], float("nan"), True):
                note = Control("forwarded", {"id": request_id, "at": at})
                await peers["bravo"].requests.sending.send("alpha", note)
            record = await alpha.requests.wait(request_id, 20)
            assert alpha.store.links.delivered(0) == []  # every note consumed
    assert record is not None and (record.state, record.body) == (COMPLETED, b"ok")
    at = dict(record.events)
    assert at["forwarded"] > 1e9  # not carol's 1.0, nor anything that is no time


async def test_a_body_whose_length_is_told_at_its_end_goes_to_the_upstream_chunked(
    tmp_path: Path,
) -> None:
    """A request gone ahead of a body whose size its caller did not say: the upstream
    gets it chunked (no length), whole, once its sender tells its length at the end,
    whether that comes after the last piece, before it, or with no piece at all. The
    first goes whole with its length: the upstream has not yet answered in HTTP/1.1, so
    it is not known to take chunks (RFC 9112, 6.1)."""
    upstream = Upstream(200, b"ok")
    pieces = [os.urandom(MiB // 2) for _ in range(3)]
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream) as peers:
            alpha = peers["alpha"]
            for parts, told_after in ((pieces, 3), (pieces, 2), ([], 0)):
                request_id, _ = await _unsized(alpha, parts, told_after)
                record = await alpha.requests.wait(request_id, 20)
                assert record is not None and record.state is COMPLETED, record
                assert record.status == 200
    whole = b"".join(pieces)
    assert [each["body"] for each in upstream.received] == [whole, whole, b""]
    first, *then = upstream.received
    assert first["headers"]["content-length"] == str(len(whole))
    assert "transfer-encoding" not in first["headers"]
    for each in then:
        assert each["headers"]["transfer-encoding"] == "chunked"
        assert "content-length" not in each["headers"]


async def test_a_body_of_a_size_not_said_over_the_far_limit_is_a_413_never_whole_upstream(
    tmp_path: Path,
) -> None:
    """bravo streams a body of a size not said to its upstream as it comes; the piece
    that takes it past bravo's body limit is refused: the upstream's connection is cut
    (it never gets a whole request) and the answer is bravo's 413, at once. A length
    told over the limit is refused the same way, before any piece."""
    upstream = Upstream(200, b"ok")
    pieces = [os.urandom(MiB // 2) for _ in range(3)]
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream, bravo={"body_limit": "1MiB"}) as peers:
            alpha = peers["alpha"]
            for parts, told_after in ((pieces, 3), (pieces, 0)):
                request_id, _ = await _unsized(alpha, parts, told_after)
                record = await alpha.requests.wait(request_id, 20)
                assert record is not None and record.done and record.status == 413, record
                assert "bravo's body_limit" in json.loads(record.body or b"{}")["title"]
            assert peers["bravo"].store.links.receiving() == []
    assert upstream.received == []


async def _unsized(alpha: Peer, parts: list[bytes], told_after: int) -> tuple[str, str]:
    """Send a request to bravo ahead of a body of `parts`, its size not said: its
    length told after `told_after` of them; its id and its body's transfer."""
    transfer, request_id = uuid.uuid4().hex, uuid.uuid4().hex
    request = Request(request_id, "PUT", "/x", (), b"", time.time() + 60, None, transfer)
    await alpha.requests.submit_request("bravo", request, NOBODY)
    sending, offset = alpha.links.sending, 0
    ended = Control(ENDED, {"transfer": transfer, "length": sum(map(len, parts))})
    for index, part in enumerate(parts):
        if index == told_after:
            await sending.send("bravo", ended)
        await sending.send("bravo", Fragment(request_id, transfer, index, offset, None, part))
        offset += len(part)
    if told_after == len(parts):
        await sending.send("bravo", ended)
    return request_id, transfer


async def test_the_poster_is_woken_only_when_posts_were_queued(tmp_path: Path) -> None:
    """A request with no callback nor events URL queues no post: the poster is not told
    to look (it looked for due posts at each of its events); one with an events URL
    queues one per event, and the poster is told."""
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"ok")) as peers:
            alpha = peers["alpha"]
            told: list[int] = []
            alpha.requests.posted.kick = lambda: told.append(alpha.store.posts.added)
            await call(alpha, "POST", "/x", b"")
            assert told == []
            events = Asker(events_url="http://127.0.0.1:9/events")  # never answers: no matter
            request_id = await alpha.requests.submit(
                "bravo", "POST", "/x", (), Body.of(b""), 60, events
            )
            record = await alpha.requests.wait(request_id, 20)
            assert record is not None and record.done
            assert told and told == sorted(set(told))  # each time, new posts


@pytest.mark.parametrize(
    "told",
    [[3 * MiB // 2, 10], [MiB]],
    ids=["two-lengths", "less-than-came"],
)
async def test_a_body_told_two_lengths_or_less_than_came_is_dropped_not_forwarded_short(
    tmp_path: Path, told: list[int]
) -> None:
    """A faulty sender's body of a size not said, told two lengths, or a length short
    of what came (all in one file): bravo drops it as broken, answers 502, and the
    upstream never gets a whole request (it did get it cut short, as whole)."""
    upstream = Upstream(200, b"ok")
    pieces = [os.urandom(MiB // 2) for _ in range(3)]
    with trio.fail_after(30):
        async with mesh(tmp_path, upstream) as peers:
            alpha = peers["alpha"]
            transfer, request_id = uuid.uuid4().hex, uuid.uuid4().hex
            request = Request(request_id, "PUT", "/x", (), b"", time.time() + 60, None, transfer)
            await alpha.requests.submit_request("bravo", request, NOBODY)
            sending, offset = alpha.links.sending, 0
            with alpha.store.database.transaction():  # one file
                for index, piece in enumerate(pieces):
                    fragment = Fragment(request_id, transfer, index, offset, None, piece)
                    await sending.send("bravo", fragment)
                    offset += len(piece)
                for length in told:
                    args = {"transfer": transfer, "length": length}
                    await sending.send("bravo", Control(ENDED, args))
            record = await alpha.requests.wait(request_id, 20)
            assert record is not None and record.done and record.status == 502, record
    assert upstream.received == []


async def test_pieces_of_a_body_dropped_as_over_the_limit_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    """Pieces of a body bravo dropped as over its limit that come after it answered 413
    (and forgot the body) are dropped quietly: no row of it comes back."""
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"ok"), bravo={"body_limit": "1MiB"}) as peers:
            alpha, bravo = peers["alpha"], peers["bravo"]
            pieces = [os.urandom(MiB // 2) for _ in range(3)]
            request_id, transfer = await _unsized(alpha, pieces, 3)
            record = await alpha.requests.wait(request_id, 20)
            assert record is not None and record.status == 413, record
            late = Fragment(request_id, transfer, 3, 3 * MiB // 2, None, b"x" * 100)
            await alpha.links.sending.send("bravo", late)
            marker = await alpha.links.sending.send("bravo", Datagram(uuid.uuid4().hex, b""))
            while bravo.links.protocol.status("alpha").received_upto < marker.seq:
                await bravo.links.receiving.delivered()
            rows = bravo.store.database.connection.execute("SELECT * FROM transfers")
            assert rows.fetchall() == []
