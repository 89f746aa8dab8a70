"""The reliable link protocol, pure: no I/O, no clock (time is passed in).

Each ordered pair of peers is a link with sequence numbers 1, 2, 3... Acknowledgement is
state, not messages: every file carries what its writer has received from the reader
(`ReceivedState`, a grow-only set), so a lost or stale ack never matters and the newest
supersedes all older. Messages not acknowledged are resent after `resend_after` with
capped exponential backoff, or at once when the reader proves it is missing them (frames
cut from a file) or acknowledges messages of later files (its ask was lost); see
`outbound`. Each sequence number is delivered upward once.

Epochs: a peer's state store gets a random epoch when created. A reader keeps what it
received per sender epoch; when a sender's epoch changes (its state was wiped), the reader
starts afresh from the sender's `floor` (its lowest unacknowledged number), and files
from a retired epoch deliver nothing (see `inbound`). Acks name the epoch they
acknowledge, so an ack for an older incarnation never acknowledges a newer one's messages.

No replays across epochs: a file delivers messages only if it was written knowing the
reader's current epoch (its `ack_epoch` is the reader's epoch). A file made before that
epoch existed (captured and dropped into the pipe again after the reader's state was
wiped) delivers nothing; nor does a writer's first file, before it heard the reader.
Nothing is lost: when a writer learns a new epoch of its reader, it resends at once
every message it still holds, and those files do name the new epoch. Nor does such a
file change what the reader holds to be the writer's epoch (an old file replayed would
retire the current one and cut the link), unless the reader has heard nothing of the
writer yet or the file was written after the epoch it holds began (by the writer's
clock: after both states were made anew, files of their old epochs left in the pipe
must not stand in the way); its missing hints are ignored too. The same holds per
start of the reader: each start has a random session, and a file delivers only if it
names the reader's current one, so a state restored from a backup (same epoch, less
received) takes nothing from files captured before it started; a writer that hears a
new session of its reader resends what it holds at once.

Events in, decisions out; the driver (`mesh.pipe.links`) never looks inside. Its duties:
persist a message before `queued` (or `noted`); persist deliveries with their `receipt`
before `stored` (an ack is advertised only for what is durable); write the files
`outgoing` plans, reporting each back with `written` (which says what it sent for the
first time) or `failed`; keep what `arrived` says must be kept (acks, numbering).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol as Interface

from .inbound import NOTHING, Inbound, Verdict
from .outbound import Outbound
from .received import ReceivedState
from .sizing import FileSizes


@dataclass(frozen=True)
class LinkSettings:
    """How one peer treats its link to one remote."""

    heartbeat: float
    resend_after: float
    linger: float = 0.0  # while a message awaits its ack, a new small one waits this long
    collate_below: int = 64 << 10  # bytes: a message this big or bigger does not wait
    max_frames: int = 512  # messages per file
    max_bytes: int = 64 << 20  # payload bytes per file at most (a bigger message goes alone)
    min_bytes: int = 1 << 20  # nor does the size learned for files go below this

    @property
    def ack_delay(self) -> float:
        """How soon news worth telling (new acks) goes out when no file is due anyway: half
        a heartbeat, so a busy link makes at most two ack-only files per heartbeat."""
        return self.heartbeat / 2


@dataclass(frozen=True)
class LinkFields:
    """What a file tells its recipient about the link, besides its frames.

    `ack` is what the writer has durably received from the recipient while the recipient
    had epoch `ack_epoch`; `floor` is the writer's lowest unacknowledged sequence number
    (everything below it was acknowledged, or never existed); `missing` names messages
    the writer saw cut from a file and wants again; `written` is the highest number the
    writer has written in a file to the recipient before this one, and `unseen` names
    messages the writer has not seen though the recipient said it wrote them (a file
    lost whole, or still on its way); `clock` is the writer's `upto` per peer.
    """

    ack: ReceivedState | None = None
    ack_epoch: str | None = None
    session: str | None = None  # the writer's, new each time it starts
    ack_session: str | None = None  # the recipient's, as the writer last heard it
    floor: int = 1
    missing: tuple[int, ...] = ()
    written: int = 0
    unseen: tuple[int, ...] = ()
    clock: Mapping[str, int] = field(default_factory=dict)


class FileHead(Interface):
    """What `arrived` needs of a valid file's signed header (`mesh.wire` has the real one)."""

    @property
    def sender(self) -> str: ...

    @property
    def epoch(self) -> str: ...

    @property
    def created(self) -> float: ...  # the writer's clock when it wrote the file

    @property
    def link(self) -> LinkFields: ...


