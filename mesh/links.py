"""The trio driver of the reliable links: the pure `Protocol` plus the store and the outbox.

API for the layer above:
- `await links.send(remote, message)` returns once the message is durable, with its id;
- `links.deliveries()` yields each delivered message (stored before it was acknowledged)
  until the layer above `consume`s it;
- `links.events.subscribe()` streams per-message status events (stored, sent, resent,
  acked, delivered).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from . import pipe
from .crypto import Keyring
from .errors import MessageError
from .link import Arrival, LinkSettings, OutgoingFile, Protocol, Verdict
from .messages import Envelope, Kind, Message, kind_of, pack, unpack_envelope
from .names import FileKind, FileName
from .store import Inbound, Store
from .wire import DecodedFile, encode_file

_ENCODE_IN_THREAD_FROM = 1 << 20
T = TypeVar("T")


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


class Links:
    """The links of one running peer."""

    def __init__(
        self,
        name: str,
        store: Store,
        keyring: Keyring,
        settings: dict[str, LinkSettings],
        outbox: Path,
    ) -> None:
        self.name = name
        self.store = store
        self.keyring = keyring
        self.outbox = outbox
        self.log = logging.getLogger(f"mesh.{name}")
        restored = {remote: store.link_state(remote) for remote in settings}
        self.protocol = Protocol(name, store.epoch, settings, restored, trio.current_time())
        self.events: EventHub[LinkEvent] = EventHub()
        self._kick = trio.Event()
        self._delivered = trio.Event()
        self._last_heartbeat: dict[str, Path] = {}
        self._unread: dict[str, list[tuple[Path, float]]] = {r: [] for r in settings}
        self.last_file_at: dict[str, float] = {}  # wall clock of our last file per remote
        self.pipe_error: str | None = None  # why the last write to the outbox failed

    def _publish(self, state: str, remote: str, seqs: Iterable[int]) -> None:
        at = time.time()
        for seq in seqs:
            self.events.publish(LinkEvent(state, self.name, remote, seq, at))

    def kick(self) -> None:
        self._kick.set()

    # -- sending -------------------------------------------------------------------------

    async def send(self, remote: str, message: Message) -> MessageId:
        """Store `message` for `remote` durably and queue it; its id once durable.

        KeyError for a remote this peer does not talk to.
        """
        if remote not in self.protocol.remotes:
            raise KeyError(f"{self.name} does not talk to {remote}")
        seq = self.protocol.assign(remote)
        payload = pack(Envelope(seq, message))
        self.store.add_outbound(remote, seq, payload, time.time())
        self.protocol.queued(remote, seq, len(payload), trio.current_time())
        self._publish("stored", remote, [seq])
        self.kick()
        return MessageId(remote, seq)

    async def run(self) -> None:
        """Write what the protocol plans, when it plans it, until cancelled."""
        while True:
            now = trio.current_time()
            backlogged = await trio.to_thread.run_sync(self._backlogged, now)
            for file in self.protocol.outgoing(now, backlogged):
                await self._write(file)
            wake = self.protocol.next_wakeup()
            self._kick = trio.Event()
            with trio.move_on_at(wake if wake is not None else math.inf):
                await self._kick.wait()

    def _backlogged(self, now: float) -> list[str]:
        """Remotes for which a file we wrote still waits in the outbox: the pipe has not
        taken it yet, so resending its messages would only add to the queue. Files older
        than eight timeouts no longer count (a mirror that copies without deleting must
        not stop resends for good). Blocking: call from a thread."""
        found = []
        for remote, files in self._unread.items():
            limit = 8 * self.protocol.outbound(remote).timeout()
            files[:] = [(p, at) for p, at in files if now - at < limit and os.path.exists(p)]
            if files:
                found.append(remote)
        return found

    async def _write(self, file: OutgoingFile) -> None:
        payloads = self.store.outbound_payloads(file.remote, file.seqs) if file.seqs else {}
        seqs = [seq for seq in file.seqs if seq in payloads]  # acked meanwhile: skip
        kind = FileKind.MESSAGES if seqs else FileKind.HEARTBEAT
        name = FileName(time.time_ns(), self.name, file.remote, os.urandom(4).hex(), kind)
        frames = [payloads[seq] for seq in seqs]

        def encode() -> bytes:
            return encode_file(
                self.keyring.identity,
                recipient=file.remote,
                epoch=self.store.epoch,
                created=time.time(),
                nonce=os.urandom(8),
                frames=frames,
                seqs=seqs,
                link_key=self.keyring.sending_key(file.remote),
                link=file.link,
            )

        try:
            big = sum(map(len, frames)) >= _ENCODE_IN_THREAD_FROM
            data = await trio.to_thread.run_sync(encode) if big else encode()
            path = await trio.to_thread.run_sync(pipe.write_atomically, self.outbox, name, data)
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
        self._unread[file.remote].append((path, trio.current_time()))
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

    def arrived(self, decoded: DecodedFile) -> Arrival:
        """Take a valid file from a remote: apply its acks, store its new messages (durably,
        with the received-state) and only then let them be acknowledged."""
        header = decoded.header
        infos = header.frames
        whole = {infos[i].seq: frame for i, frame in enumerate(decoded.frames) if frame}
        cut = [infos[i].seq for i in decoded.missing]
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
            self.store.acked(remote, arrival.acked, outbound.next_seq)
        self._publish("acked", remote, arrival.acked)
        self._store_deliveries(arrival, whole)
        if arrival.resend or arrival.deliver or cut:
            self.kick()
        return arrival

    def _store_deliveries(self, arrival: Arrival, whole: dict[int, bytes]) -> None:
        if not arrival.deliver and arrival.verdict is not Verdict.NEW_EPOCH:
            return
        messages = []
        for seq in arrival.deliver:
            try:
                envelope = unpack_envelope(whole[seq], len(whole[seq]))
                if envelope.seq != seq:
                    raise MessageError(f"frame says seq {envelope.seq}, header {seq}")
            except MessageError as exc:
                # Authentic but malformed: never delivered, but acknowledged so the sender
                # stops resending what can never be taken.
                self.log.error(
                    "%s: message %d from %s refused: %s", self.name, seq, arrival.remote, exc
                )
                continue
            messages.append((seq, int(kind_of(envelope.message)), whole[seq]))
        inbound = self.protocol.inbound(arrival.remote)
        state = inbound.received
        for seq in arrival.deliver:
            state = state.add(seq)
        assert inbound.epoch is not None
        self.store.deliver(
            arrival.remote, inbound.epoch, messages, state, inbound.retired, time.time()
        )
        self.protocol.stored(arrival.remote, arrival.deliver)
        self._publish("delivered", arrival.remote, [seq for seq, _, _ in messages])
        if messages:
            self._delivered.set()
            self._delivered = trio.Event()

    async def deliveries(self, kind: Kind | None = None) -> AsyncIterator[Inbound]:
        """Delivered messages (of `kind`) as they come, oldest first, from the store: a
        message is yielded again after a restart until it is consumed."""
        after = 0
        while True:
            batch = self.store.inbound(after, kind=kind)
            for item in batch:
                after = item.id
                yield item
            if not batch:
                await self._delivered.wait()

    async def delivered(self) -> None:
        """Return at the next delivery of anything."""
        await self._delivered.wait()

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
