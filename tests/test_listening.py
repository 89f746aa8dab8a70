"""The ingress's accept loop over real loopback sockets: a bound on open connections,
a deadline for the first request head, and a slot freed as soon as a caller leaves."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypercorn.config import Config

from mesh.http import asgi, listening
from mesh.http.asgi import Receive, Scope, Send, too_large_unread
from mesh.http.echo import echo_app
from mesh.http.listening import serve_capped
from tests.helpers.ports import free_ports

HEAD = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"


@asynccontextmanager
async def serving(
    limit: int,
    head_timeout: float,
    keep_alive: float = 30,
    app: Any = echo_app,
    quiet: float = 30,
) -> AsyncIterator[int]:
    [port] = free_ports(1)
    config = Config()
    config.bind, config.accesslog = [f"127.0.0.1:{port}"], None
    config.keep_alive_timeout, config.read_timeout = keep_alive, quiet
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_capped, app, config, limit, head_timeout)
        yield port
        nursery.cancel_scope.cancel()


async def answered(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(HEAD)
        return bytes(await stream.receive_some())


async def test_a_head_trickled_in_is_dropped_at_its_deadline() -> None:
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=0.5) as port:
            slow = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            closed = False
            for byte in HEAD[:-2]:  # never the end of the head
                try:  # closed: a reset (bytes it never read were pending) or an end
                    await slow.send_all(bytes([byte]))
                    with trio.move_on_after(0.1):  # the attacker's pace, one byte at a time
                        closed = await slow.receive_some() == b""
                except trio.BrokenResourceError:
                    closed = True
                if closed:
                    break
            assert closed and trio.current_time() - started < 3
            assert (await answered(port)).startswith(b"HTTP/1.1 200")


async def test_connections_past_the_limit_wait_until_one_ends() -> None:
    with trio.fail_after(10):
        async with serving(limit=2, head_timeout=30) as port:
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            for stream in idle:
                await stream.send_all(b"GET /x HTTP/1.1\r\n")  # a head under way
            third = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel queues it
            await third.send_all(HEAD)
            with trio.move_on_after(0.5) as waited:
                await third.receive_some()
            assert waited.cancelled_caught  # not taken while two are open
            await idle[0].aclose()  # it leaves: its slot is free at once
            assert (await third.receive_some()).startswith(b"HTTP/1.1 200")
            await idle[1].aclose()
            await third.aclose()


async def test_a_later_head_trickled_in_is_dropped_by_the_keep_alive_timer() -> None:
    """After a first request, the next head has the keep-alive time to arrive whole:
    bytes of it trickling in do not count as activity."""
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30, keep_alive=0.5) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HEAD)
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 200")
            started, closed = trio.current_time(), False
            for byte in b"GET /y HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
                try:
                    await stream.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    closed = True
                    break
                with trio.move_on_after(0.05):  # the attacker's pace
                    if await stream.receive_some() == b"":
                        closed = True
                        break
            assert closed and trio.current_time() - started < 3


async def _refusing_big_bodies(scope: Scope, receive: Receive, send: Send) -> None:
    """413 for a declared length over 10 bytes, without reading; else the echo service;
    a `Mesh-Reason` header on its answers (the status line's reason)."""
    if scope["type"] != "http":
        return
    declared = dict(scope["headers"]).get(b"content-length", b"0")
    if int(declared) > 10:
        problem = too_large_unread(10)
        headers = [(b"content-length", b"0"), (b"mesh-reason", b"Too Big Here"), *problem.headers]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await echo_app(scope, receive, send)


async def _exchange(port: int, head: bytes) -> tuple[trio.SocketStream, bytes]:
    """A connection that sent `head`, and what came back before the client sends more."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(head)
    return stream, bytes(await stream.receive_some())


async def test_100_continue_only_once_the_app_reads_the_body() -> None:
    """A body declared over the app's limit is refused before the client sends it (no
    ``100 Continue`` first); one the app reads is asked for with ``100 Continue``; the
    app's `Mesh-Reason` is its status line's reason phrase."""
    expect = b"POST /x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30, app=_refusing_big_bodies) as port:
            stream, got = await _exchange(port, expect + b"Content-Length: 11\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 413 Too Big Here\r\n"), got
            assert b"connection: close" in got.lower() and b"mesh-reason" not in got.lower()
            assert await stream.receive_some() == b""  # closed: the body is not wanted
            stream, got = await _exchange(port, expect + b"Content-Length: 5\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 100 ") and got.endswith(b"\r\n\r\n"), got
            await stream.send_all(b"hello")
            answer = b""
            while b"hello" not in answer:
                answer += await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 200 ")


async def test_a_body_that_stops_coming_is_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection has no read timeout as a whole (a caller waits for its answer in
    silence), but a request body that stops coming is given up."""
    monkeypatch.setattr(asgi, "BODY_SILENCE", 0.5)
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30) as port:
            head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc"
            _, got = await _exchange(port, head)
            assert got.startswith(b"HTTP/1.1 408 "), got


