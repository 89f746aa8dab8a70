"""Bodies of tens of MiB through `mesh up` processes and faulty mirrors: byte-identical,
in fragments, with each peer's memory bounded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mesh.http.asgi import body_chunks, lifespan, read_body
from mesh.http.problems import HTTPProblem
from mesh.pipe.pieces import parse
from tests.helpers.ports import Ports
from tests.helpers.processes import MeshProcess, keygen, mesh_up, mirror, peer, served, write_roster

MiB = 1 << 20


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body (``/echo``) or answers N seeded random bytes (``/big/N``), saying
    its length (chunked instead with ``?chunked``: the answer then streams)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = b"".join([chunk async for chunk in body_chunks(receive)])
    if scope["path"].startswith("/big/"):
        body = pseudo_random(int(scope["path"].rsplit("/", 1)[1]), 7)
    headers = [(b"content-type", b"application/octet-stream"), (b"x-sha", _sha(body).encode())]
    if b"chunked" not in scope["query_string"]:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Receiver:
    """Takes callback POSTs."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = trio.Event()
        self._more = trio.Event()

    async def more(self) -> None:
        """Return once another POST came."""
        await self._more.wait()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b"".join([chunk async for chunk in body_chunks(receive)])
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.got.append((headers, body))
        self.arrived.set()
        self._more.set()
        self._more = trio.Event()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def peak_rss(process: MeshProcess) -> int:
    """The process's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def roster(tmp_path: Path, ports: Ports, **defaults: str) -> Path:
    """alpha and bravo with their own outboxes and inboxes (for mirrors between them),
    bravo before the upstream; `defaults` over these tests' own."""
    callbacks = [f"http://127.0.0.1:{ports.receiver}/*"]
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(
                ports.alpha, ["bravo"], outbox="a-out", inbox="a-in", callbacks=callbacks
            ),
            "bravo": peer(
                ports.bravo,
                ["alpha"],
                outbox="b-out",
                inbox="b-in",
                upstream=f"http://127.0.0.1:{ports.upstream}",
            ),
        },
        defaults={
            "heartbeat": "1s",
            "resend_after": "4s",
            "settle": "300ms",
            "fragment_size": "8MiB",
            "body_limit": "256MiB",
            **defaults,
        },
    )
    keygen(path)
    for folder in ("a-out", "b-out", "a-in", "b-in"):
        (tmp_path / folder).mkdir()
    return path


async def test_bodies_of_tens_of_mib_cross_whole_through_truncating_mirrors(
    tmp_path: Path, ports: Ports
) -> None:
    """40 MiB up and back, 48 MB down, and a 24 MiB callback, through mirrors that cut
    30% of the files: byte-identical, each peer's peak memory far below the bodies."""
    path = roster(tmp_path, ports)
    faults = ["--truncate", "0.3", "--duplicate", "0.05", "--reorder"]
    receiver = Receiver()
    with trio.fail_after(240):
        async with (
            served(upstream, ports.upstream),
            served(receiver, ports.receiver),
            mesh_up(path, "alpha") as alpha,
            mesh_up(path, "bravo") as bravo,
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--seed", "5", *faults),
            mirror(tmp_path / "b-out", tmp_path / "a-in", "--seed", "6", *faults),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=200) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            baseline = max(peak_rss(alpha), peak_rss(bravo))
            wait = {"mesh-timeout": "200"}

            sent = os.urandom(40 * MiB)
            reply = await client.post("/bravo/echo?chunked", content=sent, headers=wait)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-sha"] == _sha(sent) == _sha(reply.content)
            # the upstream declares no length: the answer streams, chunked too (unless
            # it was whole here before the caller was answered: then with its length)
            assert reply.headers.get("content-length", str(len(sent))) == str(len(sent))
            del sent, reply

            reply = await client.get(f"/bravo/big/{48_000_000}", headers=wait)
            assert reply.status_code == 200
            assert _sha(reply.content) == _sha(pseudo_random(48_000_000, 7))
            request_id = reply.headers["mesh-request-id"]
            # given whole to the caller that waited: its body file is not kept
            again = await client.get(f"/mesh/requests/{request_id}/response")
            assert again.status_code == 410, again.text
            del again, reply

            reply = await client.get(
                f"/bravo/big/{24 * MiB}",
                headers={"mesh-callback": f"http://127.0.0.1:{ports.receiver}/done"},
            )
            assert reply.status_code == 202
            await receiver.arrived.wait()
            headers, body = receiver.got[0]
            assert headers["mesh-status"] == "200" and headers["x-sha"] == _sha(body)
            assert body == pseudo_random(24 * MiB, 7)

            grew = max(peak_rss(alpha), peak_rss(bravo)) - baseline
            print(f"peak memory grew by {grew / MiB:.0f} MiB")
            assert grew < 64 * MiB, f"peak memory grew by {grew / MiB:.0f} MiB"
            resends = (await client.get("/mesh/status")).json()["links"]["bravo"]["resends"]
            assert resends > 0  # the mirrors did cut fragments, and they were sent again
            await _until_no_body_files(tmp_path / "state", ["alpha", "bravo"])
            assert await alpha.stop() == 130 and await bravo.stop() == 130
    assert "Traceback" not in alpha.text + bravo.text


