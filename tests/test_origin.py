"""mesh.http.origin against real sockets on loopback: small servers that answer as a test
needs, so every failure an upstream can cause is met for real."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio
import trustme

from mesh.http.origin import NeverSent, Origin, UpstreamError, _quiet

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """A server on a free loopback port running `handler` per connection; yields the
    port."""

    async def each(stream: trio.SocketStream) -> None:
        with suppress(trio.BrokenResourceError, EOFError):
            await handler(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, each, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def receive(stream: trio.abc.Stream) -> bytes:
    data = await stream.receive_some()
    if not data:
        raise EOFError
    return data


async def read_request(stream: trio.abc.Stream) -> bytes:
    """A request's head and its Content-Length body, as sent."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await receive(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += await receive(stream)
    return head + b"\r\n\r\n" + body


def echo_server(seen: list[bytes], connections: list[int]) -> Handler:
    async def handler(stream: trio.abc.Stream) -> None:
        connections.append(1)
        while True:
            request = await read_request(stream)
            seen.append(request)
            body = request.partition(b"\r\n\r\n")[2]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: 1\r\n\r\n%s" % (len(body), body)
            )

    return handler


async def read_all(
    origin: Origin, method: str, target: str, body: bytes = b""
) -> tuple[int, bytes]:
    headers = [(b"content-length", str(len(body)).encode())] if body else []
    async with origin.request(method, target, headers, body) as reply:
        got = b"".join([chunk async for chunk in reply.chunks()])
    return reply.status, got


async def test_requests_go_as_given_and_share_one_connection() -> None:
    seen: list[bytes] = []
    connections: list[int] = []
    with trio.fail_after(10):
        async with (
            serving(echo_server(seen, connections)) as port,
            Origin(f"http://127.0.0.1:{port}/api/", 5, 5) as origin,
        ):
            assert await read_all(origin, "POST", "/x%20?y=%C3%A9", b"hello") == (200, b"hello")
            async with origin.request("GET", "/z", [(b"accept", b"*/*")]) as reply:
                assert reply.header(b"x-a") == b"1"
                assert [c async for c in reply.chunks()] == []
    assert connections == [1]  # kept alive between the two
    first, second = seen
    head = b"POST /api/x%20?y=%C3%A9 HTTP/1.1\r\nhost: 127.0.0.1:" + str(port).encode()
    assert first.startswith(head + b"\r\n")
    assert first.endswith(b"\r\n\r\nhello")
    assert second.startswith(b"GET /api/z HTTP/1.1\r\n") and b"accept: */*" in second


async def test_a_streamed_body_and_a_chunked_reply() -> None:
    got: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        got.append(await read_request(stream))
        await stream.send_all(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"", b"two"):
            yield piece

    with trio.fail_after(10):
        async with serving(handler) as port, Origin(f"http://127.0.0.1:{port}", 5, 5) as origin:
            headers = [(b"content-length", b"7")]
            async with origin.request("PUT", "/", headers, pieces()) as reply:
                assert reply.status == 201
                assert b"".join([c async for c in reply.chunks()]) == b"abcde"
    assert got[0].endswith(b"\r\n\r\none two")


async def test_a_refused_connection_was_never_sent() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with trio.fail_after(10):
        async with Origin(f"http://127.0.0.1:{port}", 5, 5) as origin:
            with pytest.raises(NeverSent, match="cannot connect"):
                await read_all(origin, "POST", "/", b"x")


