"""HTTP/1.1 to one upstream origin: h11 over trio streams, with idle connections kept.

The forwarder sends every request to one origin, so it needs none of a general client's
machinery (redirects, cookies, proxies, header models); this one costs about a third of
httpx's CPU per request. A request is sent as given: the caller supplies every header
but ``Host``. Errors come in two kinds, which decide whether a request may be sent again:
`NeverSent` (no connection could be made: the upstream cannot have seen the request)
and `UpstreamError` (anything later: it may have).

An idle connection is kept for `IDLE_CONNECTION` seconds, shorter than servers keep
theirs, and used again only if nothing came on it meanwhile (a server's close, most
often), so a request is not written to a connection the server is closing.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from .clients import IDLE_CONNECTION

MAX_HEAD = 100 << 10  # bytes of a response's status line and headers
READ_SIZE = 64 << 10

RawHeaders = Sequence[tuple[bytes, bytes]]


class UpstreamError(Exception):
    """The exchange failed after a connection was made: the request may have arrived."""


class NeverSent(UpstreamError):
    """No connection to the upstream could be made: the request never left."""


class BadReply(UpstreamError):
    """The upstream answered, but not in HTTP/1.1 this side takes (a head over
    `MAX_HEAD`, a malformed one): it had the request, and asking again would not help."""


class Unsendable(UpstreamError):
    """The request cannot be written as HTTP/1.1 (h11 refuses its head): it never left,
    and never will."""


class Silent(UpstreamError):
    """The upstream had the request and said nothing for `timeout` seconds: asking again
    would only ask it to do the work twice."""


class _WriteFailed(UpstreamError):
    """The upstream stopped taking the request: it may have answered already."""


@dataclass
class _Connection:
    stream: trio.abc.Stream
    h11: h11.Connection
    silence: float  # seconds to wait for the upstream before giving up
    idle_since: float = 0.0


class Reply:
    """A response under way: status and headers read, the body still to come."""

    def __init__(
        self, connection: _Connection, status: int, headers: RawHeaders, reason: bytes = b""
    ) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers
        self.reason = reason  # the status line's reason phrase, as the upstream wrote it
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        return next((value for key, value in self.headers if key.lower() == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes, undecoded (chunked framing removed). UpstreamError if the
        connection fails or ends before the body does."""
        while True:
            event = await _next_event(self._connection)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                return