def _body_of(name: str) -> str:
    """The body a file in a bodies folder holds (all or a piece of)."""
    piece = parse(name)
    return name if piece is None else piece[0]


async def _until_no_body_files(state: Path, peers: list[str]) -> None:
    """Fragments sent are acknowledged, so alpha's outgoing body files go, and bravo's
    request bodies go once answered; what is left are the responses alpha keeps (their
    files, and pieces of them)."""
    while True:
        left = [p.name for name in peers for p in (state / name / "bodies").iterdir()]
        if all(_body_of(name).startswith("in-bravo-") for name in left):
            return
        await trio.sleep(0.2)


async def test_progress_of_a_big_body_is_posted_as_events_and_shown_in_status(
    tmp_path: Path, ports: Ports
) -> None:
    """12 MiB up and back in 4 MiB fragments: `progress` events say how far each way got,
    ending at the whole; `/mesh/status` lists no transfer once all is done."""
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(
                ports.alpha, ["bravo"], callbacks=[f"http://127.0.0.1:{ports.receiver}/*"]
            ),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={"heartbeat": "1s", "linger": "2ms", "fragment_size": "4MiB"},
    )
    keygen(path)
    receiver = Receiver()
    size = 12 * MiB
    with trio.fail_after(60):
        async with (
            served(upstream, ports.upstream),
            served(receiver, ports.receiver),
            mesh_up(path) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=50) as client,
        ):
            await mesh.wait_for("alpha: HTTP ingress")
            await mesh.wait_for("bravo: HTTP ingress")
            events_url = f"http://127.0.0.1:{ports.receiver}/events"
            sent = os.urandom(size)
            reply = await client.post(
                "/bravo/echo", content=sent, headers={"mesh-events": events_url}
            )
            assert reply.status_code == 200 and reply.content == sent
            while not any(json.loads(b)["state"] == "completed" for _, b in receiver.got):
                await receiver.more()
            events = [json.loads(body) for _, body in receiver.got]
            for direction in ("sending", "receiving"):
                done = [e["done"] for e in events if e.get("direction") == direction]
                assert done == sorted(done) and done[-1] == size, (direction, done)
                assert {e["total"] for e in events if e.get("direction") == direction} == {size}
            status = (await client.get("/mesh/status")).json()
            assert status["transfers"] == []
            assert await mesh.stop() == 130


