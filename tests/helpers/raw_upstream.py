"""An upstream that answers with exact bytes, for the framing cases no library server
will produce on demand: a 304 with the length of the body it does not send, a response
ended by closing the connection, a response head over any limit, a reason phrase of its
own, duplicate headers. It reads each request head and body (by Content-Length) and
answers by the request's path:

- ``/204``, ``/304``, ``/head`` (a HEAD answer declaring 5000 bytes), ``/reason``;
- ``/dup``: duplicate response headers, and the request's headers echoed in the body;
- ``/close``: no Content-Length, the body ended by closing;
- ``/bighead/{KiB}``: a head of about that many KiB of headers;
- ``/slow/{seconds}``: a 200 after that long;
- ``/bytes/{n}``: n bytes (``x``), with their Content-Length;
- anything else: the request's method, target and body length, as text.

It also counts the requests it received by path (`calls`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from tests.helpers.ports import free_ports

CANNED = {
    "/204": b'HTTP/1.1 204 No Content\r\nX-Kind: none\r\nETag: "a"\r\n\r\n',
    "/304": b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\nContent-Length: 1234\r\n\r\n',
    "/reason": b"HTTP/1.1 299 Quite Fine Thanks\r\nContent-Length: 2\r\n\r\nok",
    "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n"
    + b"all of it, then a close" * 1000,
}


async def read_head(stream: trio.SocketStream) -> bytes | None:
    """What a client sent up to the end of its request head (and any of its body that
    came with it); None if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    return data


class RawUpstream:
    """The server's state: how many requests came for each path."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def handle(self, stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a client may leave early
            await self._exchange(stream)

    async def _exchange(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = await read_head(stream)
            if data is None:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = [tuple(line.split(":", 1)) for line in lines[1:]]
            length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
            if any(n.lower() == "transfer-encoding" for n, _ in headers):  # chunked
                body = await _dechunked(stream, body)
            while len(body) < length:
                body += await stream.receive_some(65536)
            path = target.partition("?")[0]
            self.calls[path] += 1
            await stream.send_all(await self.answer(method, target, path, lines[1:], body))

    async def answer(
        self, method: str, target: str, path: str, header_lines: list[str], body: bytes
    ) -> bytes:
        if path in CANNED:
            return CANNED[path]
        if path == "/head":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: text/plain\r\n\r\n"
        if path == "/dup":
            text = "\n".join(header_lines).encode("latin-1")
            return (
                b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Dup: one\r\nSet-Cookie: b=2\r\n"
                b"X-Dup: two\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
            )
        if path.startswith("/bighead/"):
            kib = int(path.rsplit("/", 1)[1])
            lines = b"".join(b"X-Big-%d: %s\r\n" % (i, b"b" * 1000) for i in range(kib))
            return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"
        if path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)
        if path.startswith("/slow/"):
            await trio.sleep(float(path.rsplit("/", 1)[1]))  # the upstream's own pace
            return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
        text = f"{method} {target} {len(body)}".encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)


async def _dechunked(stream: trio.SocketStream, data: bytes) -> bytes:
    """The body of chunked framing whose start is `data`, the rest read from `stream`
    (trailers not expected)."""
    body = b""
    while True:
        while b"\r\n" not in data:
            data += await stream.receive_some(65536)
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(data) < size + 2:
            data += await stream.receive_some(65536)
        body, data = body + data[:size], data[size + 2 :]
        if size == 0:
            return body


@asynccontextmanager
async def raw_upstream() -> AsyncIterator[tuple[str, RawUpstream]]:
    """The server on a free loopback port for the block: its URL and its state."""
    server = RawUpstream()
    async with serve_raw(server.handle) as url:
        yield url, server


@asynccontextmanager
async def serve_raw(
    handle: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """`handle` serving each connection on a free loopback port for the block: its URL."""
    (port,) = free_ports(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_tcp, handle, port, host="127.0.0.1"))
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()
