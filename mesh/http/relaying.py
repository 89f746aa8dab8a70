"""The upstream's answer on its way back: whole when it is small and quick, else its head
at once and its body streamed after it.

A body that declares a size up to `INLINE`, or that ends within `STREAM_AFTER` seconds
and `INLINE` bytes, goes inside its response as before. Any other goes as a head
(`Response.head`: status and headers, naming the transfer), then fragments as the body
comes (`pipe.flowing`), then the response again with the body's length: so a big
download starts at the caller at once, and an event stream arrives piece by piece.

Once the head has gone, the answer is told: a body that breaks off (the upstream's
connection fails, the body grows past the limit) is never retried nor presented as
whole. Its transfer is given up (the caller's peer cuts the connection it was going
to) and the request is answered with a ``502`` saying how much had come.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from ..errors import unwrapped
from ..pipe.bodies import Bodies, Body, BodyTooLarge
from ..pipe.flowing import PIECES_AHEAD, flow, gathered, pump_noting
from ..pipe.sending import Sending
from ..pipe.streams import BodyStream
from ..state.database import Database
from ..wire.messages import Response
from .origin import UpstreamError
from .problems import problem_response

STREAM_AFTER = 0.25  # seconds a body of unknown size may take to end before its head goes


@dataclass(frozen=True)
class Relayed:
    """What goes back at the end: the response (its body inline, or in `body`'s file
    when it streamed as `stream`)."""

    response: Response
    body: Body = dataclasses.field(default_factory=Body)
    stream: BodyStream | None = None


class Relay:
    """Brings the upstream's answers back to the peers that asked, for peer `name`."""

    def __init__(
        self, name: str, database: Database, sending: Sending, bodies: Bodies, limit: int
    ) -> None:
        self.name, self.database, self.sending = name, database, sending
        self.bodies, self.limit = bodies, limit

    async def answer(
        self, asker: str, response: Response, chunks: AsyncIterator[bytes], declared: int | None
    ) -> Relayed:
        """`response` (status and headers) with the body `chunks` bring, for `asker`:
        whole when small and quick, else streamed (its head sent now, with the length
        the upstream `declared`, if it did). Errors before the head went are raised
        (UpstreamError, BodyTooLarge) as reading it whole raises them; after, the
        answer is a 502 problem."""
        first: list[bytes] = []
        broke: list[UpstreamError] = []  # what ended the body, if it broke off
        stream: BodyStream | None = None
        send, receive = trio.open_memory_channel[bytes](PIECES_AHEAD)
        try:
            with unwrapped():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump_noting, chunks, send, UpstreamError, broke)
                    streams = await gathered(receive, first, self.limit, STREAM_AFTER)
                    if broke:
                        raise broke[0]
                    if not streams:
                        return Relayed(dataclasses.replace(response, body=b"".join(first)))
                    stream = await self._head(asker, response, declared)
                    body = await flow(self.bodies, self.sending, stream, first, receive, self.limit)
            if broke:  # what came before the break has gone on: now the break
                await self._give_up(stream, body)
                raise broke[0]
            if not stream.opened:  # nothing came after the head: it ends empty
                assert body.file is not None
                await trio.to_thread.run_sync(self.bodies.remove, [body.file])
                return Relayed(response)
            return Relayed(response, body, stream)
        except (UpstreamError, BodyTooLarge, ValueError) as exc:  # ValueError: not as declared
            if stream is None:
                raise
            came = stream.queued
            title = f"the upstream's response broke off after {came} bytes: {exc}"
            return Relayed(problem_response(response.id, self.name, 502, title))

    async def _give_up(self, stream: BodyStream, body: Body) -> None:
        """Give up `stream`, whose body (in `body`'s file) broke off: the far side drops
        it (its file goes once its fragments are acknowledged), or, if none of it left,
        its file goes now."""
        if stream.opened:
            self.sending.abandon(stream)
        elif body.file is not None:
            await trio.to_thread.run_sync(self.bodies.remove, [body.file])

    async def _head(self, asker: str, response: Response, declared: int | None) -> BodyStream:
        """Send the head of `response`, whose body streams (`declared` bytes long, when
        known: its caller then learns the length at once): a new stream for its body."""
        stream = self.sending.stream(asker, response.id, declared)
        headers = response.headers
        if declared is not None:
            headers += ((b"content-length", str(declared).encode()),)
        head = dataclasses.replace(response, headers=headers, body_id=stream.transfer)
        with self.database.transaction():
            await self.sending.send(asker, head)
        return stream
