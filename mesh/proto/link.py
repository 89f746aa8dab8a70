"""The reliable link protocol, pure: no I/O, no clock (time is passed in).

Each ordered pair of peers is a link with sequence numbers 1, 2, 3... Acknowledgement is
state, not messages: every file carries what its writer has received from the reader
(`ReceivedState`, a grow-only set), so a lost or stale ack never matters and the newest
supersedes all older. Messages not acknowledged are resent after `resend_after` with
capped exponential backoff, or at once when the reader proves it is missing them (frames
cut from a file). Each sequence number is delivered upward once.

Epochs: a peer's state store gets a random epoch when created. A reader keeps what it
received per sender epoch; when a sender's epoch changes (its state was wiped), the reader
starts afresh from the sender's `floor` (its lowest unacknowledged number), and files
from a retired epoch deliver nothing. Acks name the epoch they acknowledge, so an ack for
an older incarnation never acknowledges a newer one's messages.

The driver's duties (see `mesh.linkdriver`): persist a message before `queued`, persist
deliveries before `stored` (an ack is advertised only for what is durable), and write the
files `outgoing` plans, reporting each back with `written` or `failed`.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ..wire.fileformat import Header, LinkFields
from .received import ReceivedState

BACKOFF_LIMIT = 8  # resend delays: 1, 2, 4, 8, 8, 8... times resend_after
NOTHING = ReceivedState()


@dataclass(frozen=True)
class LinkSettings:
    """How one peer treats its link to one remote."""

    heartbeat: float
    resend_after: float
    linger: float = 0.0  # a new small message waits this long for others to share its file
    collate_below: int = 64 << 10  # bytes: a message this big or bigger does not wait
    max_frames: int = 512  # messages per file
    max_bytes: int = 64 << 20  # payload bytes per file (a bigger message goes alone)

    @property
    def ack_delay(self) -> float:
        """How soon news worth telling (new acks) goes out when no file is due anyway: half
        a heartbeat, so a busy link makes at most two ack-only files per heartbeat."""
        return self.heartbeat / 2


@dataclass
class LinkStats:
    sent: int = 0  # messages written for the first time
    resends: int = 0  # writes after the first
    acked: int = 0
    files: int = 0
    last_ack: float | None = None  # when an ack last acknowledged something new


@dataclass
class _Pending:
    size: int
    attempts: int = 0
    due: float = 0.0
    sent_at: float = 0.0


class RoundTrip:
    """Smoothed round-trip time of the link, from messages acknowledged after their first
    write only (Karn's rule: a resent message's ack cannot say which copy it answers)."""

    def __init__(self) -> None:
        self.smoothed: float | None = None

    def sample(self, seconds: float) -> None:
        self.smoothed = (
            seconds if self.smoothed is None else 0.875 * self.smoothed + 0.125 * seconds
        )

    def timeout(self, floor: float) -> float:
        """How long to wait for an ack: `floor`, or twice the round trip when longer (a
        slow or backlogged pipe must not be flooded with copies of what is on its way)."""
        return floor if self.smoothed is None else max(floor, 2 * self.smoothed)


class Outbound:
    """Our messages to one remote: numbering, what is unacknowledged, when to resend."""

    def __init__(
        self,
        epoch: str,
        resend_after: float,
        next_seq: int = 1,
        unacked: Iterable[tuple[int, int]] = (),
        now: float = 0.0,
    ) -> None:
        self.epoch = epoch
        self.resend_after = resend_after
        self.next_seq = next_seq
        self.stats = LinkStats()
        self.round_trip = RoundTrip()
        self._pending: dict[int, _Pending] = {}
        self._order: list[int] = []  # the keys of _pending, sorted
        self._unwritten: set[int] = set()  # pending, never written yet
        self._proven: set[int] = set()  # the reader proved them missing: resend regardless
        self._heap: list[tuple[float, int]] = []
        for seq, size in sorted(unacked):
            self.queue(seq, size, now)

    def assign(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def queue(self, seq: int, size: int, now: float) -> None:
        """`seq` (already assigned, now durable) is to be sent at once."""
        if seq not in self._pending:
            bisect.insort(self._order, seq)
        self._pending[seq] = _Pending(size, due=now)
        self._unwritten.add(seq)
        heapq.heappush(self._heap, (now, seq))
        self.next_seq = max(self.next_seq, seq + 1)

    @property
    def unacked(self) -> int:
        return len(self._pending)

    @property
    def floor(self) -> int:
        """The lowest unacknowledged number, or the next one to assign if none is."""
        return self._order[0] if self._order else self.next_seq

    def size(self, seq: int) -> int:
        return self._pending[seq].size

    def attempts(self, seq: int) -> int:
        """How often `seq` was written so far (0: never, or no longer pending)."""
        pending = self._pending.get(seq)
        return pending.attempts if pending is not None else 0

    def pending(self) -> list[int]:
        return list(self._order)

    def unwritten(self) -> list[int]:
        """Pending messages never written yet, lowest first."""
        return sorted(self._unwritten)

    def due(self, now: float) -> list[int]:
        """Unacknowledged messages whose time to be (re)sent has come, lowest first. When
        any is due, every message never written yet comes along: a burst lingers as long
        as its first message, then shares one file."""
        found = set()
        while self._heap and self._heap[0][0] <= now:
            due, seq = heapq.heappop(self._heap)
            pending = self._pending.get(seq)
            if pending is not None and pending.due == due:
                found.add(seq)
        if found:
            found |= self._unwritten
        return sorted(found)

    def resend_due(self, now: float) -> bool:
        """Whether a message already written (and not proven missing) is due by `now`:
        what `hold_resends` would put off. Visits only the heap's entries due by `now`."""
        heap, stack = self._heap, [0]
        while stack:
            i = stack.pop()
            if i >= len(heap) or heap[i][0] > now:
                continue  # a heap's children are never due before their parent
            due, seq = heap[i]
            pending = self._pending.get(seq)
            written = pending is not None and pending.due == due and pending.attempts
            if written and seq not in self._proven:
                return True
            stack += (2 * i + 1, 2 * i + 2)
        return False

    def next_due(self) -> float | None:
        while self._heap:
            due, seq = self._heap[0]
            pending = self._pending.get(seq)
            if pending is not None and pending.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    def _schedule(self, seq: int, due: float) -> None:
        pending = self._pending.get(seq)
        if pending is not None:
            pending.due = due
            heapq.heappush(self._heap, (due, seq))

    def sent(self, seqs: Iterable[int], now: float) -> None:
        """These were written into a file at `now`: resend after the backoff unless acked."""
        for seq in seqs:
            pending = self._pending.get(seq)
            if pending is None:
                continue
            pending.attempts += 1
            pending.sent_at = now
            self._unwritten.discard(seq)
            self._proven.discard(seq)
            if pending.attempts == 1:
                self.stats.sent += 1
            else:
                self.stats.resends += 1
            backoff = min(2 ** (pending.attempts - 1), BACKOFF_LIMIT)
            self._schedule(seq, now + self.timeout() * backoff)

    def timeout(self) -> float:
        """The current wait before a first resend."""
        return self.round_trip.timeout(self.resend_after)

    def hold_resends(self, seqs: Iterable[int], now: float) -> list[int]:
        """Of `seqs`, those already written once, put off for another timeout: the pipe
        has not even taken our earlier files yet. The rest (never written, or proven
        missing by the reader) are returned."""
        fresh = []
        for seq in seqs:
            if self.attempts(seq) and seq not in self._proven:
                self._schedule(seq, now + self.timeout())
            else:
                fresh.append(seq)
        return fresh

    def retry(self, seqs: Iterable[int], at: float) -> None:
        """A write failed: try these again at `at`, without counting an attempt."""
        for seq in seqs:
            self._schedule(seq, at)

    def resend_now(self, seqs: Iterable[int], now: float) -> list[int]:
        """The reader proved these missing: send them again at once (if still unacked)."""
        hit = [seq for seq in seqs if seq in self._pending]
        for seq in hit:
            self._proven.add(seq)
            self._schedule(seq, now)
        return hit

    def _cut(self, lo: int, hi: int) -> list[int]:
        """Take the pending numbers in lo..hi out of the sorted order."""
        start, end = bisect.bisect_left(self._order, lo), bisect.bisect_right(self._order, hi)
        taken = self._order[start:end]
        del self._order[start:end]
        return taken

    def acked(self, state: ReceivedState, now: float) -> list[int]:
        """Forget every pending message `state` holds; the ones newly acknowledged."""
        done = self._cut(1, state.upto)
        for lo, hi in state.ranges:
            done += self._cut(lo, hi)
        for seq in done:
            self._unwritten.discard(seq)
            self._proven.discard(seq)
            pending = self._pending.pop(seq)
            if pending.attempts == 1:
                self.round_trip.sample(now - pending.sent_at)
        if done:
            self.stats.acked += len(done)
            self.stats.last_ack = now
        self.next_seq = max(self.next_seq, state.upto + 1, *(hi + 1 for _, hi in state.ranges))
        return done