@dataclass(frozen=True)
class OutgoingFile:
    """A file to write now: these messages (none for a heartbeat) with these link fields."""

    remote: str
    seqs: tuple[int, ...]
    link: LinkFields


@dataclass(frozen=True)
class Written:
    """What a file just written carried: messages written for the first time (`sent`) and
    messages written again (`resent`)."""

    sent: tuple[int, ...]
    resent: tuple[int, ...]


@dataclass(frozen=True)
class Arrival:
    """What a valid file from `remote` means for the driver. When it acknowledged
    anything or moved our numbering (`renumbered`: the reader had seen numbers we had
    not assigned, from before our state was restored), the driver keeps `acked` and
    `next_seq` durably."""

    remote: str
    verdict: Verdict
    deliver: tuple[int, ...]  # new messages to store, then report with `stored`
    acked: tuple[int, ...]  # our messages this file acknowledged
    resend: tuple[int, ...]  # ours it proved missing or overtook, resent at once
    next_seq: int  # our next number for `remote` after this file
    renumbered: bool = False  # the file moved `next_seq` forward
    old_epoch: str | None = None  # set with Verdict.NEW_EPOCH when the remote had another

    @property
    def to_keep(self) -> bool:
        """Whether acks or numbering changed: what the driver must make durable."""
        return bool(self.acked) or self.renumbered


@dataclass(frozen=True)
class Receipt:
    """The received-state of a link once some deliveries are stored: what the driver
    stores with them, in the same transaction, before reporting them `stored`."""

    epoch: str  # the remote's epoch they belong to
    received: ReceivedState
    retired: frozenset[str]  # the remote's earlier epochs, whose files deliver nothing
    since: float = 0.0  # when the remote's epoch began, by its clock


@dataclass(frozen=True)
class LinkStatus:
    """What `mesh status` shows of one link."""

    assigned: int  # sequence numbers given out so far
    unacked: int
    resends: int
    files: int
    last_ack: float | None  # when an ack last acknowledged something new
    remote_epoch: str | None
    received_upto: int
    file_size: int  # payload bytes per file at most, as learned (see `sizing`)


@dataclass
class _Link:
    settings: LinkSettings
    outbound: Outbound
    inbound: Inbound
    sizes: FileSizes
    last_file: float = float("-inf")
    remote_session: str | None = None  # the remote's current session, once heard
    session_since: float = float("-inf")  # `created` of the file that told it


@dataclass(frozen=True)
class LinkState:
    """What the driver restores a link from after a restart."""

    next_seq: int = 1
    unacked: tuple[tuple[int, int], ...] = ()  # (seq, size)
    remote_epoch: str | None = None
    received: ReceivedState = NOTHING
    retired: tuple[str, ...] = ()
    remote_since: float = 0.0


