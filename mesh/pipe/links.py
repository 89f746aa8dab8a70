"""The trio driver of the reliable links: the pure `Protocol` plus the database and the
outbox. Messages go out through `sending` (stored before they are queued) and come in
through `receiving` (stored before they are acknowledged); `run` writes the files the
protocol plans, when it plans them, and `arrived` takes a valid file from the inbox.
Events (`events`: stored, sent, resent, acked, delivered; `progress`: bodies crossing in
fragments) are published as they happen.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import trio

from ..errors import disk_full
from ..proto.inbound import Verdict
from ..proto.link import Arrival, LinkSettings, OutgoingFile, Protocol
from ..state.database import Database
from ..state.durable import Durability
from ..state.links import LinkTables, OutboundRow
from ..state.offload import Offload
from ..wire.crypto import Keyring
from ..wire.fileformat import Limits, ScannedFile, write_file
from ..wire.messages import Fragment, fragment_head, unpack_envelope
from ..wire.names import FileKind, FileName
from . import folder
from .bodies import Bodies, BodyReader
from .events import EventHub, LinkEvents, Progress
from .opening import Reader
from .receiving import Receiving
from .sending import Sending

UNREAD_KEPT = 256  # our files per remote noted as waiting before the acknowledged go
SMALL_WRITE = 256 << 10  # bytes of messages: a file this small may be written on the loop


@dataclass
class Traffic:
    """Since start, per remote peer: bytes of the files written to the outbox, and files
    (and their bytes) taken from the inbox (for metrics)."""

    bytes_written: Counter[str] = field(default_factory=Counter)
    files_read: Counter[str] = field(default_factory=Counter)
    bytes_read: Counter[str] = field(default_factory=Counter)


class Links:
    """The links of one running peer. `max_body` bounds a body taken in fragments;
    `block` is the body bytes per fragment sent; `disk` runs the small blocking calls on
    the outbox (files of big bodies are always written from a worker thread); files are
    written with `file_mode`."""

    def __init__(
        self,
        database: Database,
        tables: LinkTables,
        keyring: Keyring,
        settings: dict[str, LinkSettings],
        outbox: Path,
        bodies: Bodies,
        durable: Durability,
        limits: Limits,
        max_body: int,
        block: int,
        disk: Offload | None = None,
        file_mode: int = folder.FILE_MODE,
    ) -> None:
        self.name = keyring.me
        self.file_mode = file_mode  # of the files written to the outbox
        self.database, self.tables, self.keyring = database, tables, keyring
        self.outbox, self.bodies, self.durable = outbox, bodies, durable
        self.log = logging.getLogger(f"mesh.{self.name}")
        self._kick = trio.Event()
        restored = {remote: tables.link_state(remote) for remote in settings}
        now = trio.current_time()
        session = os.urandom(8).hex()  # this start's: a file that names it is no replay
        self.protocol = Protocol(self.name, database.epoch, settings, restored, now, session)
        self.events = LinkEvents(self.name)
        self.progress: EventHub[Progress] = EventHub()
        self.sending = Sending(
            self.protocol,
            database,
            tables,
            bodies,
            durable,
            self.events,
            self.progress,
            block,
            self.kick,
        )
        reader = Reader(keyring, limits, bodies, max_body)
        self.receiving = Receiving(self.protocol, tables, reader, self.events, self.progress)
        self._last_heartbeat: dict[str, Path] = {}
        # Per remote, our files with messages, oldest first: path, when written, its seqs
        self._unread: dict[str, list[tuple[Path, float, tuple[int, ...]]]] = {
            r: [] for r in settings
        }
        self._unread_limit: dict[str, int] = {}  # notes per remote before the next sweep
        self.pipe_error: str | None = None  # why the last write to the outbox failed
        self.traffic = Traffic()
        # Small writes, listings and removals in the outbox: on the loop while quick
        self.disk = disk or Offload(allowed=folder.is_local(outbox))

    def kick(self) -> None:
        """Wake `run`: something may be due."""
        self._kick.set()

    # -- writing -------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what the protocol plans, when it plans it, until cancelled."""
        while True:
            await self.sending.remove_finished()
            now = trio.current_time()
            waiting: dict[str, set[int]] = {}
            resending = self.protocol.resending(now)
            if resending:  # only then does it matter: not a thread round trip per file
                waiting = await self.disk.run(partial(self._waiting, now, resending))
            for file in self.protocol.outgoing(now, waiting):
                await self._write(file)
            wake = self.protocol.next_wakeup()
            self._kick = trio.Event()
            with trio.move_on_at(wake if wake is not None else math.inf):
                await self._kick.wait()

    def _waiting(self, now: float, remotes: Iterable[str]) -> dict[str, set[int]]:
        """Per remote of `remotes`, our messages that a file of ours still carries in the
        outbox: the pipe has not taken it yet, so resending them would only add to the
        queue. Files older than eight timeouts no longer count (a mirror that copies
        without deleting must not stop resends for good). Blocking."""
        found = {}
        for remote in remotes:
            files = self._keep_unread(remote, now, lambda path, _: os.path.exists(path))
            found[remote] = {seq for _, _, seqs in files for seq in seqs}
        return found

    def _keep_unread(
        self, remote: str, now: float, still: Callable[[Path, tuple[int, ...]], bool]
    ) -> list[tuple[Path, float, tuple[int, ...]]]:
        """Keep of our files noted as waiting for `remote` those younger than eight
        timeouts for which `still(path, seqs)` holds; what is kept."""
        files = self._unread[remote]
        limit = 8 * self.protocol.ack_timeout(remote)
        files[:] = [(p, at, seqs) for p, at, seqs in files if now - at < limit and still(p, seqs)]
        return files

    async def _write(self, file: OutgoingFile) -> None:
        await self.durable.synced()  # what the file carries and acknowledges is on disk
        stored = self.tables.outbound_rows(file.remote, file.seqs) if file.seqs else {}
        rows = [stored[seq] for seq in file.seqs if seq in stored]  # acked meanwhile: skip
        seqs = [row.seq for row in rows]
        kind = FileKind.MESSAGES if seqs else FileKind.HEARTBEAT
        name = FileName(time.time_ns(), self.name, file.remote, os.urandom(4).hex(), kind)

        sizes: list[int] = []

        def encode(out: BinaryIO) -> None:
            with self.bodies.reader() as reader:
                size = write_file(
                    out,
                    self.keyring.identity,
                    recipient=file.remote,
                    epoch=self.database.epoch,
                    created=time.time(),
                    nonce=os.urandom(8),
                    frames=frames(rows, reader),
                    count=len(rows),
                    seqs=seqs,
                    link_key=self.keyring.sending_key(file.remote),
                    link=file.link,
                )
            sizes.append(size)

        write = partial(folder.write_atomically_with, self.outbox, name, encode, self.file_mode)
        small = sum(len(row.payload) + row.spool_length for row in rows) <= SMALL_WRITE
        try:  # big data is hashed (and maybe sealed, compressed) in a thread
            path = await (self.disk.run(write) if small else trio.to_thread.run_sync(write))
        except OSError as exc:
            if self.pipe_error is None:
                self.log.error("%s: cannot write to %s: %s", self.name, self.outbox, exc)
            self.pipe_error = why_not_written(exc)
            self.protocol.failed(file, trio.current_time())
            return
        if self.pipe_error is not None:
            self.log.info("%s: %s is writable again", self.name, self.outbox)
            self.pipe_error = None
        written = self.protocol.written(file, trio.current_time())
        self.traffic.bytes_written[file.remote] += sum(sizes)
        at = time.time()
        self.events.tell("sent", file.remote, written.sent, at)
        self.events.tell("resent", file.remote, written.resent, at)
        if seqs:
            self._unread_now(file.remote, path, tuple(seqs))
        asks = bool(file.link.missing)  # asks are told once: a file after it may not say them
        superseded = kind is FileKind.HEARTBEAT and not asks
        await self._supersede(file.remote, path if superseded else None)

    def _unread_now(self, remote: str, path: Path, seqs: tuple[int, ...]) -> None:
        """Note our file `path`, carrying `seqs`, as waiting in the outbox. Whenever the
        notes double, those of files whose messages were all acknowledged, or older than
        eight timeouts, are forgotten (the rest are looked for on the disk only when
        resends are due): they stay within twice the files of unacknowledged messages."""
        unread = self._unread[remote]
        now = trio.current_time()
        unread.append((path, now, seqs))
        if len(unread) > self._unread_limit.get(remote, UNREAD_KEPT):
            unacked = partial(self.protocol.any_unacked, remote)
            kept = self._keep_unread(remote, now, lambda _, seqs: unacked(seqs))
            self._unread_limit[remote] = max(UNREAD_KEPT, 2 * len(kept))

    async def _supersede(self, remote: str, heartbeat: Path | None) -> None:
        """Any file we write carries the newest link state, so our previous heartbeat for
        `remote`, if nobody took it yet, says nothing new: remove it."""
        previous = self._last_heartbeat.pop(remote, None)
        if heartbeat is not None:
            self._last_heartbeat[remote] = heartbeat
        if previous is not None:
            await self.disk.run(partial(folder.remove, previous))

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
        arrival = self.protocol.arrived(header, whole, cut, trio.current_time())
        remote = arrival.remote
        self.traffic.files_read[remote] += 1
        self.traffic.bytes_read[remote] += scanned.parsed.size
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
        if arrival.to_keep:
            self.sending.acknowledged(remote, arrival.acked, arrival.next_seq)
        self.events.tell("acked", remote, arrival.acked, time.time())
        await self.receiving.store(arrival, path, scanned, content)
        if arrival.resend or arrival.deliver or cut:
            self.kick()
        return arrival

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per link: sent, acked, unacked, resends, last ack age, remote epoch, received,
        and the payload bytes per file learned."""
        now = trio.current_time()
        links = {}
        for remote in self.protocol.remotes:
            link = self.protocol.status(remote)
            links[remote] = {
                "sent": link.assigned,
                "acked": link.assigned - link.unacked,
                "unacked": link.unacked,
                "resends": link.resends,
                "files": link.files,
                "last_ack_age": None if link.last_ack is None else now - link.last_ack,
                "remote_epoch": link.remote_epoch,
                "received_upto": link.received_upto,
                "file_size": link.file_size,
            }
        return links

    def transfers(self) -> list[dict[str, Any]]:
        """Every body crossing in fragments, either way, with how far it has got."""
        found = [*self.sending.transfers(), *self.receiving.transfers()]
        return [progress.as_json() for progress in found]


def why_not_written(exc: OSError) -> str:
    """Why a file could not be written into the outbox, for callers (no path)."""
    if disk_full(exc):
        return "no space left where the pipe is"
    return f"the outbox cannot be written: {exc.strerror or exc}"


def frames(rows: list[OutboundRow], reader: BodyReader) -> Iterator[bytes | memoryview]:
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