class Origin:
    """Requests to the origin of `url` (its path is put before each request's target).
    `timeout` bounds each wait for the upstream (a read, a write); `connect_timeout`,
    making a connection. An https origin is checked against `ssl_context` (by default,
    the certifi roots). Close it with `aclose` (or use it as an async context)."""

    def __init__(
        self,
        url: str,
        timeout: float,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.netloc = parts.netloc.rsplit("@", 1)[-1].encode()
        self.prefix = parts.path.rstrip("/").encode()
        # Its URLs start so (userinfo aside): a Location under it names the upstream
        self.base = f"{parts.scheme}://{self.netloc.decode()}{self.prefix.decode()}"
        self.timeout, self.connect_timeout = timeout, connect_timeout
        # whether it answered in HTTP/1.1 once: then a body may go to it chunked (RFC
        # 9112, 6.1: not before the client knows the server handles HTTP/1.1)
        self.speaks_http11 = False
        self._idle: list[_Connection] = []
        self._ssl = ssl_context

    @asynccontextmanager
    async def request(
        self,
        method: str,
        target: str,
        headers: RawHeaders,
        body: bytes | AsyncIterable[bytes] = b"",
        host: bytes | None = None,
    ) -> AsyncIterator[Reply]:
        """Send a request (`target` the path and query, its bytes as latin-1, or ``*``;
        `headers` all but ``Host``, with ``Content-Length`` when there is a body) and
        give its reply once its head is here. ``Host`` is `host`, or the origin's own.
        The connection is kept for another request if the body was read to its end
        inside the block, else closed."""
        try:
            path = b"*" if target == "*" else self.prefix + target.encode("latin-1")
            head = h11.Request(
                method=method, target=path, headers=[(b"host", host or self.netloc), *headers]
            )
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise Unsendable(f"cannot send the request: {exc}") from None
        connection = await self._connection()
        reply: Reply | None = None
        try:
            try:
                await self._send(connection, head, body)
            except _WriteFailed as failure:  # it may have answered before it stopped reading
                reply = await self._early_reply(connection, failure)
            else:
                reply = await self._reply(connection)
            yield reply
        finally:
            if reply is not None and reply.complete and _reusable(connection.h11):
                connection.h11.start_next_cycle()
                connection.idle_since = trio.current_time()
                self._idle.append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await trio.aclose_forcefully(connection.stream)

    async def __aenter__(self) -> Origin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def _connection(self) -> _Connection:
        """The most recently used idle connection still fresh and quiet, or a new one."""
        now = trio.current_time()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < IDLE_CONNECTION and _quiet(connection.stream):
                return connection
            await trio.aclose_forcefully(connection.stream)
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                if self.tls:
                    context, host = self._ssl_context(), self.host
                    # https_compatible: a server may end a reply by closing without TLS's
                    # close_notify, as HTTPS allows
                    stream = trio.SSLStream(
                        stream, context, server_hostname=host, https_compatible=True
                    )
                    await stream.do_handshake()
        except trio.TooSlowError:
            raise NeverSent(
                f"no connection to {self._where()} in {self.connect_timeout:g} s"
            ) from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise NeverSent(f"cannot connect to {self._where()}: {_reason(exc)}") from exc
        return _Connection(stream, h11.Connection(h11.CLIENT, MAX_HEAD), self.timeout)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                import certifi  # what httpx trusts, where it is installed

                self._ssl = ssl.create_default_context(cafile=certifi.where())
            except ImportError:
                self._ssl = ssl.create_default_context()
        return self._ssl

    async def _send(
        self, connection: _Connection, head: h11.Request, body: bytes | AsyncIterable[bytes]
    ) -> None:
        conn = connection.h11
        try:
            if isinstance(body, bytes):  # one write for head, body and end
                data = conn.send(head) or b""
                if body:
                    data += conn.send(h11.Data(data=body)) or b""
                await self._write(connection, data + (conn.send(h11.EndOfMessage()) or b""))
                return
            await self._write(connection, conn.send(head) or b"")
            async for chunk in body:
                if chunk:
                    await self._write(connection, conn.send(h11.Data(data=chunk)) or b"")
            await self._write(connection, conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:  # e.g. a body shorter than its Content-Length
            raise UpstreamError(f"cannot send the request: {exc}") from exc

    async def _write(self, connection: _Connection, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await connection.stream.send_all(data)
        except trio.TooSlowError:
            raise _WriteFailed(f"{self._where()} took no data for {self.timeout:g} s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise _WriteFailed(f"lost {self._where()}: {_reason(exc)}") from exc

    async def _reply(self, connection: _Connection) -> Reply:
        while True:
            event = await _next_event(connection)
            if isinstance(event, h11.Response):
                self.speaks_http11 = self.speaks_http11 or event.http_version == b"1.1"
                headers = event.headers.raw_items()
                return Reply(connection, event.status_code, headers, bytes(event.reason))
            # an InformationalResponse (1xx) is skipped: the final one follows

    async def _early_reply(self, connection: _Connection, failure: _WriteFailed) -> Reply:
        """The reply the upstream sent before it stopped taking the request (a 413, say),
        or `failure` if there is none."""
        try:
            return await self._reply(connection)
        except UpstreamError:
            raise failure from None

    def _where(self) -> str:
        return f"the upstream {self.host}:{self.port}"


async def _next_event(connection: _Connection) -> h11.Event:
    """The next event from the upstream (never NEED_DATA); UpstreamError if the connection
    fails, closes early, goes silent too long or breaks the protocol."""
    conn, silence = connection.h11, connection.silence
    closed = UpstreamError("the upstream closed the connection before its reply ended")
    data = b"-"
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(silence):
                    data = bytes(await connection.stream.receive_some(READ_SIZE))
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Event):
                raise closed
            return event
    except trio.TooSlowError:
        raise Silent(f"no data from the upstream for {silence:g} s") from None
    except h11.RemoteProtocolError as exc:
        if not data:  # h11 refuses an end of stream in the middle of a reply
            raise closed from None
        raise BadReply(f"bad reply from the upstream: {exc}") from exc
    except (OSError, trio.BrokenResourceError) as exc:
        raise UpstreamError(f"lost the upstream: {_reason(exc)}") from exc


def _quiet(stream: trio.abc.Stream) -> bool:
    """Whether nothing has come on an idle connection: anything (most often the server's
    close) means a request sent on it might never be read."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return True
    poll = select.poll()
    poll.register(transport.socket.fileno(), select.POLLIN)
    return not poll.poll(0)


def _reusable(conn: h11.Connection) -> bool:
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


def _reason(exc: BaseException) -> str:
    """What went wrong, in words (trio wraps a TLS failure as the cause of another)."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