async def _requests_ended(port: int, state: Path) -> list[tuple[str, int]]:
    """(state, answer's status) of each request at the peer on `port` with its state in
    `state`, once none is in flight (polled, and read read-only: another process)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while (await client.get("/mesh/status")).json()["requests"]:  # noqa: ASYNC110
            await trio.sleep(0.1)

    def read() -> list[tuple[str, int]]:
        uri = f"file:{state / 'state.sqlite'}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return [(str(s), int(n)) for s, n in db.execute("SELECT state, status FROM requests")]

    return await trio.to_thread.run_sync(read)


async def _transfers(port: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(f"http://127.0.0.1:{port}/mesh/status")
        return list(reply.json()["transfers"])


async def test_a_big_transfer_resumes_from_what_arrived_after_kill_9(
    tmp_path: Path, ports: Ports
) -> None:
    """bravo is killed -9 with part of a 48 MiB body here: restarted, it still has those
    fragments (it goes on from there, not from zero), and the request runs once, whole
    (the upstream may have had the start of its body before the kill, never its end)."""
    path = roster(tmp_path, ports)
    sent = os.urandom(48 * MiB)
    runs: list[str] = []

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        with contextlib.suppress(HTTPProblem):  # a body cut by the kill: never whole
            await upstream(scope, receive, send)
            if scope["type"] == "http":
                runs.append(scope["path"])

    slow = ["--delay", "300ms..600ms"]
    with trio.fail_after(120):
        async with (
            served(counting, ports.upstream),
            mesh_up(path, "alpha") as alpha,
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--seed", "1", *slow),
            mirror(tmp_path / "b-out", tmp_path / "a-in", "--seed", "2", *slow),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=60) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            async with mesh_up(path, "bravo") as bravo:
                await bravo.wait_for("bravo: HTTP ingress")
                reply = await client.post(
                    "/bravo/echo", content=sent, headers={"prefer": "respond-async"}
                )
                assert reply.status_code == 202
                # bravo's state is in another process: nothing to wait on but a poll
                while not [t for t in await _transfers(ports.bravo) if 0 < t["done"] < len(sent)]:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                bravo.process.kill()
                await bravo.process.wait()
            async with mesh_up(path, "bravo") as bravo:
                await bravo.wait_for("bravo: HTTP ingress")
                for kept in await _transfers(ports.bravo):  # none if all came while it restarted
                    assert kept["done"] > 0 and kept["total"] == len(sent)  # not from zero
                location = reply.headers["location"]
                answer = await client.get(location)
                while answer.status_code == 202:
                    await trio.sleep(0.2)
                    answer = await client.get(location)
                assert answer.status_code == 200 and _sha(answer.content) == _sha(sent)
                assert runs == ["/echo"]
                assert await bravo.stop() == 130
            assert await alpha.stop() == 130


async def test_a_body_over_the_far_limit_is_answered_at_once_not_at_the_deadline(
    tmp_path: Path, ports: Ports
) -> None:
    """A request body within alpha's body_limit but over bravo's is a 413 from bravo (sent
    chunked too: bravo finds out as it comes); a response within carol's but over
    alpha's is a 502 at alpha: all at once."""
    up = f"http://127.0.0.1:{ports.upstream}"
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo", "carol"], body_limit="6MiB"),
            "bravo": peer(ports.bravo, ["alpha"], upstream=up, body_limit="3MiB"),
            "carol": peer(ports.carol, ["alpha"], upstream=up, body_limit="64MiB"),
        },
        defaults={"heartbeat": "1s", "linger": "2ms"},
    )
    keygen(path)
    with trio.fail_after(30):
        async with (
            served(upstream, ports.upstream),
            mesh_up(path) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=25) as client,
        ):
            for name in ("alpha", "bravo", "carol"):
                await mesh.wait_for(f"{name}: HTTP ingress")
            reply = await client.post("/bravo/echo", content=os.urandom(5 * MiB))
            assert reply.status_code == 413, reply.text
            assert "bravo's body_limit" in reply.json()["title"]
            reply = await client.post("/bravo/echo", content=_pieces(5, MiB))  # chunked
            assert reply.status_code == 413, reply.text
            assert "bravo's body_limit" in reply.json()["title"]
            reply = await client.get(f"/carol/big/{8 * MiB}")
            assert reply.status_code == 502, reply.text
            assert "body_limit" in reply.json()["title"]
            assert await mesh.stop() == 130


