"""Opaque messages between peers, with no HTTP meaning (`/mesh/messages`): a datagram is
sent whole, in one frame, and waits at the far peer until a consumer reads past it.

Reading (``GET``) never changes anything: a consumer reads past a cursor `after=N`, and
consumes what it has handled with ``POST /mesh/messages/ack`` up to a cursor. One that
crashes before it acknowledges reads the same messages again, so none is lost and none
is skipped. Ids count within this peer's epoch (given in every reply): a cursor from
another epoch (the peer's state was created anew) consumes nothing and reads from the
start.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import trio

from ..pipe.receiving import Receiving
from ..pipe.sending import Sending
from ..state.durable import Durability
from ..state.links import Delivery, LinkTables
from ..wire.messages import Datagram, Kind, unpack_envelope
from .problems import answered_as

DATAGRAM_LIMIT = 4 << 20  # bytes: a datagram travels whole, in one frame


class Mailbox:
    """The datagrams of peer whose state has `epoch`."""

    def __init__(
        self,
        epoch: str,
        tables: LinkTables,
        sending: Sending,
        receiving: Receiving,
        durable: Durability,
    ) -> None:
        self.epoch, self.tables, self.durable = epoch, tables, durable
        self.sending, self.receiving = sending, receiving

    async def post(self, remote: str, body: bytes) -> dict[str, Any]:
        """Send `body` to `remote`; what the 202 says, once it is on disk. HTTPProblem
        503 when it cannot be stored."""
        message = Datagram(uuid.uuid4().hex, body)
        with answered_as("cannot store the message"):
            sent = await self.sending.send(remote, message)
            await self.durable.synced()  # a 202 promises it is on disk
        return {"id": message.id, "to": remote, "seq": sent.seq}

    async def fetch(self, after: int, epoch: str | None, wait: float, limit: int) -> dict[str, Any]:
        """Up to `limit` messages with an id above `after`, waiting up to `wait` seconds
        for one; a cursor of another `epoch` reads from the start."""
        if epoch is not None and epoch != self.epoch:
            after = 0  # a cursor into a state that is gone
        items = self.tables.delivered(after, limit, (Kind.DATAGRAM,))
        with trio.move_on_after(wait):
            while not items:
                await self.receiving.delivered()
                items = self.tables.delivered(after, limit, (Kind.DATAGRAM,))
        if items:  # handed out only once on disk: a power cut must not deliver them again
            await self.durable.synced()
        return {"epoch": self.epoch, "messages": [_as_json(item) for item in items]}

    async def ack(self, upto: int, epoch: str) -> dict[str, Any]:
        """Consume the messages with an id up to `upto`, if `epoch` is this peer's (a
        cursor into a state that is gone consumes nothing); what the reply says, once
        on disk. HTTPProblem 503 when the store cannot take it."""
        consumed = epoch == self.epoch
        if consumed:
            with answered_as("cannot store the acknowledgement"):
                self.tables.consume_upto(upto, Kind.DATAGRAM)
                await self.durable.synced()
        return {"epoch": self.epoch, "consumed": consumed, "upto": upto}


def _as_json(item: Delivery) -> dict[str, Any]:
    envelope = unpack_envelope(item.payload, len(item.payload))
    assert isinstance(envelope.message, Datagram)
    return {
        "id": item.id,
        "from": item.remote,
        "seq": item.seq,
        "message_id": envelope.message.id,
        "body_base64": base64.b64encode(envelope.message.body).decode(),
        "received": item.received,
    }