async def test_a_failed_tls_handshake_was_never_sent() -> None:
    async def plain(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with trio.fail_after(10):
        async with serving(plain) as port, Origin(f"https://127.0.0.1:{port}", 5, 5) as origin:
            with pytest.raises(NeverSent):
                await read_all(origin, "GET", "/")


async def test_a_reply_cut_short_is_an_error_and_its_connection_is_not_kept() -> None:
    connections: list[int] = []

    async def cut(stream: trio.SocketStream) -> None:
        connections.append(1)
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await stream.aclose()

    with trio.fail_after(10):
        async with serving(cut) as port, Origin(f"http://127.0.0.1:{port}", 5, 5) as origin:
            with pytest.raises(UpstreamError, match="closed the connection before") as caught:
                await read_all(origin, "POST", "/", b"x")
            assert not isinstance(caught.value, NeverSent)
            with pytest.raises(UpstreamError):
                await read_all(origin, "POST", "/", b"x")
    assert connections == [1, 1]


async def test_silence_past_the_timeout_is_an_error() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await read_request(stream)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with serving(silent) as port, Origin(f"http://127.0.0.1:{port}", 0.2, 5) as origin:
            with pytest.raises(UpstreamError, match=r"no data from the upstream for 0\.2 s"):
                await read_all(origin, "GET", "/")


async def test_an_answer_given_before_the_body_was_taken_is_the_reply() -> None:
    async def refuses(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await receive(stream)
        await stream.send_all(
            b"HTTP/1.1 413 Too Big\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        )
        await trio.sleep_forever()  # and never reads the body

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield bytes(1 << 20)

    with trio.fail_after(10):
        async with serving(refuses) as port, Origin(f"http://127.0.0.1:{port}", 0.3, 5) as origin:
            headers = [(b"content-length", str(1 << 40).encode())]
            async with origin.request("POST", "/", headers, endless()) as reply:
                assert reply.status == 413
                assert b"".join([c async for c in reply.chunks()]) == b"no"


async def test_a_request_that_cannot_be_sent_is_an_error() -> None:
    seen: list[bytes] = []
    with trio.fail_after(10):
        async with (
            serving(echo_server(seen, [])) as port,
            Origin(f"http://127.0.0.1:{port}", 5, 5) as origin,
        ):
            headers = [(b"content-length", b"5")]
            with pytest.raises(UpstreamError, match="cannot send"):
                async with origin.request("POST", "/", headers, b"abc"):
                    pass


async def test_an_idle_connection_is_dropped_before_the_server_would() -> None:
    connections: list[int] = []
    with trio.fail_after(10):
        async with (
            serving(echo_server([], connections)) as port,
            Origin(f"http://127.0.0.1:{port}", 5, 5) as origin,
        ):
            await read_all(origin, "GET", "/")
            await read_all(origin, "HEAD", "/")
            origin._idle[0].idle_since -= 60  # as if a minute had passed
            await read_all(origin, "GET", "/")
    assert connections == [1, 1]


async def test_tls_to_a_trusted_upstream_and_never_to_an_untrusted_one() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    connections: list[int] = []
    plain = echo_server([], connections)

    async def tls(stream: trio.abc.Stream) -> None:
        await plain(trio.SSLStream(stream, server_context, server_side=True))

    with trio.fail_after(10):
        async with serving(tls) as port:
            url = f"https://127.0.0.1:{port}"
            async with Origin(url, 5, 5, ssl_context=trusting) as origin:
                assert await read_all(origin, "POST", "/", b"secret") == (200, b"secret")
                assert await read_all(origin, "POST", "/", b"again") == (200, b"again")
            async with Origin(url, 5, 5) as origin:  # the certifi roots do not know this CA
                with pytest.raises(NeverSent, match="certificate"):
                    await read_all(origin, "GET", "/")
    assert connections == [1, 1]


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    connections: list[int] = []

    async def once(stream: trio.abc.Stream) -> None:
        connections.append(1)
        request = await read_request(stream)
        body = request.partition(b"\r\n\r\n")[2]
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await stream.aclose()  # no "Connection: close" said: the client cannot know

    with trio.fail_after(10):
        async with serving(once) as port, Origin(f"http://127.0.0.1:{port}", 5, 5) as origin:
            assert await read_all(origin, "POST", "/", b"one") == (200, b"one")
            idle = origin._idle[0].stream
            assert isinstance(idle, trio.SocketStream)
            await trio.lowlevel.wait_readable(idle.socket)  # the server's close has come
            assert not _quiet(idle)
            assert await read_all(origin, "POST", "/", b"two") == (200, b"two")
    assert connections == [1, 1]


async def test_a_reply_that_is_not_http_is_an_error() -> None:
    async def garbage(stream: trio.abc.Stream) -> None:
        await read_request(stream)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    with trio.fail_after(10):
        async with serving(garbage) as port, Origin(f"http://127.0.0.1:{port}", 5, 5) as origin:
            with pytest.raises(UpstreamError, match="bad reply from the upstream"):
                await read_all(origin, "GET", "/")