class Protocol:
    """All links of one peer. Feed it arrivals and time; it plans the files to write."""

    def __init__(
        self,
        me: str,
        epoch: str,
        settings: Mapping[str, LinkSettings],
        restored: Mapping[str, LinkState] | None = None,
        now: float = 0.0,
        session: str | None = None,
    ) -> None:
        self.me, self.epoch = me, epoch
        self.session = session  # new at each start (None: files need not name one)
        self._links: dict[str, _Link] = {}
        for remote, link_settings in settings.items():
            state = (restored or {}).get(remote, LinkState())
            self._links[remote] = _Link(
                link_settings,
                Outbound(epoch, link_settings.resend_after, state.next_seq, state.unacked, now),
                Inbound(state.remote_epoch, state.received, state.retired, state.remote_since),
                FileSizes(link_settings.max_bytes, link_settings.min_bytes),
            )

    @property
    def remotes(self) -> list[str]:
        return list(self._links)

    def outbound(self, remote: str) -> Outbound:
        """The outbound side of the link to `remote`, for tests to look into (drivers use
        what the events return, and `status`)."""
        return self._links[remote].outbound

    def inbound(self, remote: str) -> Inbound:
        """The inbound side of the link from `remote`, for tests (see `outbound`)."""
        return self._links[remote].inbound

    # -- sending -------------------------------------------------------------------------

    def assign(self, remote: str) -> int:
        """The sequence number for a new message to `remote`; persist it, then `queued`."""
        return self._links[remote].outbound.assign()

    def queued(self, remote: str, seq: int, size: int, now: float) -> None:
        """`seq` is durable: first written at once when it is `collate_below` or more, or
        when nothing written to `remote` waits for its ack (as TCP's Nagle: an idle link
        adds no delay); else after the link's `linger`, with the others that came
        meanwhile (under load, messages share files)."""
        link = self._links[remote]
        waits = size < link.settings.collate_below and link.outbound.in_flight
        link.outbound.queue(seq, size, now + link.settings.linger if waits else now)

    def noted(self, remote: str, seq: int, size: int, now: float) -> None:
        """`seq` is durable news that need not cost a file of its own (a note on a
        request's progress): it goes with the next file to `remote`, whatever makes one
        (a due message, a heartbeat), and after `ack_delay` at the latest."""
        link = self._links[remote]
        link.outbound.queue(seq, size, now + link.settings.ack_delay)

    def resending(self, now: float) -> list[str]:
        """The remotes with a resend due by `now`: only for them does `outgoing` need to
        know which of our messages still wait in the outbox."""
        return [remote for remote, link in self._links.items() if link.outbound.resend_due(now)]

    def outgoing(
        self, now: float, waiting: Mapping[str, Collection[int]] | None = None
    ) -> list[OutgoingFile]:
        """The files to write now: due messages in batches, else a heartbeat when one is
        owed (interval passed, missing messages to ask for, or acks to tell).

        `waiting` names, per remote, our messages that a file of ours still carries in the
        outbox (the pipe has not taken it yet): their resends are put off, as a copy would
        only queue behind the one still there. Any other message due goes, however many of
        our files wait: a message whose file the pipe took, and no ack came for, is resent.
        """
        files = []
        for remote, link in self._links.items():
            due = link.outbound.due(now)
            if waiting is not None and remote in waiting:  # looked for: held, or since taken
                due = link.outbound.hold_resends(due, now, waiting[remote])
            batches = self._batches(link, due)
            if not batches and self._owes_heartbeat(link, now):  # it takes what waits along
                batches = self._batches(link, link.outbound.unwritten()) or [()]
            for i, seqs in enumerate(batches):
                asks = _asks(link, now) if i == 0 else ((), ())
                files.append(OutgoingFile(remote, seqs, self._fields(remote, link, *asks)))
        return files

    @staticmethod
    def _batches(link: _Link, seqs: list[int]) -> list[tuple[int, ...]]:
        batches: list[tuple[int, ...]] = []
        current: list[int] = []
        size = 0
        for seq in seqs:
            item = link.outbound.size(seq)
            full = len(current) >= link.settings.max_frames
            if current and (full or size + item > link.sizes.limit):
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
        if now >= link.last_file + link.settings.heartbeat:
            return True
        ask = link.inbound.next_ask(_ask_again_after(link))
        if ask is not None and ask <= now:
            return True
        return link.inbound.news and now >= link.last_file + link.settings.ack_delay

    def _fields(
        self, remote: str, link: _Link, missing: tuple[int, ...], unseen: tuple[int, ...]
    ) -> LinkFields:
        inbound = link.inbound
        return LinkFields(
            ack=inbound.received if inbound.epoch is not None else None,
            ack_epoch=inbound.epoch,
            session=self.session,
            ack_session=link.remote_session,
            floor=link.outbound.floor,
            missing=missing,
            written=link.outbound.written_upto,
            unseen=unseen,
            clock=self.clock(),
        )

    def written(self, file: OutgoingFile, now: float) -> Written:
        """`file` is in the pipe: its messages wait for their acks from `now` on. What it
        sent and resent leaves out messages acknowledged while it was being written. A
        file planned before a new epoch of its reader was learned (while it was being
        written) delivers nothing: its messages go again at once."""
        link = self._links[file.remote]
        attempts = {seq: link.outbound.attempts(seq) for seq in file.seqs}
        carried = tuple(seq for seq in file.seqs if link.outbound.holds(seq))
        link.sizes.wrote(carried, sum(link.outbound.size(seq) for seq in carried))
        link.outbound.sent(file.seqs, now)
        known = (link.inbound.epoch, link.remote_session)
        if (file.link.ack_epoch, file.link.ack_session) != known:  # planned before we knew
            link.outbound.resend_now(file.seqs, now)  # the reader's epoch: nothing there
        link.outbound.stats.files += 1
        link.last_file = now
        link.inbound.news = False
        return Written(
            tuple(
                seq for seq, tries in attempts.items() if tries == 0 and link.outbound.holds(seq)
            ),
            tuple(seq for seq, tries in attempts.items() if tries > 0),
        )

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
            ask = link.inbound.next_ask(_ask_again_after(link))
            if ask is not None:
                times.append(ask)
        return min(times, default=None)

    # -- receiving -----------------------------------------------------------------------

    def arrived(
        self, head: FileHead, whole: Iterable[int], cut: Iterable[int], now: float
    ) -> Arrival:
        """A valid file from a remote: `whole` are the sequence numbers of the frames that
        arrived intact, `cut` those that were cut off or damaged."""
        remote = head.sender
        link = self._links[remote]
        old_epoch, numbered_to = link.inbound.epoch, link.outbound.next_seq
        acquainted = self._acquainted(head.link)  # written knowing our epoch and session
        inbound = link.inbound
        if acquainted or inbound.epoch in (None, head.epoch) or head.created > inbound.since:
            verdict = inbound.observe(head.epoch, head.link.floor, head.created)
        else:  # a change of the writer's epoch, told by a file that did not know ours and
            verdict = Verdict.STALE  # is older than the epoch we hold: an old file replayed
        acked: list[int] = []
        if head.link.ack is not None and head.link.ack_epoch == self.epoch:
            acked = link.outbound.acked(head.link.ack, now)
        if acquainted:  # frames cut from our files: maybe too big. Only those still
            # unacknowledged: a file replayed into the pipe names long-acknowledged ones
            link.sizes.lost(link.outbound.first_asks(head.link.missing))
        resend = link.outbound.asked(head.link.missing if acquainted else (), now)
        resend += link.outbound.asked_again(head.link.unseen if acquainted else (), now)
        resend += link.outbound.overtaken(now)
        restarted = self._new_session(link, head, acquainted)
        if verdict is Verdict.NEW_EPOCH or restarted:
            # it took nothing we wrote before we knew its epoch (or this start of it)
            resend += link.outbound.resend_now(link.outbound.pending(), now)
        deliver: list[int] = []
        if verdict is not Verdict.STALE and acquainted:
            whole, cut = tuple(whole), tuple(cut)
            seen: set[int] = set()
            for seq in whole:
                if seq >= 1 and link.inbound.fresh(seq) and seq not in seen:
                    seen.add(seq)
                    deliver.append(seq)
            link.inbound.came(whole + cut, now)
            link.inbound.note_missing(seq for seq in cut if seq not in seen)
            link.inbound.told_written(head.link.written, {*whole, *cut}, now)
        return Arrival(
            remote,
            verdict,
            tuple(deliver),
            tuple(acked),
            tuple(resend),
            link.outbound.next_seq,
            link.outbound.next_seq > numbered_to,
            old_epoch if verdict is Verdict.NEW_EPOCH else None,
        )

    def _acquainted(self, fields: LinkFields) -> bool:
        """Whether a file was written knowing our epoch and, when we have one, this
        start of ours (its session): only such a file delivers messages."""
        if fields.ack_epoch != self.epoch:
            return False
        return self.session is None or fields.ack_session == self.session

    @staticmethod
    def _new_session(link: _Link, head: FileHead, acquainted: bool) -> bool:
        """Take note of the writer's session from a file believed fresh: one that knows
        our session, or was written after the file that told us the session we hold (an
        old file replayed cannot move it back; a newer one, not knowing us yet, may move
        it on). Whether it is new to us (the first heard since we started, too: what we
        wrote before named none)."""
        session = head.link.session
        if session is None or session == link.remote_session:
            return False
        if not acquainted and head.created <= link.session_since:
            return False
        link.remote_session, link.session_since = session, head.created
        return True

    def receipt(self, remote: str, seqs: Iterable[int]) -> Receipt:
        """The received-state from `remote` once `seqs` (delivered by `arrived`) are
        stored; changes nothing. ValueError before any file from `remote` arrived."""
        inbound = self._links[remote].inbound
        if inbound.epoch is None:
            raise ValueError(f"nothing arrived from {remote} yet")
        received = inbound.received
        for seq in seqs:
            received = received.add(seq)
        return Receipt(inbound.epoch, received, frozenset(inbound.retired), inbound.since)

    def stored(self, remote: str, seqs: Iterable[int]) -> None:
        """Deliveries from `remote` are durable: acknowledge them from now on."""
        self._links[remote].inbound.stored(seqs)

    # -- status --------------------------------------------------------------------------

    def ack_timeout(self, remote: str) -> float:
        """How long a message to `remote` waits for its ack before it is resent."""
        return self._links[remote].outbound.timeout()

    def any_unacked(self, remote: str, seqs: Iterable[int]) -> bool:
        """Whether any of `seqs` to `remote` still waits for its ack."""
        return any(map(self._links[remote].outbound.holds, seqs))

    def status(self, remote: str) -> LinkStatus:
        link = self._links[remote]
        outbound, inbound = link.outbound, link.inbound
        return LinkStatus(
            assigned=outbound.next_seq - 1,
            unacked=outbound.unacked,
            resends=outbound.stats.resends,
            files=outbound.stats.files,
            last_ack=outbound.stats.last_ack,
            remote_epoch=inbound.epoch,
            received_upto=inbound.received.upto,
            file_size=link.sizes.limit,
        )

    def clock(self) -> dict[str, int]:
        """Our `upto` per remote: how far each link has arrived here without a gap."""
        return {remote: link.inbound.received.upto for remote, link in self._links.items()}


def _ask_again_after(link: _Link) -> float:
    """How long a missing message goes unasked for again: twice the time an ask takes to
    be answered, else twice our messages' round trip on the link, else `resend_after`
    until either is measured; never under `ack_delay`."""
    smoothed = link.inbound.ask_round_trip.smoothed or link.outbound.round_trip.smoothed
    again = link.settings.resend_after if smoothed is None else 2 * smoothed
    return max(again, link.settings.ack_delay)


def _asks(link: _Link, now: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The missing and unseen numbers to ask for in a file written `now`."""
    again = _ask_again_after(link)
    return link.inbound.take_missing(now, again), link.inbound.take_unseen(now, again)
