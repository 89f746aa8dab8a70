"""Accepting connections within a bound: hypercorn's connection handling (its
`TCPServer`, which speaks HTTP/1.1 to one connection), driven by an accept loop of ours
that takes a new connection only while fewer than `limit` are open.

hypercorn's own `serve` accepts every connection it can, so a crowd of connections that
never finish a request could take every file descriptor of the process and leave the
peer unable to write a file or open its database. Here a connection past the bound waits
in the kernel's backlog until another ends, and the peer keeps descriptors of its own.
The ASGI lifespan protocol is not run: mesh's applications need no start-up or shutdown.
"""

from __future__ import annotations

import math
import resource
import socket
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from .http11 import adopt

RESERVED = 256  # file descriptors kept for the peer's own files, database and upstream
FEWEST = 16  # connections allowed however low the limit
WRITE_TIMEOUT = 60  # seconds a write to a caller may make no progress
FILES_PER_CONNECTION = 2  # its socket, and a body file it spools or is sent from


def connection_limit() -> int:
    """How many connections the process may have open on all its listeners together:
    the soft limit on open files, less what the peers keep for themselves, over what
    one connection may hold (its socket, and a body file it spools or is sent)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(FEWEST, (soft - RESERVED) // FILES_PER_CONNECTION)


_SLOTS: trio.lowlevel.RunVar[trio.Semaphore] = trio.lowlevel.RunVar("connection slots")


def _shared_slots(limit: int) -> trio.Semaphore:
    """The slots every listener of this process (one per peer `mesh up` runs) takes its
    connections from: the descriptors they use come from one limit."""
    try:
        return _SLOTS.get()
    except LookupError:
        slots = trio.Semaphore(limit)
        _SLOTS.set(slots)
        return slots


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (start-up); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class _Connection(TCPServer):
    """hypercorn's connection, with mesh's HTTP/1.1 (`http11`), let go as soon as the
    caller is: after the caller closed its side (or went quiet too long), hypercorn
    would still wait out its keep-alive timer before closing, holding the descriptor; a
    request under way still finishes.

    Quiet is timed as hypercorn does (its `read_timeout` for each read), but not while
    one of the caller's requests is being answered (`answering`): a caller waiting for
    its answer sends nothing, for as long as the request lasts (the app bounds a body
    that stops coming). A request whose body was not read holds its connection only
    that long after its answer."""

    answering = 0  # requests of this connection the app is handling now
    drop: trio.CancelScope | None = None  # cancelled to end the connection at once
    _reading: trio.CancelScope | None = None  # the read under way

    def pace(self) -> None:
        """Give the read under way its deadline, from whether a request is answered."""
        if self._reading is not None:
            quiet = self.config.read_timeout or math.inf
            self._reading.deadline = math.inf if self.answering else trio.current_time() + quiet

    async def _read_data(self) -> None:
        adopt(self.protocol.protocol, self.config.h11_max_incomplete_size)  # nothing read yet
        while True:
            with trio.CancelScope() as self._reading:
                self.pace()
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            if self._reading.cancelled_caught:  # quiet too long
                break
            await self.protocol.handle(RawData(bytes(data)))
            if not data:
                break
        self._reading = None
        await self.protocol.handle(Closed())
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, but a write that makes no progress for `WRITE_TIMEOUT` seconds (a
        caller that stopped reading would hold its connection and the body file it is
        sent from for good), or that meets the connection being closed (the caller left
        as soon as it had the head of an answer, and hypercorn's reader is closing it),
        is the caller gone, as a broken connection is, not an error of the app."""
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            # Shielded as hypercorn does: an app cancelled midway leaves no half write
            with trio.CancelScope(shield=True), trio.move_on_after(WRITE_TIMEOUT):
                try:
                    await self.stream.send_all(event.data)
                    return
                except (  # gone, or being closed by hypercorn's reader (Busy)
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    trio.BusyResourceError,
                ):
                    pass
            if self.drop is not None:  # the caller is gone: so is all of its connection
                self.drop.cancel()
            await trio.aclose_forcefully(self.stream)
            await self.protocol.handle(Closed())


async def _drop_if_headless(headed: trio.Event, seconds: float, scope: trio.CancelScope) -> None:
    with trio.move_on_after(seconds):
        await headed.wait()
        return
    scope.cancel()


class Capped(trio.abc.Listener[trio.abc.Stream]):
    """A listener that accepts only while a slot is free; the connection's handler gives
    its slot back when it ends."""

    def __init__(self, inner: trio.abc.Listener[Any], slots: trio.Semaphore) -> None:
        self.inner, self.slots = inner, slots

    async def accept(self) -> trio.abc.Stream:
        await self.slots.acquire()
        try:
            stream: trio.abc.Stream = await self.inner.accept()
        except BaseException:
            self.slots.release()
            raise
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


def listeners(config: Config) -> list[trio.abc.Listener[Any]]:
    """The listeners of `config`'s binds, listening (TLS ones wrapped as hypercorn
    does); OSError when an address cannot be had."""
    sockets = config.create_sockets()
    found: list[trio.abc.Listener[Any]] = []
    secure: list[socket.socket] = list(sockets.secure_sockets)
    for sock in [*secure, *sockets.insecure_sockets]:
        sock.listen(config.backlog)
    context = config.create_ssl_context() if secure else None
    if context is not None:
        for sock in secure:
            plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            found.append(trio.SSLListener(plain, context, https_compatible=True))
    for sock in sockets.insecure_sockets:
        found.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return found


KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 6  # seconds, seconds, count


def _probe_when_idle(stream: trio.abc.Stream) -> None:
    """Have the kernel probe a connection idle for a minute (TCP keepalive), so that a
    caller gone without a word (its machine off, the network cut) is noticed in about
    two minutes: a caller waiting for its answer sends nothing, and nothing else would
    tell it from one that is there."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return
    transport.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, option):  # Linux has them all; others keep their defaults
            transport.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Noticed:
    """An application that notes it was called (a request's head arrived whole), and
    tells its `connection` while it answers (`_Connection.answering`)."""

    def __init__(self, app: Any, called: trio.Event) -> None:
        self.app, self.called = app, called
        self.connection: _Connection | None = None

    async def __call__(self, *args: Any) -> None:
        self.called.set()
        connection = self.connection
        if connection is None:
            await self.app(*args)
            return
        connection.answering += 1
        connection.pace()
        try:
            await self.app(*args)
        finally:
            connection.answering -= 1
            connection.pace()


async def serve_capped(
    app: Any,
    config: Config,
    limit: int,
    head_timeout: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ASGI `app` on `config`'s binds with at most `limit` connections open at once
    on all the listeners of this process (its trio run: the first to start sets the
    limit, `_shared_slots`); started once it listens. A connection whose first request
    head is not whole within `head_timeout` seconds is dropped (one that trickles it in
    a byte at a time too). OSError when it cannot listen."""
    opened = listeners(config)
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    slots = _shared_slots(limit)

    async def handle(stream: trio.abc.Stream) -> None:
        _probe_when_idle(stream)
        headed = trio.Event()
        noticed = _Noticed(wrapped, headed)
        connection = _Connection(noticed, config, context, {}, stream)  # type: ignore[arg-type]
        noticed.connection = connection
        try:
            async with trio.open_nursery() as nursery:
                connection.drop = nursery.cancel_scope
                nursery.start_soon(_drop_if_headless, headed, head_timeout, nursery.cancel_scope)
                await connection
                nursery.cancel_scope.cancel()
        finally:
            slots.release()

    capped = [Capped(listener, slots) for listener in opened]
    task_status.started()
    await trio.serve_listeners(handle, capped)