class Verdict(Enum):
    CURRENT = "current"
    NEW_EPOCH = "new-epoch"
    STALE = "stale"


class Inbound:
    """What we received from one remote, per its epoch, and what we know we miss."""

    def __init__(
        self,
        epoch: str | None = None,
        received: ReceivedState = NOTHING,
        retired: Iterable[str] = (),
    ) -> None:
        self.epoch = epoch
        self.received = received
        self.retired = set(retired)
        self._missing: set[int] = set()
        self.news = False  # received something not yet told in a file

    def observe(self, epoch: str, floor: int) -> Verdict:
        """Take note of a file from the remote in `epoch` whose writer's floor is `floor`."""
        if epoch == self.epoch:
            self.received = self.received.merge(ReceivedState(floor - 1))
            return Verdict.CURRENT
        if epoch in self.retired:
            return Verdict.STALE
        if self.epoch is not None:
            self.retired.add(self.epoch)
        self.epoch, self.received = epoch, ReceivedState(floor - 1)
        self._missing.clear()
        self.news = True
        return Verdict.NEW_EPOCH

    def fresh(self, seq: int) -> bool:
        return seq not in self.received

    def stored(self, seqs: Iterable[int]) -> None:
        """These are durable now: they may be acknowledged."""
        for seq in seqs:
            self.received = self.received.add(seq)
            self._missing.discard(seq)
        self.news = True

    def note_missing(self, seqs: Iterable[int]) -> None:
        self._missing.update(seq for seq in seqs if self.fresh(seq))

    @property
    def has_missing(self) -> bool:
        return bool(self._missing)

    def take_missing(self, limit: int = 4096) -> tuple[int, ...]:
        """The missing numbers to ask for, once: a lost request is covered by resend timers."""
        taken = tuple(sorted(seq for seq in self._missing if self.fresh(seq))[:limit])
        self._missing.difference_update(taken)
        self._missing = {seq for seq in self._missing if self.fresh(seq)}
        return taken