@pytest.mark.parametrize("declared", [True, False], ids=["with-length", "chunked"])
async def test_an_upload_cut_off_midway_is_dropped_on_both_sides(
    tmp_path: Path, ports: Ports, declared: bool
) -> None:
    """A client declares 96 MiB (or sends chunks, its size not said) and goes away after
    48: the request went ahead of its body, and bravo was streaming it to the upstream;
    told to drop it, bravo cuts the upstream's connection (the upstream never gets the
    whole body), the request fails, and neither side keeps anything."""
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={
            "heartbeat": "1s",
            "linger": "2ms",
            "fragment_size": "8MiB",
            "body_limit": "128MiB",
        },
    )
    keygen(path)
    runs: list[str] = []

    async def counting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            with contextlib.suppress(HTTPProblem):  # its client went away
                await read_body(receive, 128 * MiB)
                runs.append(scope["path"])  # only a body that came whole counts
            return
        await upstream(scope, receive, send)

    with trio.fail_after(60):
        async with served(counting, ports.upstream), mesh_up(path) as mesh:
            await mesh.wait_for("alpha: HTTP ingress")
            await mesh.wait_for("bravo: HTTP ingress")
            client = await trio.open_tcp_stream("127.0.0.1", ports.alpha)
            framing = f"content-length: {96 * MiB}" if declared else "transfer-encoding: chunked"
            head = f"PUT /bravo/put HTTP/1.1\r\nhost: localhost\r\n{framing}\r\n"
            head += "prefer: respond-async\r\n"
            head += "\r\n"
            await client.send_all(head.encode())
            for _ in range(48):
                piece = os.urandom(MiB)
                await client.send_all(piece if declared else b"%x\r\n%s\r\n" % (MiB, piece))
            # bravo's state is in another process: nothing to wait on but a poll
            while not [t for t in await _transfers(ports.bravo) if t["done"] > 0]:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await client.aclose()
            while await _transfers(ports.bravo) or await _transfers(ports.alpha):  # noqa: ASYNC110
                await trio.sleep(0.1)
            await _until_no_body_files(tmp_path / "state", ["alpha", "bravo"])
            assert not list((tmp_path / "state" / "bravo" / "bodies").iterdir())
            assert runs == []
            ended = await _requests_ended(ports.alpha, tmp_path / "state" / "alpha")
            assert ended == [("failed", 400)]
            assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text


async def test_a_response_cut_off_by_the_upstream_is_cut_at_the_caller_and_dropped(
    tmp_path: Path, ports: Ports
) -> None:
    """The upstream declares 64 MiB for a GET and dies after 40 (much of it already went
    to the caller, as it came): the caller's connection is cut short, never ended as if
    whole; the request failed with bravo's 502 saying so, it is not asked again (the
    caller had part of the first answer), and neither side keeps any of it."""
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={"heartbeat": "1s", "linger": "2ms", "body_limit": "128MiB"},
    )
    keygen(path)
    size, attempts = 64 * MiB, []
    body = pseudo_random(size, 3)

    async def failing_once(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        attempts.append(scope["path"])
        headers = [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, size, MiB):
            if len(attempts) == 1 and start == 40 * MiB:
                raise RuntimeError("the upstream dies mid-body")
            piece = body[start : start + MiB]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(60):
        async with served(failing_once, ports.upstream), mesh_up(path) as mesh:
            await mesh.wait_for("alpha: HTTP ingress")
            await mesh.wait_for("bravo: HTTP ingress")
            got = 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}") as client:
                with pytest.raises(httpx.RemoteProtocolError):
                    async with client.stream("GET", "/bravo/big", timeout=50) as reply:
                        request_id = reply.headers["mesh-request-id"]
                        assert reply.headers["content-length"] == str(size)
                        async for piece in reply.aiter_raw():
                            assert piece == body[got : got + len(piece)]
                            got += len(piece)
                assert 0 < got < size
                record = (await client.get(f"/mesh/requests/{request_id}")).json()
            assert record["state"] == "failed" and record["response_status"] == 502
            assert attempts == ["/big"]
            await _until_no_body_files(tmp_path / "state", ["alpha", "bravo"])
            assert await _transfers(ports.alpha) == [] and await _transfers(ports.bravo) == []
            assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text


async def _pieces(count: int, size: int) -> AsyncIterator[bytes]:
    """`count` random pieces of `size` bytes: a body httpx sends chunked."""
    for _ in range(count):
        yield os.urandom(size)
