"""A caller's request taken in: stored and sent, with its body.

A body of a declared size over `INLINE` bytes (what ``curl -T`` and most clients send)
does not wait to be whole: the request goes at once, ahead of its body (with its
length and transfer), the body follows as fragments as it arrives, and the far side
streams it to its upstream as they come. A body sent chunked (its size not said) over
`INLINE` bytes goes the same way, its length told at its end (the far side sends it on
chunked); a smaller one goes inside its request once whole, however long it takes (so
the upstream gets it with a `Content-Length`), as does a small body of a declared size.

A body that does not come whole (the client goes away, is too slow, the disk is full)
is never sent as whole: its transfer is given up (the far side drops what it has, and
cuts the upstream's connection if the request had gone on), and a request that had gone
ahead ends ``failed`` with the problem the caller gets. Nothing else is kept of it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import trio

from ..errors import unwrapped
from ..pipe.bodies import Bodies, Body, BodyTooLarge
from ..pipe.flowing import PIECES_AHEAD, flow, flow_from, gathered, pump_noting
from ..pipe.sending import Sending, receive_body, stream_for
from ..pipe.streams import BodyStream
from ..state.requests import Asker
from ..wire.messages import Headers, Request
from .asgi import Receive, body_chunks, too_large, too_large_unread
from .headers import declared_length
from .problems import LOWER_ERRORS, HTTPProblem, answered_as
from .requests import Requests, new_id

STORE = "cannot store the request"
T = TypeVar("T")


@dataclass(frozen=True)
class Taking:
    """One request to take: to `remote`, what crosses of it, and for whom."""

    remote: str
    method: str
    target: str
    crossing: Headers
    ttl: float
    asker: Asker


@dataclass(frozen=True)
class Uploads:
    """Takes requests in for peer whose requests, links and body files these are."""

    requests: Requests
    sending: Sending
    bodies: Bodies
    limit: int  # bytes of a body at most

    async def take(self, call: Taking, headers: Mapping[bytes, bytes], receive: Receive) -> str:
        """Store and send `call` with the body `receive` brings (`headers`, the caller's,
        say its length); its id. HTTPProblem: 413 past the body limit (at once, without
        reading the body, when its declared length is), 400/408 for a body that did not
        come, 503 when the store cannot take it; nothing is half accepted."""
        if b"transfer-encoding" in headers:  # chunked, its size not said (any length ignored)
            return await self._unsized(call, receive)
        length = declared_length(headers.get(b"content-length"))
        if length is not None and length > self.limit:  # refused before a byte is kept
            if b"100-continue" in headers.get(b"expect", b"").lower():
                raise too_large_unread(self.limit)  # before the client sends a byte of it
            raise too_large(self.limit)
        stream = stream_for(self.sending, call.remote, new_id(), length, self.limit)
        if stream is not None:
            flowing = partial(flow_from, self.bodies, self.sending, stream, body_chunks(receive))
            return await self._ahead(call, stream, flowing)
        return await self._submit(call, await self._body(receive))

    async def _submit(self, call: Taking, body: Body) -> str:
        """Store and send `call` with `body`, whole; its id."""
        try:
            with answered_as(STORE):
                return await self.requests.submit(
                    call.remote,
                    call.method,
                    call.target,
                    call.crossing,
                    body,
                    call.ttl,
                    call.asker,
                )
        except HTTPProblem:
            await self._drop(body, None)
            raise

    async def _unsized(self, call: Taking, receive: Receive) -> str:
        """Take `call` with the body `receive` brings, of a size not said: inline if it
        ends within `INLINE` bytes, else ahead of it."""
        send, pieces = trio.open_memory_channel[bytes](PIECES_AHEAD)
        broke: list[HTTPProblem] = []  # how reading the body failed, if it did
        first: list[bytes] = []
        with unwrapped():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump_noting, body_chunks(receive), send, HTTPProblem, broke)
                gathering = gathered(pieces, first, self.limit, math.inf)  # however slow
                streams = await _unless_too_large(gathering, self.limit)
                if broke:
                    raise broke[0]
                if not streams:
                    return await self._submit(call, Body(b"".join(first)))
                stream = self.sending.stream(call.remote, new_id(), None)
                flowing = partial(self._flowing, stream, first, pieces, broke)
                request_id = await self._ahead(call, stream, flowing)
                nursery.cancel_scope.cancel()  # answered before its end: no more is read
        return request_id

    async def _flowing(
        self,
        stream: BodyStream,
        first: list[bytes],
        rest: trio.MemoryReceiveChannel[bytes],
        broke: list[HTTPProblem],
        limit: int,
    ) -> Body:
        """`flow` of a body of a size not said: `first`, then `rest`; what broke it
        raised once what came before has gone (its file gone if none of it went)."""
        body = await flow(self.bodies, self.sending, stream, first, rest, limit)
        if broke:
            if not stream.opened and body.file is not None:
                await trio.to_thread.run_sync(self.bodies.remove, [body.file])
            raise broke[0]
        return body

    async def _ahead(
        self, call: Taking, stream: BodyStream, flowing: Callable[[int], Awaitable[Body]]
    ) -> str:
        """Send `call` ahead of its body, then the body as `flowing(limit)` sends it on
        (`stream`); the request fails with the caller's problem if the body does not
        come whole. A body of a size not said has it told at its end."""
        deadline = time.time() + call.ttl
        head = (call.method, call.target, call.crossing, b"", deadline)
        request = Request(stream.message_id, *head, stream.total, stream.transfer)
        with answered_as(STORE), self.requests.database.transaction():  # its body to come
            self.sending.go_ahead(stream)  # given up from now on, the far side is told
            request_id = await self.requests.submit_request(call.remote, request, call.asker)
        body = Body()
        try:
            with answered_as(STORE), _as_declared():  # each piece goes on once durable
                taken = await self._unless_answered(request_id, flowing)
                if taken is None:  # the far side answered first: the body is given up
                    return request_id
                body = taken
            with answered_as(STORE), _as_declared():
                self._finish(stream, body)
        except HTTPProblem as problem:
            await self._drop(body, stream)
            with contextlib.suppress(*LOWER_ERRORS):  # else the deadline ends it
                self.requests.fail(request_id, problem.status, problem.title)
            raise
        return request_id

    async def _unless_answered(
        self, request_id: str, flowing: Callable[[int], Awaitable[Body]]
    ) -> Body | None:
        """The body `flowing(limit)` takes (413 past the limit), or None if the request
        ends first, or the head of its answer comes (the far side refused it, or its
        upstream answered before it read the whole body): the rest is not taken, and
        the body is given up (`flow`)."""
        taken: list[Body] = []
        with unwrapped():
            async with trio.open_nursery() as nursery:

                async def until_ended() -> None:
                    await self.requests.wait_for_head(request_id, math.inf)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_ended)
                taken.append(await _unless_too_large(flowing(self.limit), self.limit))
                nursery.cancel_scope.cancel()
        return taken[0] if taken else None

    def _finish(self, stream: BodyStream, body: Body) -> None:
        """`stream`'s body came whole (`body`): its last fragments go, and its length,
        if its request went without it. An empty one sent none: its file goes."""
        if stream.total is not None:
            self.sending.finish(stream, body)
            return
        self.sending.end(stream, body)
        if body.size == 0 and body.file is not None:
            self.bodies.remove([body.file])

    async def _body(self, receive: Receive) -> Body:
        """The request body, whole: spooled to a file when big; 413 past the body limit."""
        with answered_as(STORE):
            chunks = body_chunks(receive)
            receiving = receive_body(self.bodies, self.sending, chunks, self.limit, None)
            return await _unless_too_large(receiving, self.limit)

    async def _drop(self, body: Body, stream: BodyStream | None) -> None:
        """Let go of the body of a request that could not be stored, or did not come."""
        if stream is not None and (stream.opened or stream.ahead):  # let the far side know
            with contextlib.suppress(*LOWER_ERRORS):  # else start-up does
                self.sending.abandon(stream)
        elif body.file is not None:
            await trio.to_thread.run_sync(self.bodies.remove, [body.file])


@contextlib.contextmanager
def _as_declared() -> Iterator[None]:
    """A body not of the length its caller declared (ValueError from `Sending`) is a 400."""
    try:
        yield
    except ValueError as exc:
        raise HTTPProblem(400, "request body not as declared", str(exc)) from None


async def _unless_too_large(body: Awaitable[T], limit: int) -> T:
    """What `body` gives, or HTTPProblem 413 if it is over `limit` bytes."""
    try:
        return await body
    except BodyTooLarge:
        raise too_large(limit) from None