async def test_an_accepted_connection_is_probed_when_idle() -> None:
    """A caller gone without a word is noticed: its connection has TCP keepalive."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], await trio.open_tcp_stream("127.0.0.1", port):
        accepted = await listeners[0].accept()
        async with accepted:
            listening._probe_when_idle(accepted)
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert idle == listening.KEEPALIVE_IDLE


async def _slow_or_deaf(scope: Scope, receive: Receive, send: Send) -> None:
    """``/slow``: a 200 after 1.5 s; anything else: a 200 at once, its body never read."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await trio.sleep(1.5)  # the answer takes its time: the caller waits in silence
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_quiet_is_timed_only_while_no_request_is_answered() -> None:
    """A caller waiting for its answer may be quiet longer than `read_timeout`; one whose
    body was never read (and never comes) is let go that long after its answer."""
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30, app=_slow_or_deaf, quiet=0.5) as port:
            stream, got = await _exchange(port, b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            while not got.endswith(b"ok"):
                got += await stream.receive_some()
            assert got.startswith(b"HTTP/1.1 200 ")
            head = b"POST /deaf HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
            stream, got = await _exchange(port, head)
            while not got.endswith(b"ok"):
                got += await stream.receive_some()
            started = trio.current_time()
            assert await stream.receive_some() == b""  # closed: the body never came
            assert trio.current_time() - started < 3


async def test_a_body_trickled_in_is_a_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that keeps coming, but slower than `SLOWEST`, would hold its connection."""
    monkeypatch.setattr(asgi, "SLOW_GRACE", 0.3)
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30) as port:
            head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(head)
            got = b""
            while not got:
                await stream.send_all(b"a")
                with trio.move_on_after(0.1):  # the attacker's pace
                    got = bytes(await stream.receive_some())
            assert got.startswith(b"HTTP/1.1 408 "), got


async def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    """Without ``Expect``, a body over the limit gets its 413 at once, not after up to
    64 MiB of it was read (what more comes is dropped, for a while)."""
    with trio.fail_after(10):
        async with serving(limit=8, head_timeout=30) as port:
            head = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n"
            _, got = await _exchange(port, head + b"a" * 1000)
            assert got.startswith(b"HTTP/1.1 413 "), got


async def _big(scope: Scope, receive: Receive, send: Send) -> None:
    """32 MiB for ``/big``, else a short answer."""
    if scope["type"] != "http":
        return
    size = 32 << 20 if scope["path"] == "/big" else 2
    start = {"type": "http.response.start", "status": 200}
    await send({**start, "headers": [(b"content-length", str(size).encode())]})
    for _ in range(size // (1 << 20)):
        await send({"type": "http.response.body", "body": b"x" * (1 << 20), "more_body": True})
    await send({"type": "http.response.body", "body": b"ok" if size == 2 else b""})


async def test_a_caller_that_stops_reading_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that makes no progress for `WRITE_TIMEOUT` ends the connection, so a
    caller that never reads its answer cannot keep its slot (here, the only one)."""
    monkeypatch.setattr(listening, "WRITE_TIMEOUT", 0.5)
    with trio.fail_after(10):
        async with serving(limit=1, head_timeout=30, app=_big) as port:
            deaf = await trio.open_tcp_stream("127.0.0.1", port)
            await deaf.send_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")  # never read
            _, got = await _exchange(port, b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 ")
            await deaf.aclose()
