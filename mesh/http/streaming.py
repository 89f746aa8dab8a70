"""A waiting caller answered as its answer comes: the head once it crossed, the body
piece by piece as its fragments land, ended only once the answer is whole.

The body is read from the file its fragments are written to (never held whole), only as
far as it is here from its start (`pipe.Receiving.streamed`), and from the answer's own
record once the request ends. A body that does not end whole (its sender gave it up,
the request ended with another answer, such as the far side's ``502`` saying it broke
off) is cut: the connection closes without the body's end, so no client takes it for
whole. The request's record says what happened (`/mesh/requests/{id}`): a body its sender
gave up is cut once the answer saying why (which follows the giving up, maybe in a later
file) ended the request, or after `ENDING_GRACE` seconds without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from ..pipe.bodies import CHUNK, Bodies, incoming_name
from ..pipe.receiving import Prefix, Receiving
from ..state.requests import RequestRecord
from ..wire.messages import Response
from .answering import cancel_when_set
from .asgi import Send
from .headers import declared_length
from .requests import Requests

ENDING_GRACE = 5.0  # seconds a body given up waits for its request's end before its cut


class Cut(Exception):
    """The body will not end whole: its connection is closed short."""


@dataclass(frozen=True)
class Streamer:
    """What answering a caller as its answer streams needs."""

    requests: Requests
    receiving: Receiving
    bodies: Bodies
    log: logging.Logger

    async def answer(self, send: Send, remote: str, head: Response, gone: trio.Event) -> None:
        """Answer with `head` (from `remote`) and its body as it comes (`respond`), until
        the caller is `gone`; a body that came whole to it is let go: it ended whole, or
        the caller left once it had every byte of the length the head declared."""
        assert head.body_id is not None
        whole = False  # if the caller goes first
        source = _Source(self.bodies, incoming_name(remote, head.body_id))
        async with trio.open_nursery() as streaming:
            streaming.start_soon(cancel_when_set, gone, streaming.cancel_scope)
            whole = await self.respond(send, remote, head, source)
            streaming.cancel_scope.cancel()
        record = self.requests.get(head.id)
        if record is None or not record.body_file:
            return
        if whole or await _all_it_declared(record, head, source):
            self.requests.given(record)

    async def respond(self, send: Send, remote: str, head: Response, source: _Source) -> bool:
        """Answer with `head` (from `remote`) and its body as it comes, from `source`;
        whether it ended whole (then the caller has it all). Cut short when it will not
        end whole."""
        assert head.body_id is not None
        prefix = self.receiving.streamed(remote, head.body_id)
        headers = [*head.headers, (b"mesh-request-id", head.id.encode())]
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        try:
            await self._body(send, remote, head, prefix, source)
        except Cut as cut:
            me = self.requests.name
            self.log.warning("%s: the answer to %s from %s cut short: %s", me, head.id, remote, cut)
            return False
        finally:
            source.close()
            self.receiving.forget_stream(remote, head.body_id)
        with trio.CancelScope(shield=True):  # the caller counts as gone once it is sent
            await send({"type": "http.response.body", "body": b""})
        return True

    async def _body(
        self, send: Send, remote: str, head: Response, prefix: Prefix, source: _Source
    ) -> None:
        """Send the body as it comes, to its end; Cut when it will not end whole. Its
        giving up is heard as it comes (`prefix`), or from the store when it came before
        this answer followed the body (the file that gave it up may bring its head)."""
        while True:
            record = self.requests.get(head.id)
            ended = record is not None and record.done
            whole = await _whole_size(record, head, source) if record and ended else None
            end = prefix.length if whole is None else whole
            while source.offset < end:
                data = await source.read(end)
                await send({"type": "http.response.body", "body": data, "more_body": True})
                source.sent += len(data)
            # what came before is sent: then the end, or the cut
            if record is not None and ended and whole is None:
                raise Cut(f"the request ended {record.state}, answered {record.status}")
            if ended:
                return
            assert head.body_id is not None
            dropped = prefix.abandoned or self.receiving.given_up(remote, head.body_id)
            if dropped:  # the answer saying why comes right after: the caller is
                await self.requests.wait(head.id, ENDING_GRACE)  # cut once the state says so
                raise Cut("its sender gave it up")
            await self._news(head.id)

    async def _news(self, request_id: str) -> None:
        """Return at the next delivery here, or when the request ends."""
        async with trio.open_nursery() as nursery:

            async def then_stop(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(then_stop, self.receiving.delivered)
            nursery.start_soon(then_stop, partial(self.requests.wait, request_id, math.inf))


async def _all_it_declared(record: RequestRecord, head: Response, source: _Source) -> bool:
    """Whether the caller, gone, had all of the answer `record` ended with: the one `head`
    began, its length declared, every byte of it sent from `source`."""
    if record.body_file != source.name or not record.done:
        return False
    declared = declared_length(dict(head.headers).get(b"content-length"))
    try:
        size = await trio.to_thread.run_sync(source.bodies.size, source.name)
    except OSError:
        return False
    return declared == size == source.sent


async def _whole_size(record: RequestRecord, head: Response, source: _Source) -> int | None:
    """The size of the body of `record`, ended, when it is the answer `head` began (its
    body in `source`'s file, or none at all); else None."""
    if record.status == head.status and record.body_file == source.name:
        try:
            return await trio.to_thread.run_sync(source.bodies.size, source.name)
        except OSError as exc:
            raise Cut(f"its file cannot be read: {exc.strerror}") from None
    same = record.status == head.status and tuple(record.headers) == tuple(head.headers)
    if same and record.body_file is None and not record.body and source.offset == 0:
        return 0
    return None


class _Source:
    """The body of an answer that streams, read on from where it was left."""

    def __init__(self, bodies: Bodies, name: str) -> None:
        self.bodies, self.name = bodies, name
        self.offset = 0  # read so far
        self.sent = 0  # of it, handed to the caller's connection
        self._ranges = bodies.ranges(name)

    async def read(self, end: int) -> bytes:
        """Up to `CHUNK` bytes on from `offset`, short of `end`; Cut if the body does
        not hold them (its file gone or shorter)."""
        size = min(CHUNK, end - self.offset)
        try:
            data = await trio.to_thread.run_sync(self._ranges.read, self.offset, size)
        except OSError as exc:
            raise Cut(f"its file cannot be read: {exc.strerror or exc}") from None
        self.offset += len(data)
        return data

    def close(self) -> None:
        self._ranges.close()
