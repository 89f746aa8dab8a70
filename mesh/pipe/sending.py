"""Sending on the links: each message stored durably before the protocol hears of it, big
bodies as fragments (while they still arrive, when their size is declared), and body
files removed once every fragment of them is acknowledged and that is on disk.

API for the layer above: `await sending.send(remote, message)` returns once the message
is committed, with its id; `sending.note(...)` stores news that rides with the next file;
`sending.stream(...)` starts a body that leaves as it arrives (`receive_body` feeds it),
ended by `send` with it or by `abandon`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial

import trio

from ..proto.link import Protocol
from ..state.database import Database
from ..state.durable import Durability
from ..state.links import LinkTables, OutboundRow
from ..wire.messages import (
    Control,
    Envelope,
    Fragment,
    Message,
    Request,
    Response,
    pack,
    unpack_envelope,
)
from .bodies import INLINE, Bodies, Body
from .events import EventHub, LinkEvents, MessageId, Progress
from .streams import ABANDON, ENDED, BodyStream

# How a stored message is handed to the protocol: `Protocol.queued` or `Protocol.noted`.
Queue = Callable[[str, int, int, float], None]


class Sending:
    """The outgoing side of one peer's links. `kick` wakes the writer (new messages, body
    files to remove); the writer calls `remove_finished` each time round."""

    def __init__(
        self,
        protocol: Protocol,
        database: Database,
        tables: LinkTables,
        bodies: Bodies,
        durable: Durability,
        events: LinkEvents,
        progress: EventHub[Progress],
        block: int,
        kick: Callable[[], None],
    ) -> None:
        self.protocol, self.database, self.tables = protocol, database, tables
        self.bodies, self.durable, self.events, self.progress = bodies, durable, events, progress
        self.block = block  # body bytes per fragment
        self.kick = kick
        self.log = logging.getLogger(f"mesh.{protocol.me}")
        self._finished: list[str] = []  # body files to remove once synced
        self._sending: dict[str, BodyStream] = {}  # by body file
        self._restore()
        self._abandon_streams_left_open()

    def _restore(self) -> None:
        """At start-up: the bodies still leaving, from their first fragment not acked."""
        for remote, spool, seq, _ in self.tables.sending():
            payload = self.tables.outbound_rows(remote, [seq])[seq].payload
            fragment = unpack_envelope(payload, len(payload)).message
            if isinstance(fragment, Fragment):
                total = fragment.total  # None for one that streamed: its size unknown here
                self._sending[spool] = BodyStream(
                    remote, fragment.id, total, fragment.transfer, spool, queued=total or 0
                )

    def _check(self, remote: str) -> None:
        if remote not in self.protocol.remotes:
            raise KeyError(f"{self.protocol.me} does not talk to {remote}")

    async def send(
        self,
        remote: str,
        message: Message,
        body: Body | None = None,
        stream: BodyStream | None = None,
    ) -> MessageId:
        """Store `message` for `remote` durably and queue it; its id once committed.

        With `body` in a body file (a request's or response's), its fragments are stored
        first (those `stream` has not stored already), all in the same transaction, and
        read from the file as they are written out; the message goes after them, with
        `body_length` and `body_id` set. An inline body is in the message already. Inside a
        transaction, the message joins it, and is queued once it commits. KeyError for a
        remote this peer does not talk to; ValueError for a body whose size is not its
        stream's total.
        """
        self._check(remote)
        if body is None or body.file is None:
            return self._store(remote, message)
        assert isinstance(message, Request | Response)
        stream = stream or BodyStream(remote, message.id, body.size)
        self._check_whole(stream, body)  # before the transaction: the abandon is kept
        message = dataclasses.replace(
            message, body=b"", body_length=body.size, body_id=stream.transfer
        )
        with self.database.transaction():
            self.finish(stream, body)
            return self._store(remote, message)

    def finish(self, stream: BodyStream, body: Body) -> None:
        """`stream`'s body is whole, in `body`'s file: its last fragments are stored and
        queued, and the stream is closed, in one transaction. ValueError (`stream` given
        up) for a body that is not in a file or not of the size declared."""
        self._check_whole(stream, body)
        assert body.file is not None
        with self.database.transaction():
            self.grew(stream, body.file, body.size)
            self._close(stream)

    def end(self, stream: BodyStream, body: Body) -> None:
        """`finish` a body whose message went ahead of it without its length (a request
        body of unknown size, `stream.total` None): an ``ended`` note telling the far
        side its length follows its last fragments, in the same transaction. An empty
        body has no fragments: only the note."""
        with self.database.transaction():
            self.finish(stream, body)
            args = {"transfer": stream.transfer, "length": body.size}
            self._store(stream.remote, Control(ENDED, args))

    def _check_whole(self, stream: BodyStream, body: Body) -> None:
        """ValueError, `stream` given up, unless `body` is in a file, of the size it
        declared."""
        if body.file is None or stream.total not in (None, body.size):
            self.abandon(stream)
            raise ValueError(f"a body of {body.size} bytes, not {stream.total} as declared")

    def note(self, remote: str, message: Message) -> MessageId:
        """Store `message` for `remote` durably as news that need not cost a file of its
        own: it goes with the next file to `remote`, half a heartbeat later at the latest
        (see `Protocol.noted`). Inside a transaction, it joins it. KeyError for a remote
        this peer does not talk to."""
        self._check(remote)
        return self._store(remote, message, self.protocol.noted)

    def _store(self, remote: str, message: Message, queue: Queue | None = None) -> MessageId:
        seq = self.protocol.assign(remote)
        self._add(remote, [OutboundRow(seq, pack(Envelope(seq, message)))], queue)
        return MessageId(remote, seq)

    def _add(self, remote: str, rows: list[OutboundRow], queue: Queue | None = None) -> None:
        """Store `rows` and, once that commits, hand them to the protocol with `queue`
        (`Protocol.queued` by default)."""
        self.tables.add_outbound(remote, rows, time.time())
        hand = queue or self.protocol.queued
        self.database.after_commit(lambda: self._queued(remote, rows, hand))

    def _queued(self, remote: str, rows: list[OutboundRow], queue: Queue) -> None:
        now = trio.current_time()
        for row in rows:
            queue(remote, row.seq, len(row.payload) + row.spool_length, now)
        self.events.tell("stored", remote, [row.seq for row in rows], time.time())
        self.kick()

    # -- bodies that leave while they arrive ---------------------------------------------

    def stream(self, remote: str, message_id: str, total: int | None) -> BodyStream:
        """A body of `total` bytes (None: not known until its end) for `message_id` to
        send to `remote` as it arrives. KeyError for a remote this peer does not talk to."""
        self._check(remote)
        return BodyStream(remote, message_id, total)

    def grew(self, stream: BodyStream, spool: str, durable: int) -> None:
        """The first `durable` bytes of `stream`'s body file `spool` are durable: store and
        queue its whole blocks among them (and its last one, once all is here); for a
        body that flows (`BodyStream.flowing`) or whose total is not known, all of them.
        ValueError past the stream's declared total."""
        total = stream.total
        if total is not None and durable > total:
            raise ValueError(f"the body is longer than the {total} bytes declared")
        whole = durable == total or total is None or stream.flowing
        upto = durable if whole else durable - durable % self.block
        if upto <= stream.queued:
            return
        with self.database.transaction():
            if not stream.opened:  # until its message is stored (or it is abandoned)
                stream.spool, stream.opened = spool, True
                self.tables.open_stream(spool, stream.remote, stream.transfer, stream.message_id)
                self._sending[spool] = stream
            self._add(stream.remote, self._fragment_rows(stream, upto))
        stream.queued = upto

    def _fragment_rows(self, stream: BodyStream, upto: int) -> list[OutboundRow]:
        assert stream.spool is not None
        rows = []
        for offset in range(stream.queued, upto, self.block):
            length = min(self.block, upto - offset)
            seq = self.protocol.assign(stream.remote)
            index = offset // self.block
            fragment = Fragment(
                stream.message_id, stream.transfer, index, offset, stream.total, b""
            )
            rows.append(OutboundRow(seq, pack(Envelope(seq, fragment)), stream.spool, length))
        return rows

    def go_ahead(self, stream: BodyStream) -> None:
        """`stream`'s message goes before its body (the far side then waits for the
        body): recorded with the message (inside the caller's transaction), so that a
        stop before the body's end gives it up at start-up. KeyError for a remote this
        peer does not talk to."""
        self._check(stream.remote)
        ahead = _ahead_name(stream.transfer)
        self.tables.open_stream(ahead, stream.remote, stream.transfer, stream.message_id)
        self.database.after_commit(lambda: setattr(stream, "ahead", True))

    def abandon(self, stream: BodyStream) -> None:
        """Give `stream` up: if any of it was queued, or its message went ahead of it,
        tell the far side to drop what it has of it (its fragments still go; the file
        goes once they are acknowledged). Never awaits, so it runs even in a cancelled
        scope."""
        if not (stream.opened or stream.ahead):
            return
        stream.ahead = False
        with self.database.transaction():
            self._store(stream.remote, Control(ABANDON, {"transfer": stream.transfer}))
            self._close(stream)

    def _close(self, stream: BodyStream) -> None:
        """`stream` is ended (inside the caller's transaction)."""
        self.tables.close_stream(_ahead_name(stream.transfer))  # if its message went ahead
        spool = stream.spool
        if spool is None or not stream.opened:
            return
        self.tables.close_stream(spool)

        def closed() -> None:  # not before: a commit that fails leaves it open (its
            stream.opened = False  # fragments still read the file: it must not go)
            if self.tables.spool_waiting(spool) == 0:  # all acknowledged already
                self._sending.pop(spool, None)
                self.remove_once_synced([spool])

        self.database.after_commit(closed)

    def _abandon_streams_left_open(self) -> None:
        """At start-up: give up the bodies a crash cut off while they were arriving."""
        for spool, remote, transfer, message_id in self.tables.streams():
            stream = BodyStream(remote, message_id, 0, transfer, spool, opened=True)
            if remote in self.protocol.remotes:
                me = self.protocol.me
                self.log.info("%s: giving up a body to %s cut off by a stop", me, remote)
                self.abandon(stream)
            else:
                with self.database.transaction():
                    self._close(stream)

    # -- acknowledged ---------------------------------------------------------------------

    def acknowledged(self, remote: str, seqs: Iterable[int], next_seq: int) -> None:
        """`remote` acknowledged `seqs` (our numbering is past `next_seq`): forget them
        durably, report the progress of bodies some fragments of which were among them,
        and remove the files of those acknowledged whole (once that is on disk)."""
        waiting = self.tables.acked(remote, seqs, next_seq)
        done = [s for s, left in waiting.items() if left == 0 and not self._arriving(s)]
        for spool, left in waiting.items():
            stream = self._sending.get(spool)
            if stream is not None:
                self.progress.publish(stream.progress(left))
        for spool in done:
            self._sending.pop(spool, None)
        self.remove_once_synced(done)

    def remove_once_synced(self, names: list[str]) -> None:
        """Remove these body files, no longer needed, once the commits that say so are
        on disk: a power cut must not undo them (the acks of a body's fragments, the
        answer to a request) and leave something to redo from a file that is gone."""
        if names:
            self._finished.extend(names)
            self.kick()

    async def remove_finished(self) -> None:
        """Remove the body files `remove_once_synced` was given, once synced."""
        names, self._finished = self._finished, []
        if names:
            await self.durable.synced()
            await trio.to_thread.run_sync(self.bodies.remove, names)

    def _arriving(self, spool: str) -> bool:
        """Whether body file `spool` is still being written (its stream is open)."""
        stream = self._sending.get(spool)
        return stream is not None and stream.opened

    def transfers(self) -> list[Progress]:
        """Every body leaving in fragments, with how far it has got."""
        found = []
        for remote, spool, _, waiting in self.tables.sending():
            stream = self._sending.get(spool, BodyStream(remote, "", 0))
            found.append(stream.progress(waiting))
        return found


def _ahead_name(transfer: str) -> str:
    """The name under which a body whose message went ahead of it is recorded as open
    until its first piece is (no body file has it)."""
    return f"ahead-{transfer}"


async def receive_body(
    bodies: Bodies,
    sending: Sending,
    chunks: AsyncIterator[bytes],
    limit: int,
    stream: BodyStream | None,
) -> Body:
    """`bodies.receive`, with `stream` (if any) sending the body as it becomes durable,
    and abandoned if it does not arrive whole (the far side then drops its part)."""
    grew = partial(sending.grew, stream) if stream is not None else None
    try:
        return await bodies.receive(chunks, limit, grew)
    except BaseException:
        if stream is not None:
            sending.abandon(stream)
        raise


def stream_for(
    sending: Sending, remote: str, message_id: str, length: int | None, limit: int
) -> BodyStream | None:
    """A stream that sends a body of declared `length` to `remote` while it arrives, when
    it is big enough to be spooled and within `limit`; else None (it goes once whole, or
    is refused)."""
    if length is None or not INLINE < length <= limit:
        return None
    return sending.stream(remote, message_id, length)
