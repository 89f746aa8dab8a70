"""Receiving on the links: the messages a valid file delivers are stored durably with the
received-state that acknowledges them (fragments into their body files), and only then
may they be acknowledged; the layer above reads them from the store until it consumes
them, so a message is offered again after a restart until then.

API for the layer above: `receiving.deliveries(*kinds)` yields delivered messages in
batches (to take in one transaction); `body_arrived` waits for a body sent in fragments.
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import trio

from ..proto.inbound import Verdict
from ..proto.link import Arrival, Protocol
from ..state.links import Delivery, LinkTables
from ..wire.fileformat import ScannedFile
from ..wire.messages import Kind
from .bodies import incoming_name
from .events import EventHub, LinkEvents, Progress
from .inbox import open_regular
from .opening import Opened, Reader

RECHECK = 1.0  # seconds between two looks at whether a body awaited is still wanted
DONE_KEPT = 4096  # bodies done with, per remote, whose late fragments are dropped


class Receiving:
    """The incoming side of one peer's links."""

    def __init__(
        self,
        protocol: Protocol,
        tables: LinkTables,
        reader: Reader,
        events: LinkEvents,
        progress: EventHub[Progress],
    ) -> None:
        self.protocol, self.tables, self.reader = protocol, tables, reader
        self.events, self.progress = events, progress
        self.log = logging.getLogger(f"mesh.{protocol.me}")
        self._delivered = trio.Event()
        self._streaming: dict[tuple[str, str], Prefix] = {}  # arriving: what is here from 0
        self._done: dict[str, OrderedDict[str, None]] = {}  # per remote, bodies done with

    async def store(
        self, arrival: Arrival, path: Path, scanned: ScannedFile, content: bytes | None
    ) -> None:
        """Store what `arrival` delivers from the file at `path` (`content`, the whole of
        it when small: opened here, without a thread round trip), with the received-state
        that acknowledges it, in one transaction; then let the protocol acknowledge it."""
        if not arrival.deliver and arrival.verdict is not Verdict.NEW_EPOCH:
            return
        remote = arrival.remote
        given_up = set()
        if arrival.deliver:  # fragments of these are dropped: given up, or done with
            given_up = self.tables.abandoned(remote) | self._done.get(remote, {}).keys()
        if content is not None:
            opened = self.reader.open(
                remote, arrival.deliver, io.BytesIO(content), scanned, given_up
            )
        else:
            opened = await trio.to_thread.run_sync(
                self._open_file, remote, arrival.deliver, path, scanned, given_up
            )
        self._complain(remote, path, opened)
        taken = [seq for seq in arrival.deliver if seq not in opened.unread]
        receipt = self.protocol.receipt(remote, taken)
        self.tables.deliver(
            remote,
            receipt.epoch,
            opened.messages,
            receipt.received,
            receipt.retired,
            time.time(),
            opened.fragments,
            opened.abandoned,
            receipt.since,
            opened.ended,
            opened.oversized,
        )
        self.protocol.stored(remote, taken)
        self.events.tell("delivered", remote, taken, time.time())
        self._told(remote, opened)

    def _complain(self, remote: str, path: Path, opened: Opened) -> None:
        """One line a file for the messages of `opened` refused: authentic but malformed
        (never delivered, but acknowledged so the sender stops resending what can never
        be taken: an error), or a body over the limit (dropped, its request answered
        413: a caller's doing, a warning)."""
        for level, refused in ((logging.ERROR, opened.refused), (logging.WARNING, opened.too_big)):
            if refused:
                seq, problem = refused[0]
                more = len(refused) - 1
                self.log.log(
                    level,
                    "%s: message %d from %s refused: %s%s",
                    self.protocol.me,
                    seq,
                    remote,
                    problem,
                    f" (and {more} more in {path.name})" if more else "",
                )

    def _open_file(
        self,
        remote: str,
        deliver: tuple[int, ...],
        path: Path,
        scanned: ScannedFile,
        given_up: set[str],
    ) -> Opened:
        with open_regular(path) as source:  # swapped for a FIFO or link since: refused
            return self.reader.open(remote, deliver, source, scanned, given_up, path)

    def _told(self, remote: str, opened: Opened) -> None:
        """Report the progress of bodies arriving in fragments, and wake those waiting
        for deliveries."""
        for transfer, offset, length in opened.spans:
            self._streaming.setdefault((remote, transfer), Prefix()).add(offset, length)
        for transfer in [*opened.abandoned, *opened.oversized]:
            given_up = self._streaming.pop((remote, transfer), None)
            if given_up is not None:  # whoever holds it hears
                given_up.abandoned = True
        for transfer, message_id, total in {(t, m, n) for t, m, n, _ in opened.fragments}:
            have = self.tables.transfer_received(remote, transfer)
            progress = Progress("receiving", remote, message_id, have, total or None)
            self.progress.publish(progress)
        if (
            opened.messages
            or opened.fragments
            or opened.abandoned
            or opened.ended
            or opened.oversized
        ):
            self._delivered.set()
            self._delivered = trio.Event()

    async def deliveries(self, *kinds: Kind) -> AsyncIterator[list[Delivery]]:
        """Delivered messages (of `kinds`, or of any kind) as they come, oldest first, in
        batches of those already here (to take in one transaction), from the store: a
        message is yielded again after a restart until it is consumed."""
        after = 0
        while True:
            batch = self.tables.delivered(after, kinds=kinds)
            if batch:
                after = batch[-1].id
                yield batch
            else:
                await self._delivered.wait()

    async def delivered(self) -> None:
        """Return at the next delivery of anything."""
        await self._delivered.wait()

    def body_here(self, remote: str, transfer: str, length: int | None) -> bool:
        """Whether all `length` bytes of body `transfer` from `remote` are here (durably);
        with `length` None (its message went without it), once its sender told it
        (`told_length`) and that many are here."""
        state = self.tables.transfer_state(remote, transfer)
        if length is None:
            length = state.told_length
        return length is not None and state.have >= length

    def told_length(self, remote: str, transfer: str) -> int | None:
        """The length of body `transfer` from `remote` its sender told at its end (an
        ``ended`` note: a body whose message went ahead without it); None until then."""
        return self.tables.transfer_state(remote, transfer).told_length

    def as_told(self, remote: str, transfer: str, seen: int) -> bool:
        """Whether body `transfer` from `remote`, `seen` bytes of it followed, is as its
        sender told at its end: that many came, no more, and it was not dropped."""
        state = self.tables.transfer_state(remote, transfer)
        told = state.told_length
        return told == seen and state.have <= told and not state.dropped

    def over_limit(self, remote: str, transfer: str) -> bool:
        """Whether body `transfer` from `remote` was dropped as over the body limit."""
        return self.tables.transfer_state(remote, transfer).dropped == 2

    async def body_arrived(
        self, remote: str, transfer: str, length: int | None, wanted: Callable[[], bool]
    ) -> str | None:
        """The file of body `transfer` from `remote`, once `body_here`; None once it is no
        longer `wanted` (asked at each delivery, and each `RECHECK` seconds: a sender that
        stopped for good never finishes it)."""
        while not self.body_here(remote, transfer, length):
            if not wanted():
                return None
            with trio.move_on_after(RECHECK):
                await self._delivered.wait()
        return incoming_name(remote, transfer)

    def streamed(self, remote: str, transfer: str) -> Prefix:
        """How much of body `transfer` from `remote`, which streams, is here from its
        start (durably), as it grows (`delivered` wakes on more), and whether its sender
        gave it up; known only for what came since this peer started. Kept until the
        body is whole (`forget_body`), given up, or `forget_stream`."""
        return self._streaming.setdefault((remote, transfer), Prefix())

    def given_up(self, remote: str, transfer: str) -> bool:
        """Whether body `transfer` from `remote` was dropped: its sender gave it up, or
        it is over the body limit here (from the store)."""
        return self.tables.transfer_state(remote, transfer).dropped > 0

    def forget_stream(self, remote: str, transfer: str) -> None:
        """Nobody follows body `transfer` from `remote` as it streams any more."""
        self._streaming.pop((remote, transfer), None)

    def consume(self, ids: Iterable[int]) -> None:
        """The layer above is done with these deliveries: never offer them again."""
        self.tables.consume(ids)

    def forget_body(self, remote: str, transfer: str) -> None:
        """Body `transfer` from `remote` has served its purpose: stop counting it, and
        drop any fragment of it that comes late (a resend, a reordered file), for the
        last `DONE_KEPT` bodies (in memory: not across a restart)."""
        done = self._done.setdefault(remote, OrderedDict())
        done[transfer] = None
        while len(done) > DONE_KEPT:
            done.popitem(last=False)
        self._streaming.pop((remote, transfer), None)
        self.tables.forget_transfer(remote, transfer)

    def transfers(self) -> list[Progress]:
        """Every body arriving in fragments, with how far it has got."""
        return [
            Progress("receiving", remote, message_id, have, total or None)
            for remote, message_id, have, total in self.tables.receiving()
        ]


class Prefix:
    """What has come of a body that streams: the bytes here from its start (`length`),
    pieces past a gap kept until it fills, and whether it was given up."""

    def __init__(self) -> None:
        self.length = 0
        self.abandoned = False
        self._ahead: dict[int, int] = {}  # offset: length, of pieces past `length`

    def add(self, offset: int, length: int) -> None:
        """Bytes `offset .. offset+length` came (a piece that came before is fine)."""
        if offset > self.length:
            self._ahead[offset] = max(length, self._ahead.get(offset, 0))
            return
        self.length = max(self.length, offset + length)
        while self._ahead:
            starts = [at for at in self._ahead if at <= self.length]
            if not starts:
                return
            for at in starts:
                self.length = max(self.length, at + self._ahead.pop(at))
