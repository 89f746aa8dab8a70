"""The trio driver of the reliable links: the pure `Protocol` plus the store and the outbox.

API for the layer above:
- `await links.send(remote, message)` returns once the message is durable, with its id;
  a big body (a file) goes first as fragments. `links.stream(...)` starts sending a body
  while it still arrives (`links.grew` as it becomes durable), ended by `send` with it or
  by `links.abandon` (the far side then drops what it has of it);
- `links.deliveries()` yields delivered messages in batches (stored before acknowledged)
  until the layer above `consume`s it;
- `links.events.subscribe()` streams per-message status events (stored, sent, resent,
  acked, delivered).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import trio

from ..errors import FormatError, MessageError
from ..proto.link import Arrival, LinkSettings, OutgoingFile, Protocol, Verdict
from ..state.durable import Durability
from ..state.offload import Offload
from ..state.store import Inbound, OutboundRow, Store
from ..wire.crypto import Keyring
from ..wire.fileformat import Limits, ReadBuffer, ScannedFile, read_frame, write_file
from ..wire.messages import (
    Control,
    Envelope,
    Fragment,
    Kind,
    Message,
    Request,
    Response,
    fragment_head,
    is_id,
    kind_of,
    pack,
    unpack_envelope,
    unpack_fragment,
)
from ..wire.names import FileKind, FileName
from . import folder as pipe
from .bodies import Bodies, Body, BodyReader, incoming_name

T = TypeVar("T")
ABANDON = "abandon"  # the control op that gives up a transfer (handled here, not above)
UNREAD_KEPT = 64  # our newest files per remote checked for still waiting in the outbox
SMALL_WRITE = 256 << 10  # bytes of messages: a file this small may be written on the loop


@dataclass
class _Opened:
    """The delivered frames of one file, read: messages to store, fragments already
    written to their body files ((transfer, message id, total, length)), transfers given
    up, seqs refused (authentic but malformed: acknowledged, never delivered) and seqs
    that could not be read now (left for a resend)."""

    messages: list[tuple[int, int, bytes]]
    fragments: list[tuple[str, str, int, int]]
    abandoned: list[str]
    refused: list[tuple[int, str]]
    unread: set[int]


@dataclass
class BodyStream:
    """A body of `total` bytes for message `message_id`, sent to `remote` in fragments
    as transfer `transfer`, while it may still be arriving."""

    remote: str
    message_id: str
    total: int
    transfer: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    spool: str | None = None  # its body file, once known
    queued: int = 0  # bytes of it stored as fragments so far
    opened: bool = False  # recorded as open: fragments stored, its message not yet

    def progress(self, waiting: int) -> Progress:
        """How far it has got, with `waiting` bytes of its fragments not acknowledged."""
        done = max(self.queued - waiting, 0)
        return Progress("sending", self.remote, self.message_id, done, self.total)


@dataclass(frozen=True)
class MessageId:
    remote: str
    seq: int

    def __str__(self) -> str:
        return f"{self.remote}#{self.seq}"


@dataclass(frozen=True)
class LinkEvent:
    """A status change of one message: stored, sent, resent, acked or delivered."""

    state: str
    peer: str  # the peer that saw it
    remote: str
    seq: int
    at: float  # wall clock

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "peer": self.peer,
            "remote": self.remote,
            "seq": self.seq,
            "at": self.at,
        }


@dataclass(frozen=True)
class Progress:
    """How far a body that crosses in fragments has got: bytes acknowledged by `remote`
    (sending) or arrived from it (receiving), of `total`."""

    direction: str  # "sending" or "receiving"
    remote: str
    message_id: str
    done: int
    total: int

    def as_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "peer": self.remote,
            "id": self.message_id,
            "done": self.done,
            "total": self.total,
        }


class EventHub(Generic[T]):
    """Fan-out of events to subscribers; a subscriber too slow to keep up loses events
    (counted), never slows the publisher."""

    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._subscribers: list[trio.MemorySendChannel[T]] = []
        self.dropped = 0

    def subscribe(self) -> trio.MemoryReceiveChannel[T]:
        send, receive = trio.open_memory_channel[T](self._buffer)
        self._subscribers.append(send)
        return receive

    def publish(self, event: T) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)


# How a stored message is handed to the protocol: `Protocol.queued` or `Protocol.noted`.
Queue = Callable[[str, int, int, float], None]


class Links:
    """The links of one running peer."""

    def __init__(
        self,
        name: str,
        store: Store,
        keyring: Keyring,
        settings: dict[str, LinkSettings],
        outbox: Path,
        bodies: Bodies,
        limits: Limits,
        max_body: int,
        block: int,
    ) -> None:
        self.name = name
        self.store = store
        self.keyring = keyring
        self.outbox = outbox
        self.bodies = bodies
        self.limits = limits
        self.max_body = max_body  # a fragmented body longer than this is refused
        self.block = block  # body bytes per fragment
        self.log = logging.getLogger(f"mesh.{name}")
        restored = {remote: store.link_state(remote) for remote in settings}
        self.protocol = Protocol(name, store.epoch, settings, restored, trio.current_time())
        self.events: EventHub[LinkEvent] = EventHub()
        self.progress: EventHub[Progress] = EventHub()
        self._sending: dict[str, BodyStream] = {}  # by body file
        for remote, spool, seq, _ in store.sending():
            payload = store.outbound_rows(remote, [seq])[seq].payload
            fragment = unpack_envelope(payload, len(payload)).message
            if isinstance(fragment, Fragment):
                total = fragment.total
                self._sending[spool] = BodyStream(
                    remote, fragment.id, total, fragment.transfer, spool, queued=total
                )
        self._kick = trio.Event()
        self._delivered = trio.Event()
        self._last_heartbeat: dict[str, Path] = {}
        self._unread: dict[str, list[tuple[Path, float]]] = {r: [] for r in settings}
        self.last_file_at: dict[str, float] = {}  # wall clock of our last file per remote
        self.pipe_error: str | None = None  # why the last write to the outbox failed
        self.durable = Durability(store, self.log)
        self.small_writes = Offload(allowed=pipe.is_local(outbox))  # on the loop if quick
        self._finished: list[str] = []  # body files to remove once synced
        self._abandon_streams_left_open()

    def _publish(self, state: str, remote: str, seqs: Iterable[int]) -> None:
        at = time.time()
        for seq in seqs:
            self.events.publish(LinkEvent(state, self.name, remote, seq, at))

    def kick(self) -> None:
        self._kick.set()

    # -- sending -------------------------------------------------------------------------

    async def send(
        self,
        remote: str,
        message: Message,
        body: Body | None = None,
        stream: BodyStream | None = None,
    ) -> MessageId:
        """Store `message` for `remote` durably and queue it; its id once durable.

        With `body` in a body file (a request's or response's), its fragments are stored
        first (those `stream` has not stored already), all in the same transaction, and
        read from the file as they are written out; the message goes after them, with
        `body_length` and `body_id` set. An inline body is in the message already. Inside a
        store transaction, the message joins it, and is queued once it commits. KeyError
        for a remote this peer does not talk to; ValueError for a body whose size is not
        its stream's total.
        """
        if remote not in self.protocol.remotes:
            raise KeyError(f"{self.name} does not talk to {remote}")
        if body is None or body.file is None:
            return self._store(remote, message)
        assert isinstance(message, Request | Response)
        stream = stream or BodyStream(remote, message.id, body.size)
        if body.size != stream.total:
            self.abandon(stream)
            raise ValueError(f"a body of {body.size} bytes, not {stream.total} as declared")
        message = dataclasses.replace(
            message, body=b"", body_length=body.size, body_id=stream.transfer
        )
        with self.store.transaction():
            self.grew(stream, body.file, body.size)
            sent = self._store(remote, message)
            self._close(stream)
        return sent

    def note(self, remote: str, message: Message) -> MessageId:
        """Store `message` for `remote` durably as news that need not cost a file of its
        own: it goes with the next file to `remote`, half a heartbeat later at the latest
        (see `Protocol.noted`). Inside a store transaction, it joins it. KeyError for a
        remote this peer does not talk to."""
        if remote not in self.protocol.remotes:
            raise KeyError(f"{self.name} does not talk to {remote}")
        return self._store(remote, message, self.protocol.noted)

    def _store(self, remote: str, message: Message, queue: Queue | None = None) -> MessageId:
        seq = self.protocol.assign(remote)
        self._add(remote, [OutboundRow(seq, pack(Envelope(seq, message)))], queue)
        return MessageId(remote, seq)

    def _add(self, remote: str, rows: list[OutboundRow], queue: Queue | None = None) -> None:
        """Store `rows` and, once that commits, hand them to the protocol with `queue`
        (`Protocol.queued` by default)."""
        self.store.add_outbound(remote, rows, time.time())
        self.store.after_commit(lambda: self._queued(remote, rows, queue or self.protocol.queued))

    def _queued(self, remote: str, rows: list[OutboundRow], queue: Queue) -> None:
        now = trio.current_time()
        for row in rows:
            queue(remote, row.seq, len(row.payload) + row.spool_length, now)
        self._publish("stored", remote, [row.seq for row in rows])
        self.kick()

    def stream(self, remote: str, message_id: str, total: int) -> BodyStream:
        """A body of `total` bytes for `message_id` to send to `remote` as it arrives.
        KeyError for a remote this peer does not talk to."""
        if remote not in self.protocol.remotes:
            raise KeyError(f"{self.name} does not talk to {remote}")
        return BodyStream(remote, message_id, total)

    def grew(self, stream: BodyStream, spool: str, durable: int) -> None:
        """The first `durable` bytes of `stream`'s body file `spool` are durable: store and
        queue its whole blocks among them (and its last one, once all is here).
        ValueError past the stream's declared total."""
        if durable > stream.total:
            raise ValueError(f"the body is longer than the {stream.total} bytes declared")
        upto = durable if durable == stream.total else durable - durable % self.block
        if upto <= stream.queued:
            return
        with self.store.transaction():
            if not stream.opened:  # until its message is stored (or it is abandoned)
                stream.spool, stream.opened = spool, True
                self.store.open_stream(spool, stream.remote, stream.transfer, stream.message_id)
                self._sending[spool] = stream
            self._add(stream.remote, self._fragment_rows(stream, upto))
        stream.queued = upto

    def _fragment_rows(self, stream: BodyStream, upto: int) -> list[OutboundRow]:
        assert stream.spool is not None
        rows = []
        for offset in range(stream.queued, upto, self.block):
            length = min(self.block, upto - offset)
            seq = self.protocol.assign(stream.remote)
            fragment = Fragment(
                stream.message_id,
                stream.transfer,
                offset // self.block,
                offset,
                stream.total,
                b"",
            )
            rows.append(OutboundRow(seq, pack(Envelope(seq, fragment)), stream.spool, length))
        return rows

    def abandon(self, stream: BodyStream) -> None:
        """Give `stream` up: if any of it was queued, tell the far side to drop what it has
        of it (its fragments still go; the file goes once they are acknowledged). Never
        awaits, so it runs even in a cancelled scope."""
        if not stream.opened:
            return
        with self.store.transaction():
            self._store(stream.remote, Control(ABANDON, {"transfer": stream.transfer}))
            self._close(stream)

    def _close(self, stream: BodyStream) -> None:
        """`stream` is ended (inside the caller's transaction)."""
        spool = stream.spool
        if spool is None or not stream.opened:
            return
        self.store.close_stream(spool)
        stream.opened = False

        def closed() -> None:
            if self.store.spool_waiting(spool) == 0:  # all acknowledged already
                self._sending.pop(spool, None)
                self.remove_once_synced([spool])

        self.store.after_commit(closed)

    def _abandon_streams_left_open(self) -> None:
        """At start-up: give up the bodies a crash cut off while they were arriving."""
        for spool, remote, transfer, message_id in self.store.streams():
            stream = BodyStream(remote, message_id, 0, transfer, spool, opened=True)
            if remote in self.protocol.remotes:
                self.log.info("%s: giving up a body to %s cut off by a stop", self.name, remote)
                self.abandon(stream)
            else:
                with self.store.transaction():
                    self._close(stream)

    async def run(self) -> None:
        """Write what the protocol plans, when it plans it, until cancelled."""
        while True:
            await self._remove_finished()
            now = trio.current_time()
            backlogged = []
            resending = self.protocol.resending(now)
            if resending:  # only then does it matter: not a thread round trip per file
                backlogged = await trio.to_thread.run_sync(self._backlogged, now, resending)
            for file in self.protocol.outgoing(now, backlogged):
                await self._write(file)
            wake = self.protocol.next_wakeup()
            self._kick = trio.Event()
            with trio.move_on_at(wake if wake is not None else math.inf):
                await self._kick.wait()

    def _backlogged(self, now: float, remotes: Iterable[str]) -> list[str]:
        """Of `remotes`, those for which a file we wrote still waits in the outbox: the
        pipe has not taken it yet, so resending its messages would only add to the queue.
        Files older than eight timeouts no longer count (a mirror that copies without
        deleting must not stop resends for good). Blocking: call from a thread."""
        found = []
        for remote in remotes:
            files = self._unread[remote]
            limit = 8 * self.protocol.outbound(remote).timeout()
            files[:] = [(p, at) for p, at in files if now - at < limit and os.path.exists(p)]
            if files:
                found.append(remote)
        return found

    def _frames(self, rows: list[OutboundRow], reader: BodyReader) -> Iterator[bytes | memoryview]:
        """The envelope of each row; a fragment's frame is built in one buffer, used again
        for the next (each frame is written before the next is asked for), its data read
        from its body file straight into place. Blocking."""
        buffer = bytearray()
        for row in rows:
            if row.spool is None:
                yield row.payload
                continue
            fragment = unpack_envelope(row.payload, len(row.payload)).message
            assert isinstance(fragment, Fragment)
            head = fragment_head(row.payload, row.spool_length)
            size = len(head) + row.spool_length
            if len(buffer) < size:
                buffer = bytearray(size)
            frame = memoryview(buffer)[:size]
            frame[: len(head)] = head
            reader.read_into(row.spool, fragment.offset, frame[len(head) :])
            yield frame

    async def _write(self, file: OutgoingFile) -> None:
        await self.durable.synced()  # what the file carries and acknowledges is on disk
        stored = self.store.outbound_rows(file.remote, file.seqs) if file.seqs else {}
        rows = [stored[seq] for seq in file.seqs if seq in stored]  # acked meanwhile: skip
        seqs = [row.seq for row in rows]
        kind = FileKind.MESSAGES if seqs else FileKind.HEARTBEAT
        name = FileName(time.time_ns(), self.name, file.remote, os.urandom(4).hex(), kind)

        def encode(out: BinaryIO) -> None:
            with self.bodies.reader() as reader:
                write_file(
                    out,
                    self.keyring.identity,
                    recipient=file.remote,
                    epoch=self.store.epoch,
                    created=time.time(),
                    nonce=os.urandom(8),
                    frames=self._frames(rows, reader),
                    count=len(rows),
                    seqs=seqs,
                    link_key=self.keyring.sending_key(file.remote),
                    link=file.link,
                )

        write = partial(pipe.write_atomically_with, self.outbox, name, encode)
        small = sum(len(row.payload) + row.spool_length for row in rows) <= SMALL_WRITE
        try:  # big data is hashed (and maybe sealed, compressed) in a thread
            path = await (self.small_writes.run(write) if small else trio.to_thread.run_sync(write))
        except OSError as exc:
            if self.pipe_error is None:
                self.log.error("%s: cannot write to %s: %s", self.name, self.outbox, exc)
            self.pipe_error = f"cannot write to {self.outbox}: {exc.strerror or exc}"
            self.protocol.failed(file, trio.current_time())
            return
        if self.pipe_error is not None:
            self.log.info("%s: %s is writable again", self.name, self.outbox)
            self.pipe_error = None
        outbound = self.protocol.outbound(file.remote)
        first = {seq for seq in seqs if outbound.attempts(seq) == 0}
        self.protocol.written(file, trio.current_time())
        self.last_file_at[file.remote] = time.time()
        self._publish("sent", file.remote, [seq for seq in seqs if seq in first])
        self._publish("resent", file.remote, [seq for seq in seqs if seq not in first])
        unread = self._unread[file.remote]
        unread.append((path, trio.current_time()))
        del unread[:-UNREAD_KEPT]  # checked only when resends are due: keep it bounded
        await self._supersede(file.remote, path if kind is FileKind.HEARTBEAT else None)

    async def _supersede(self, remote: str, heartbeat: Path | None) -> None:
        """Any file we write carries the newest link state, so our previous heartbeat for
        `remote`, if nobody took it yet, says nothing new: remove it."""
        previous = self._last_heartbeat.pop(remote, None)
        if heartbeat is not None:
            self._last_heartbeat[remote] = heartbeat
        if previous is not None:
            await trio.to_thread.run_sync(pipe.remove, previous)

    # -- receiving -----------------------------------------------------------------------

    async def arrived(
        self, path: Path, scanned: ScannedFile, content: bytes | None = None
    ) -> Arrival:
        """Take a valid file from a remote (`path`, as `scan_file` found it; `content`,
        the whole of it when it was small enough to be read at once): apply its acks,
        store its new messages (durably, with the received-state; fragments into their
        body files) and only then let them be acknowledged."""
        header = scanned.header
        infos = header.frames
        whole = [infos[i].seq for i, intact in enumerate(scanned.intact) if intact]
        cut = [infos[i].seq for i in scanned.missing]
        now = trio.current_time()
        numbered_to = self.protocol.outbound(header.sender).next_seq
        arrival = self.protocol.arrived(header, whole, cut, now)
        remote = arrival.remote
        if arrival.verdict is Verdict.NEW_EPOCH and arrival.old_epoch is not None:
            self.log.warning(
                "%s: %s has a new epoch %s (was %s): its state was created anew; "
                "its link starts again from %d",
                self.name,
                remote,
                header.epoch,
                arrival.old_epoch,
                header.link.floor,
            )
        outbound = self.protocol.outbound(remote)
        if arrival.acked or outbound.next_seq > numbered_to:  # else nothing new to keep
            waiting = self.store.acked(remote, arrival.acked, outbound.next_seq)
            self._sent_further(waiting)
        self._publish("acked", remote, arrival.acked)
        await self._store_deliveries(arrival, path, scanned, content)
        if arrival.resend or arrival.deliver or cut:
            self.kick()
        return arrival

    def _sent_further(self, waiting: dict[str, int]) -> None:
        """Report the progress of bodies some fragments of which were acknowledged, and
        remove the files of those acknowledged whole."""
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
        answer to a request) and leave something to redo from a file that is gone.
        `run` does it."""
        if names:
            self._finished.extend(names)
            self.kick()

    async def _remove_finished(self) -> None:
        names, self._finished = self._finished, []
        if names:
            await self.durable.synced()
            await trio.to_thread.run_sync(self.bodies.remove, names)

    def _arriving(self, spool: str) -> bool:
        """Whether body file `spool` is still being written (its stream is open)."""
        stream = self._sending.get(spool)
        return stream is not None and stream.opened

    def transfers(self) -> list[dict[str, Any]]:
        """Every body crossing in fragments, either way, with how far it has got."""
        found = []
        for remote, spool, _, waiting in self.store.sending():
            stream = self._sending.get(spool, BodyStream(remote, "", 0))
            found.append(stream.progress(waiting))
        for remote, message_id, have, total in self.store.receiving():
            found.append(Progress("receiving", remote, message_id, have, total))
        return [p.as_json() for p in found]

    async def _store_deliveries(
        self, arrival: Arrival, path: Path, scanned: ScannedFile, content: bytes | None
    ) -> None:
        if not arrival.deliver and arrival.verdict is not Verdict.NEW_EPOCH:
            return
        remote = arrival.remote
        given_up = self.store.abandoned(remote) if arrival.deliver else set()
        if content is not None:  # small: opened here, without a thread round trip
            opened = self._open(arrival, io.BytesIO(content), scanned, given_up)
        else:
            opened = await trio.to_thread.run_sync(
                self._open_file, arrival, path, scanned, given_up
            )
        for seq, problem in opened.refused:
            # Authentic but malformed: never delivered, but acknowledged so the sender
            # stops resending what can never be taken.
            self.log.error("%s: message %d from %s refused: %s", self.name, seq, remote, problem)
        taken = [seq for seq in arrival.deliver if seq not in opened.unread]
        inbound = self.protocol.inbound(remote)
        state = inbound.received
        for seq in taken:
            state = state.add(seq)
        assert inbound.epoch is not None
        self.store.deliver(
            remote,
            inbound.epoch,
            opened.messages,
            state,
            inbound.retired,
            time.time(),
            opened.fragments,
            opened.abandoned,
        )
        self.protocol.stored(remote, taken)
        self._publish("delivered", remote, taken)
        for transfer, message_id, total in {(t, m, n) for t, m, n, _ in opened.fragments}:
            have = self.store.transfer_received(remote, transfer)
            self.progress.publish(Progress("receiving", remote, message_id, have, total))
        if opened.messages or opened.fragments or opened.abandoned:
            self._delivered.set()
            self._delivered = trio.Event()

    def _open_file(
        self, arrival: Arrival, path: Path, scanned: ScannedFile, given_up: set[str]
    ) -> _Opened:
        with open(path, "rb") as source:
            return self._open(arrival, source, scanned, given_up)

    def _open(
        self, arrival: Arrival, source: BinaryIO, scanned: ScannedFile, given_up: set[str]
    ) -> _Opened:
        """Read the frames `arrival` delivers from `source`; fragments go straight to their
        body files (durable on return), unless their transfer was given up (`given_up`, or
        an ``abandon`` among these frames, whose body file is removed here). Blocking."""
        index_of: dict[int, int] = {}
        for index, info in enumerate(scanned.header.frames):
            if scanned.intact[index]:
                index_of.setdefault(info.seq, index)
        opened = _Opened([], [], [], [], set())
        buffer = ReadBuffer()  # each frame is done with before the next is read
        with self.bodies.writer() as bodies:
            for seq in arrival.deliver:
                try:
                    data = read_frame(
                        source, scanned.parsed, index_of[seq], self.keyring, self.limits, buffer
                    )
                except FormatError:  # changed since it was scanned: wait for a resend
                    opened.unread.add(seq)
                    continue
                try:
                    message, fragment_data = self._message(seq, data)
                except MessageError as exc:
                    opened.refused.append((seq, str(exc)))
                    continue
                if isinstance(message, Fragment):
                    if message.transfer not in given_up:
                        name = incoming_name(arrival.remote, message.transfer)
                        bodies.write(name, message.offset, fragment_data)
                        opened.fragments.append(
                            (message.transfer, message.id, message.total, len(fragment_data))
                        )
                elif isinstance(message, Control) and message.op == ABANDON:
                    transfer = str(message.args["transfer"])
                    given_up.add(transfer)
                    opened.abandoned.append(transfer)
                    # Gone before it is marked abandoned: never a partial file left over
                    self.bodies.remove([incoming_name(arrival.remote, transfer)])
                else:
                    opened.messages.append((seq, int(kind_of(message)), bytes(data)))
        return opened

    def _message(self, seq: int, data: bytes | memoryview) -> tuple[Message, bytes | memoryview]:
        """The message in frame `data` and, for a fragment, its data (a view of `data`)."""
        split = unpack_fragment(data, len(data))
        envelope, fragment_data = split if split else (unpack_envelope(data, len(data)), b"")
        if envelope.seq != seq:
            raise MessageError(f"frame says seq {envelope.seq}, header {seq}")
        message = envelope.message
        if isinstance(message, Fragment):
            if message.total > self.max_body:
                raise MessageError(f"a body of {message.total} bytes is over the body limit")
            fragment_data = fragment_data if split else message.data
        if (
            isinstance(message, Control)
            and message.op == ABANDON
            and not is_id(message.args.get("transfer"))
        ):
            raise MessageError("abandon names no transfer")
        return message, fragment_data

    async def deliveries(self, kind: Kind | None = None) -> AsyncIterator[list[Inbound]]:
        """Delivered messages (of `kind`) as they come, oldest first, in batches of those
        already here (to take in one transaction), from the store: a message is yielded
        again after a restart until it is consumed."""
        after = 0
        while True:
            batch = self.store.inbound(after, kind=kind)
            if batch:
                after = batch[-1].id
                yield batch
            else:
                await self._delivered.wait()

    async def delivered(self) -> None:
        """Return at the next delivery of anything."""
        await self._delivered.wait()

    def body_here(self, remote: str, transfer: str, length: int) -> bool:
        """Whether all `length` bytes of body `transfer` from `remote` are here (durably)."""
        return self.store.transfer_received(remote, transfer) >= length

    async def body_arrived(self, remote: str, transfer: str, length: int) -> str:
        """The file of body `transfer` from `remote`, once `body_here`."""
        while not self.body_here(remote, transfer, length):
            await self._delivered.wait()
        return incoming_name(remote, transfer)

    def consume(self, ids: Iterable[int]) -> None:
        self.store.consume(ids)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per link: sent, acked, unacked, resends, last ack age, remote epoch, received."""
        now = trio.current_time()
        links = {}
        for remote in self.protocol.remotes:
            outbound, inbound = self.protocol.outbound(remote), self.protocol.inbound(remote)
            stats = outbound.stats
            assigned = outbound.next_seq - 1
            links[remote] = {
                "sent": assigned,
                "acked": assigned - outbound.unacked,
                "unacked": outbound.unacked,
                "resends": stats.resends,
                "files": stats.files,
                "last_ack_age": None if stats.last_ack is None else now - stats.last_ack,
                "remote_epoch": inbound.epoch,
                "received_upto": inbound.received.upto,
            }
        return links
