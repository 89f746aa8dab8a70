"""Bodies that stream through `mesh up` processes: an answer the upstream sends slowly, in
chunks a second apart, reaches the waiting caller chunk by chunk; one that breaks off
midway is cut at the caller, never ended as if whole, and the request says so; an
upload reaches the upstream while it still comes."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mesh.http.asgi import body_chunks, lifespan
from tests.helpers.ports import free_ports
from tests.helpers.processes import served
from tests.helpers.raw_upstream import read_head, serve_raw
from tests.test_clients_e2e import curl, running, settled, two_peers

CHUNKS = 4
MiB = 1 << 20
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Streaming:
    """An upstream that sends event-stream chunks a second apart (``/events``), or two
    chunks and then closes its connection without the body's end (``/cut``); it notes
    when it sent each chunk (trio's clock)."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = await read_head(stream)
            assert head is not None
            await stream.send_all(HEAD)
            if head.startswith(b"POST /cut-now"):  # one chunk, then the connection closes
                await stream.send_all(chunk(b"data: 0\n\n"))
                return
            count = CHUNKS if head.startswith(b"GET /events") else 2
            for index in range(count):
                if index:
                    await trio.sleep(1.0)  # the upstream's own pace
                self.sent.append(trio.current_time())
                await stream.send_all(chunk(b"data: %d\n\n" % index))
            if head.startswith(b"GET /events"):
                await stream.send_all(b"0\r\n\r\n")
            # /cut: the connection closes here, the body unfinished


@asynccontextmanager
async def streaming_upstream() -> AsyncIterator[tuple[str, Streaming]]:
    server = Streaming()
    async with serve_raw(server.handle) as url:
        yield url, server


async def test_an_event_stream_reaches_the_caller_chunk_by_chunk(tmp_path: Path) -> None:
    """Chunks a second apart: each reaches the caller before the upstream sends the next,
    and the body ends whole, as the upstream sent it."""
    async with streaming_upstream() as (url, upstream):
        path, port = two_peers(tmp_path, url)
        async with running(path):
            arrived: list[tuple[float, bytes]] = []
            with trio.fail_after(30):
                async with (
                    httpx.AsyncClient(trust_env=False, timeout=20) as client,
                    client.stream("GET", f"http://127.0.0.1:{port}/bravo/events") as reply,
                ):
                    assert reply.status_code == 200
                    assert reply.headers["content-type"] == "text/event-stream"
                    async for piece in reply.aiter_raw():
                        arrived.append((trio.current_time(), piece))
            body = b"".join(piece for _, piece in arrived)
            assert body == b"".join(b"data: %d\n\n" % i for i in range(CHUNKS))
            for index, sent in enumerate(upstream.sent[1:], start=1):
                got = b"".join(p for at, p in arrived if at < sent)
                assert got.count(b"data:") == index, (index, arrived, upstream.sent)
            await settled(port, tmp_path / "state")


async def test_an_answer_that_breaks_off_is_cut_never_ended_whole(tmp_path: Path) -> None:
    """The upstream closes midway: the caller has the head and what came (as it came,
    or, when the body was given up before the caller followed it, none), then its
    connection is cut (the client sees the body incomplete); the request failed, with
    the far side's 502 saying the answer broke off, and nothing is left behind."""
    async with streaming_upstream() as (url, _):
        path, port = two_peers(tmp_path, url)
        async with running(path):
            alpha = f"http://127.0.0.1:{port}"
            got = b""
            with trio.fail_after(30):
                async with httpx.AsyncClient(base_url=alpha, trust_env=False, timeout=20) as client:
                    try:
                        async with client.stream("GET", "/bravo/cut") as reply:
                            request_id = reply.headers["mesh-request-id"]
                            async for piece in reply.aiter_raw():
                                got += piece
                    except httpx.RemoteProtocolError:
                        pass
                    else:
                        raise AssertionError(f"a cut body ended as whole: {got!r}")
                    # what came, unless the file that gave it up came before the caller
                    # followed it (then it went with its file): never more
                    assert b"data: 0\n\ndata: 1\n\n".startswith(got)
                    answer = await client.get(f"/mesh/requests/{request_id}/response")
                    while answer.status_code == 202:  # the far side's 502 may follow the cut
                        await trio.sleep(0.1)
                        answer = await client.get(f"/mesh/requests/{request_id}/response")
                    record = (await client.get(f"/mesh/requests/{request_id}")).json()
            assert record["state"] == "failed" and record["response_status"] == 502
            assert answer.status_code == 502 and "broke off" in answer.json()["title"]
            await settled(port, tmp_path / "state")


async def test_an_answer_that_breaks_off_at_once_is_never_taken_whole(tmp_path: Path) -> None:
    """The upstream sends a piece of its answer and closes at once, well within the
    time and size an answer is gathered whole in: the caller gets the far side's 502,
    never a 200 with what came as if it were the body (it did, now and then, when the
    end of what came was seen before the break was)."""
    async with streaming_upstream() as (url, _):
        path, port = two_peers(tmp_path, url)
        async with running(path):
            alpha = f"http://127.0.0.1:{port}"
            with trio.fail_after(30):
                async with httpx.AsyncClient(base_url=alpha, trust_env=False, timeout=20) as client:
                    for _ in range(5):
                        reply = await client.post("/bravo/cut-now")
                        assert reply.status_code == 502, (reply.status_code, reply.content)
                        assert "outcome unknown" in reply.json()["title"]
            await settled(port, tmp_path / "state")


class Sink:
    """An ASGI upstream that takes a request body as it comes, noting when its first
    bytes came (`started`), and answers its SHA-256."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.headers: list[tuple[bytes, bytes]] = []  # the last request's

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.headers = list(scope["headers"])
        digest = hashlib.sha256()
        async for chunk in body_chunks(receive):
            digest.update(chunk)
            if chunk:
                self.started.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})


@pytest.mark.parametrize("declared", [True, False], ids=["with-length", "chunked"])
async def test_an_upload_reaches_the_upstream_while_it_still_comes(
    tmp_path: Path, declared: bool
) -> None:
    """A body goes on to the upstream as it arrives: the client sends the rest of it
    only once the upstream has had the first of it (it would wait for good if the mesh
    waited for the whole body), and the upstream gets it whole. Sent chunked (its size
    not said), it reaches the upstream chunked too."""
    (upstream_port,) = free_ports(1)
    sink, size, first = Sink(), 8 * MiB, 3 * MiB  # each piece goes once durable
    data = random.Random(5).randbytes(size)

    async def paced() -> AsyncIterator[bytes]:
        for at in range(0, first, MiB):
            yield data[at : at + MiB]
        await sink.started.wait()  # the upstream has the first of it: now the rest
        for at in range(first, size, MiB):
            yield data[at : at + MiB]

    path, port = two_peers(tmp_path, f"http://127.0.0.1:{upstream_port}", "64MiB")
    length = {"content-length": str(size)} if declared else {}
    async with served(sink, upstream_port), running(path):
        with trio.fail_after(60):
            async with httpx.AsyncClient(trust_env=False, timeout=50) as client:
                # the upstream answers in HTTP/1.1 once: then it may get chunks (RFC 9112)
                assert (await client.get(f"http://127.0.0.1:{port}/bravo/")).status_code == 200
                reply = await client.put(
                    f"http://127.0.0.1:{port}/bravo/upload", content=paced(), headers=length
                )
        assert reply.status_code == 200 and reply.text == hashlib.sha256(data).hexdigest()
        assert reply.headers.get("connection") != "close"  # read to its end: kept
        chunked = (b"transfer-encoding", b"chunked")
        framing = (b"content-length", str(size).encode()) if declared else chunked
        assert framing in sink.headers, sink.headers
        await settled(port, tmp_path / "state")


async def lying(stream: trio.SocketStream) -> None:
    """``GET /lie/{declared}/{size}``: a head saying both ``Content-Length: declared``
    and ``Transfer-Encoding: chunked``, then `size` bytes in chunks (HTTP frames it by
    the chunks)."""
    async with stream:
        head = await read_head(stream)
        assert head is not None
        _, declared, size = head.split(b" ")[1].decode().strip("/").split("/")
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        await stream.send_all(answer % declared.encode())
        for at in range(0, int(size), 64 * 1024):
            await stream.send_all(chunk(b"x" * min(64 * 1024, int(size) - at)))
        await stream.send_all(b"0\r\n\r\n")


async def test_a_length_beside_chunked_framing_is_never_trusted(tmp_path: Path) -> None:
    """An upstream that declares a length but frames its body by chunks, longer, shorter
    or far longer than it said: the caller gets the body as the chunks framed it, whole,
    and the far peer stays up (it crashed on a body not of its declared length); an
    answer over the caller's body limit is cut there, and leaves nothing behind."""
    async with serve_raw(lying) as url:
        path, port = two_peers(tmp_path, url, "4MiB")
        async with running(path) as mesh:
            alpha = f"http://127.0.0.1:{port}"
            with trio.fail_after(60):
                async with httpx.AsyncClient(base_url=alpha, trust_env=False, timeout=30) as client:
                    for declared, size in (
                        (2 * MiB, 3 * MiB),
                        (2 * MiB, MiB + MiB // 2),
                        (100, 3 * MiB),
                    ):
                        reply = await client.get(f"/bravo/lie/{declared}/{size}")
                        assert reply.status_code == 200 and reply.content == b"x" * size
                    with pytest.raises(httpx.RemoteProtocolError):  # over alpha's 4 MiB
                        await client.get(f"/bravo/lie/100/{10 * MiB}")
            await settled(port, tmp_path / "state")
            assert await mesh.stop() == 130
        assert "Traceback" not in mesh.text


async def test_a_small_chunked_body_goes_whole_and_a_length_beside_chunks_is_ignored(
    tmp_path: Path,
) -> None:
    """A chunked body within 1 MiB, however slow, reaches the upstream whole, with its
    length (an upstream may need one). A request saying both a length and chunked
    framing is framed by its chunks, as HTTP says: its length is ignored, not a 500."""
    (upstream_port,) = free_ports(1)
    sink = Sink()

    async def slow() -> AsyncIterator[bytes]:
        yield b"abc"
        await trio.sleep(0.5)  # the client's own pace: past the 0.25 s an answer waits
        yield b"def"

    path, port = two_peers(tmp_path, f"http://127.0.0.1:{upstream_port}", "64MiB")
    async with served(sink, upstream_port), running(path):
        with trio.fail_after(60):
            async with httpx.AsyncClient(trust_env=False, timeout=50) as client:
                reply = await client.put(f"http://127.0.0.1:{port}/bravo/slow", content=slow())
            assert reply.status_code == 200 and reply.text == hashlib.sha256(b"abcdef").hexdigest()
            assert (b"content-length", b"6") in sink.headers, sink.headers
            data = random.Random(7).randbytes(3 * MiB)
            head, body = await _both_framings(port, data, declared=2 * MiB)
            assert head.startswith(b"http/1.1 200 ") and b"\r\nconnection: close" in head
            assert body == hashlib.sha256(data).hexdigest().encode()  # and no second answer
            assert (b"transfer-encoding", b"chunked") in sink.headers, sink.headers
        await settled(port, tmp_path / "state")


async def _both_framings(port: int, data: bytes, declared: int) -> tuple[bytes, bytes]:
    """PUT `data` to bravo through alpha (at `port`) in chunks, its head also declaring
    a length of `declared`, and a GET behind it on the same connection; the head and
    body of what came back until the connection was closed (RFC 9112, 6.1: it is, after
    the first answer, to whoever read the first request by its length)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = "PUT /bravo/both HTTP/1.1\r\nhost: localhost\r\n"
        head += f"content-length: {declared}\r\ntransfer-encoding: chunked\r\n\r\n"
        await stream.send_all(head.encode())
        for at in range(0, len(data), MiB):
            await stream.send_all(chunk(data[at : at + MiB]))
        await stream.send_all(b"0\r\n\r\nGET /bravo/second HTTP/1.1\r\nhost: localhost\r\n\r\n")
        answer = b""
        while piece := await stream.receive_some(65536):
            answer += piece
    top, _, body = answer.partition(b"\r\n\r\n")
    return top.lower(), body


async def test_a_chunked_body_over_the_callers_peer_limit_is_refused_and_let_go(
    tmp_path: Path,
) -> None:
    """A chunked body over alpha's own limit, sent fast (curl): the caller gets alpha's
    413, and alpha's handling of it ends (its access line is written). It hung until
    the peer stopped: the body read ahead of the store filled hypercorn's queue, behind
    which hypercorn queues the disconnect that ends an answer."""
    (upstream_port,) = free_ports(1)
    path, port = two_peers(tmp_path, f"http://127.0.0.1:{upstream_port}", "4MiB")
    body = tmp_path / "body.bin"
    body.write_bytes(random.Random(3).randbytes(10 * MiB))
    chunked = ("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{body}")
    async with served(Sink(), upstream_port), running(path) as mesh:
        with trio.fail_after(60):
            line, headers, _, _ = await curl(*chunked, f"http://127.0.0.1:{port}/bravo/too-big")
            assert line.split(" ")[1] == "413" and ("mesh-problem", "alpha") in headers
            await mesh.wait_for("POST /bravo/too-big 413")
        await settled(port, tmp_path / "state")


async def test_a_chunked_body_the_far_side_refused_is_answered_before_it_ends(
    tmp_path: Path,
) -> None:
    """bravo refuses a chunked body over its limit as its pieces come: the caller gets
    bravo's 413 while it still sends, and alpha takes no more of it (alpha waited for
    the body's end, however long: a caller streaming gigabytes sent them all)."""
    (upstream_port,) = free_ports(1)
    url = f"http://127.0.0.1:{upstream_port}"
    path, port = two_peers(tmp_path, url, "64MiB", body_limit="2MiB")
    async with served(Sink(), upstream_port), running(path):
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                head = "PUT /bravo/big HTTP/1.1\r\nhost: localhost\r\n"
                await stream.send_all(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
                for _ in range(4):  # over bravo's limit, and the body goes on: not ended
                    await stream.send_all(chunk(random.randbytes(MiB)))
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert b"mesh-problem: bravo" in answer.lower(), answer
        assert b"connection: close" in answer.lower(), answer  # it carries no other request
        await settled(port, tmp_path / "state")


async def answering_early(stream: trio.SocketStream) -> None:
    """Reads the head of a request and a little of its body, then reads no more and
    answers 200 with a body that streams for a long while (a chunk a second); answers
    ``GET /ready`` at once (204)."""
    async with stream:
        data = await read_head(stream)
        if data is not None and data.startswith(b"GET /ready"):
            await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        while data is not None and len(data) < 100_000:
            data += await stream.receive_some(65536)
        await stream.send_all(HEAD)
        for index in range(60):
            await stream.send_all(chunk(b"data: %d\n\n" % index))
            await trio.sleep(1.0)  # the upstream's own pace


async def test_an_upload_the_upstream_answered_early_gets_the_answers_head_at_once(
    tmp_path: Path,
) -> None:
    """The upstream answers while the caller still sends, and its answer streams: the
    caller gets its head at once, and alpha takes no more of the body (alpha waited
    for the answer's end, or took the body up to its own limit and answered its own
    413, though the upstream had answered 200)."""
    async with serve_raw(answering_early) as url:
        path, port = two_peers(tmp_path, url, "64MiB", upstream_timeout="1s")
        async with running(path):
            with trio.fail_after(30):
                async with httpx.AsyncClient(trust_env=False) as client:  # now it is known
                    ready = await client.get(f"http://127.0.0.1:{port}/bravo/ready")
                    assert ready.status_code == 204  # to speak HTTP/1.1: chunks may go
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream, trio.open_nursery() as nursery:

                    async def sending() -> None:  # 10 MB/s: 64 MiB take 6 s
                        head = "PUT /bravo/early HTTP/1.1\r\nhost: localhost\r\n"
                        await stream.send_all(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
                        with contextlib.suppress(trio.BrokenResourceError):
                            while True:
                                await stream.send_all(chunk(random.randbytes(MiB)))
                                await trio.sleep(0.1)  # the caller's own pace

                    nursery.start_soon(sending)
                    answer = b""
                    while b"\r\n\r\n" not in answer:
                        answer += await stream.receive_some(65536)
                    nursery.cancel_scope.cancel()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"connection: close" in answer.lower(), answer


class _Http10(http.server.BaseHTTPRequestHandler):
    """An upstream of Python's own that speaks HTTP/1.0 (as `http.server` does unless
    told otherwise): it reads a body by its length only, and answers its SHA-256 and
    how it was framed."""

    protocol_version = "HTTP/1.0"

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = hashlib.sha256(body).hexdigest().encode()
        self.send_response(200)
        self.send_header("X-Framing", "chunked" if self.headers["Transfer-Encoding"] else "length")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


async def test_an_upstream_not_known_to_speak_http11_gets_a_chunked_upload_whole(
    tmp_path: Path,
) -> None:
    """RFC 9112, 6.1: a body goes chunked only to a server known to handle HTTP/1.1 (one
    that answered in it). This HTTP/1.0 upstream read none of a chunked upload, and ran
    the PUT with an empty body; now the body is taken whole first and sent with its
    length, each time, as the upstream keeps answering in HTTP/1.0."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http10)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = random.Random(9).randbytes(3 * MiB)

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(data), MiB):
            yield data[at : at + MiB]

    try:
        path, port = two_peers(tmp_path, f"http://127.0.0.1:{server.server_address[1]}", "64MiB")
        async with running(path):
            with trio.fail_after(60):
                async with httpx.AsyncClient(trust_env=False, timeout=50) as client:
                    for _ in range(2):
                        url = f"http://127.0.0.1:{port}/bravo/up"
                        reply = await client.put(url, content=pieces())
                        assert reply.text == hashlib.sha256(data).hexdigest()
                        assert reply.headers["x-framing"] == "length"
            await settled(port, tmp_path / "state")
    finally:
        server.shutdown()
        server.server_close()
