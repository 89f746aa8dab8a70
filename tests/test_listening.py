"""The ingress's accept loop over real loopback sockets: a bound on open connections,
a deadline for the first request head, and a slot freed as soon as a caller leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from hypercorn.config import Config

from mesh.http.echo import echo_app
from mesh.http.listening import serve_capped
from tests.helpers.ports import free_ports

HEAD = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"


@asynccontextmanager
async def serving(limit: int, head_timeout: float, keep_alive: float = 30) -> AsyncIterator[int]:
    [port] = free_ports(1)
    config = Config()
    config.bind, config.accesslog = [f"127.0.0.1:{port}"], None
    config.keep_alive_timeout = keep_alive
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_capped, echo_app, config, limit, head_timeout)
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
                try:
                    await slow.send_all(bytes([byte]))
                except trio.BrokenResourceError:
                    closed = True
                    break
                with trio.move_on_after(0.1):  # the attacker's pace, one byte at a time
                    if await slow.receive_some() == b"":
                        closed = True
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