@dataclass(frozen=True)
class OutgoingFile:
    """A file to write now: these messages (none for a heartbeat) with these link fields."""

    remote: str
    seqs: tuple[int, ...]
    link: LinkFields


@dataclass(frozen=True)
class Arrival:
    """What a valid file from `remote` means for the driver."""

    remote: str
    verdict: Verdict
    deliver: tuple[int, ...]  # new messages to store, then report with `stored`
    acked: tuple[int, ...]  # our messages this file acknowledged
    resend: tuple[int, ...]  # our messages it proved missing, resent at once
    old_epoch: str | None = None  # set with Verdict.NEW_EPOCH when the remote had another


@dataclass
class _Link:
    settings: LinkSettings
    outbound: Outbound
    inbound: Inbound
    last_file: float = float("-inf")


@dataclass(frozen=True)
class LinkState:
    """What the driver restores a link from after a restart."""

    next_seq: int = 1
    unacked: tuple[tuple[int, int], ...] = ()  # (seq, size)
    remote_epoch: str | None = None
    received: ReceivedState = NOTHING
    retired: tuple[str, ...] = ()


class Protocol:
    """All links of one peer. Feed it arrivals and time; it plans the files to write."""

    def __init__(
        self,
        me: str,
        epoch: str,
        settings: Mapping[str, LinkSettings],
        restored: Mapping[str, LinkState] | None = None,
        now: float = 0.0,
    ) -> None:
        self.me, self.epoch = me, epoch
        self._links: dict[str, _Link] = {}
        for remote, link_settings in settings.items():
            state = (restored or {}).get(remote, LinkState())
            self._links[remote] = _Link(
                link_settings,
                Outbound(epoch, link_settings.resend_after, state.next_seq, state.unacked, now),
                Inbound(state.remote_epoch, state.received, state.retired),
            )

    @property
    def remotes(self) -> list[str]:
        return list(self._links)

    def outbound(self, remote: str) -> Outbound:
        return self._links[remote].outbound

    def inbound(self, remote: str) -> Inbound:
        return self._links[remote].inbound

    # -- sending -------------------------------------------------------------------------

    def assign(self, remote: str) -> int:
        """The sequence number for a new message to `remote`; persist it, then `queued`."""
        return self._links[remote].outbound.assign()

    def queued(self, remote: str, seq: int, size: int, now: float) -> None:
        """`seq` is durable: first written at once when it is `collate_below` or more,
        else after the link's `linger` (with the others that came meanwhile)."""
        link = self._links[remote]
        small = size < link.settings.collate_below
        link.outbound.queue(seq, size, now + link.settings.linger if small else now)

    def noted(self, remote: str, seq: int, size: int, now: float) -> None:
        """`seq` is durable news that need not cost a file of its own (a note on a
        request's progress): it goes with the next file to `remote`, whatever makes one
        (a due message, a heartbeat), and after `ack_delay` at the latest."""
        link = self._links[remote]
        link.outbound.queue(seq, size, now + link.settings.ack_delay)

    def resending(self, now: float) -> list[str]:
        """The remotes with a resend due by `now`: only for them does `outgoing` need to
        know whether they are backlogged."""
        return [remote for remote, link in self._links.items() if link.outbound.resend_due(now)]

    def outgoing(self, now: float, backlogged: Iterable[str] = ()) -> list[OutgoingFile]:
        """The files to write now: due messages in batches, else a heartbeat when one is
        owed (interval passed, missing messages to ask for, or acks to tell).

        For `backlogged` remotes (our earlier files to them still wait in the outbox),
        resends are put off: only messages never written go out.
        """
        files = []
        held = set(backlogged)
        for remote, link in self._links.items():
            due = link.outbound.due(now)
            if remote in held:
                due = link.outbound.hold_resends(due, now)
            batches = self._batches(link, due)
            if not batches and self._owes_heartbeat(link, now):  # it takes what waits along
                batches = self._batches(link, link.outbound.unwritten()) or [()]
            for i, seqs in enumerate(batches):
                missing = link.inbound.take_missing() if i == 0 else ()
                files.append(OutgoingFile(remote, seqs, self._fields(remote, link, missing)))
        return files

    @staticmethod
    def _batches(link: _Link, seqs: list[int]) -> list[tuple[int, ...]]:
        batches: list[tuple[int, ...]] = []
        current: list[int] = []
        size = 0
        for seq in seqs:
            item = link.outbound.size(seq)
            full = len(current) >= link.settings.max_frames
            if current and (full or size + item > link.settings.max_bytes):
                batches.append(tuple(current))
                current, size = [], 0
            current.append(seq)
            size += item
        if current:
            batches.append(tuple(current))
        return batches

    @staticmethod
    def _owes_heartbeat(link: _Link, now: float) -> bool:
        """Written as `now >= last + interval`, exactly as `next_wakeup` computes the time,
        so a wake-up at that time always finds the heartbeat owed (no float drift)."""
        if now >= link.last_file + link.settings.heartbeat or link.inbound.has_missing:
            return True
        return link.inbound.news and now >= link.last_file + link.settings.ack_delay

    def _fields(self, remote: str, link: _Link, missing: tuple[int, ...]) -> LinkFields:
        inbound = link.inbound
        return LinkFields(
            ack=inbound.received if inbound.epoch is not None else None,
            ack_epoch=inbound.epoch,
            floor=link.outbound.floor,
            missing=missing,
            clock=self.clock(),
        )

    def written(self, file: OutgoingFile, now: float) -> None:
        link = self._links[file.remote]
        link.outbound.sent(file.seqs, now)
        link.outbound.stats.files += 1
        link.last_file = now
        link.inbound.news = False

    def failed(self, file: OutgoingFile, now: float) -> None:
        """The file could not be written (the outbox is full, gone or read-only): try its
        messages again within a second; nothing reached the pipe, so nothing is wasted."""
        link = self._links[file.remote]
        link.outbound.retry(file.seqs, now + min(link.settings.resend_after, 1.0))

    def next_wakeup(self) -> float | None:
        """When `outgoing` may next have something to say (None: only after an event)."""
        times = []
        for link in self._links.values():
            due = link.outbound.next_due()
            if due is not None:
                times.append(due)
            times.append(link.last_file + link.settings.heartbeat)
            if link.inbound.news:
                times.append(link.last_file + link.settings.ack_delay)
            if link.inbound.has_missing:
                times.append(float("-inf"))
        return min(times, default=None)

    # -- receiving -----------------------------------------------------------------------

    def arrived(
        self, header: Header, whole: Iterable[int], cut: Iterable[int], now: float
    ) -> Arrival:
        """A valid file from a remote: `whole` are the sequence numbers of the frames that
        arrived intact, `cut` those that were cut off or damaged."""
        remote = header.sender
        link = self._links[remote]
        old_epoch = link.inbound.epoch
        verdict = link.inbound.observe(header.epoch, header.link.floor)
        acked: list[int] = []
        if header.link.ack is not None and header.link.ack_epoch == self.epoch:
            acked = link.outbound.acked(header.link.ack, now)
        resend = link.outbound.resend_now(header.link.missing, now)
        deliver: list[int] = []
        if verdict is not Verdict.STALE:
            seen: set[int] = set()
            for seq in whole:
                if seq >= 1 and link.inbound.fresh(seq) and seq not in seen:
                    seen.add(seq)
                    deliver.append(seq)
            link.inbound.note_missing(seq for seq in cut if seq not in seen)
        return Arrival(
            remote,
            verdict,
            tuple(deliver),
            tuple(acked),
            tuple(resend),
            old_epoch if verdict is Verdict.NEW_EPOCH else None,
        )

    def stored(self, remote: str, seqs: Iterable[int]) -> None:
        """Deliveries from `remote` are durable: acknowledge them from now on."""
        self._links[remote].inbound.stored(seqs)

    def clock(self) -> dict[str, int]:
        """Our `upto` per remote: how far each link has arrived here without a gap."""
        return {remote: link.inbound.received.upto for remote, link in self._links.items()}
