"""Our messages to one remote, pure: numbering, what is unacknowledged, when to resend.

A message is pending from the moment it is durable (`queue`) until an ack state holds it
(`acked`). A message written is due again after the timeout (`resend_after`, or twice
the smoothed round trip when longer, as measured when it comes due: a pipe backing up
makes it longer) times a capped exponential backoff. A message the reader asks for (it
saw it cut) is due again at once, and so is one overtaken by the acknowledgements of
later files (`overtaking`). A reader asks again for what it still misses; an ask for a
message whose last copy was itself sent for an ask may come while that copy is on its
way, so it waits, as a plain resend does, while that copy is still in the outbox. Time
is passed in.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .overtaking import Overtaking
from .received import ReceivedState

BACKOFF_LIMIT = 8  # resend delays: 1, 2, 4, 8, 8, 8... times resend_after


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
    file: int = 0  # the number of our file that carried it last (0: none yet)
    answers: bool = False  # its last copy was sent for an ask, or as found overtaken
    overtook: bool = False  # its last copy was sent as found overtaken
    held: bool = False  # put off when last due, its copy waiting in the outbox
    restored: bool = False  # pending at start: maybe written before it, too


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
        self._overtaken: set[int] = set()  # found overtaken, not written since
        self._asked_again: set[int] = set()  # asked for again since their last copy
        self.overtaking = Overtaking()
        self.written_upto = 0  # the highest number written in a file since start
        for seq, size in sorted(unacked):
            self.queue(seq, size, now)
            self._pending[seq].restored = True

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
    def in_flight(self) -> bool:
        """Whether a message written is still unacknowledged."""
        return len(self._pending) > len(self._unwritten)

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

    def holds(self, seq: int) -> bool:
        """Whether `seq` is pending (assigned, durable, not acknowledged)."""
        return seq in self._pending

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
            if pending is None or pending.due != due:
                continue
            if self._on_its_timer(seq, pending) and self._resend_at(pending) > now:
                self._schedule(seq, self._resend_at(pending))  # the round trip grew since
                continue
            found.add(seq)
        if found:
            found |= self._unwritten
        return sorted(found)

    def _on_its_timer(self, seq: int, pending: _Pending) -> bool:
        """Whether `seq` is due again only by its timer (written, nobody asked for it)."""
        asked = seq in self._proven or seq in self._asked_again
        return pending.attempts > 0 and not asked

    def _resend_at(self, pending: _Pending) -> float:
        """When a message written is due again by its timer: the timeout as measured now
        (twice the round trip, which grows as the pipe backs up), times its backoff."""
        backoff: int = min(2 ** (pending.attempts - 1), BACKOFF_LIMIT)
        return pending.sent_at + self.timeout() * backoff

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
        carried = [seq for seq in seqs if seq in self._pending]
        file = self.overtaking.wrote(carried) if carried else 0
        self.written_upto = max(self.written_upto, *carried, 0)
        for seq in carried:
            pending = self._pending[seq]
            pending.attempts += 1
            pending.sent_at = now
            pending.file = file
            pending.answers, pending.overtook = seq in self._proven, seq in self._overtaken
            pending.held = False
            self._unwritten.discard(seq)
            self._proven.discard(seq)
            self._asked_again.discard(seq)
            self._overtaken.discard(seq)
            if pending.attempts == 1:
                self.stats.sent += 1
            else:
                self.stats.resends += 1
            self._schedule(seq, self._resend_at(pending))
        self.overtaking.compact(self._last_file, len(self._pending))

    def _last_file(self, seq: int) -> int | None:
        pending = self._pending.get(seq)
        return pending.file if pending is not None else None

    def timeout(self) -> float:
        """The current wait before a first resend."""
        return self.round_trip.timeout(self.resend_after)

    def hold_resends(self, seqs: Iterable[int], now: float, waiting: Collection[int]) -> list[int]:
        """Of `seqs`, those already written once (and not proven missing) whose copy is
        still `waiting` in the outbox (the pipe has not taken its file yet) are put off
        for another timeout; so are those due by their timer that were put off before and
        since taken (the pipe took them some time since: their acks may be on the way).
        The rest are returned."""
        fresh = []
        for seq in seqs:
            pending = self._pending.get(seq)
            if pending is None or not pending.attempts or seq in self._proven:
                fresh.append(seq)
            elif seq in waiting or (pending.held and self._on_its_timer(seq, pending)):
                pending.held = seq in waiting
                self._schedule(seq, now + self.timeout())
            else:
                fresh.append(seq)
        return fresh

    def retry(self, seqs: Iterable[int], at: float) -> None:
        """A write failed: try these again at `at`, without counting an attempt."""
        for seq in seqs:
            self._schedule(seq, at)

    def resend_now(self, seqs: Iterable[int], now: float) -> list[int]:
        """These are missing for sure (the reader's state was made anew, or restarted):
        send them again at once (if still unacked)."""
        hit = [seq for seq in seqs if seq in self._pending]
        for seq in hit:
            self._proven.add(seq)
            self._schedule(seq, now)
        return hit

    def asked(self, seqs: Iterable[int], now: float) -> list[int]:
        """The reader asks for these (if still unacked): due again at once. One whose last
        copy was itself sent for an ask may be asked for again while that copy is on its
        way: it is held as a plain resend is, while that copy waits in the outbox, so a
        reader asking again gets no copy per ask."""
        hit = [seq for seq in seqs if seq in self._pending]
        self.asked_again([seq for seq in hit if self._pending[seq].answers], now)
        self.resend_now([seq for seq in hit if not self._pending[seq].answers], now)
        return hit

    def asked_again(self, seqs: Iterable[int], now: float) -> list[int]:
        """The reader has not seen these (if still unacked), though we told it we wrote
        them: due again at once, but held while their last copy waits in the outbox (it
        may be on its way still)."""
        hit = [seq for seq in seqs if seq in self._pending]
        for seq in hit:
            self._asked_again.add(seq)
            self._schedule(seq, now)
        return hit

    def first_asks(self, seqs: Iterable[int]) -> tuple[int, ...]:
        """Of `seqs` the reader asks for, those whose last copy was not sent for an ask:
        that copy surely came cut (an ask again may be for a copy still on its way)."""
        return tuple(s for s in seqs if s in self._pending and not self._pending[s].answers)

    def overtaken(self, now: float) -> list[int]:
        """Messages overtaken by the acknowledgements of later files (`overtaking`): due
        again at once, as if the reader asked for them. Call after `acked`."""
        found = self.overtaking.overtaken(self._last_file)
        self._overtaken.update(found)
        return self.resend_now(found, now)

    def _too_soon(self, seconds: float) -> bool:
        """Whether an ack `seconds` after a copy was written cannot be for that copy."""
        smoothed = self.round_trip.smoothed
        return smoothed is not None and seconds < smoothed / 2

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
            for flagged in (self._unwritten, self._proven, self._asked_again, self._overtaken):
                flagged.discard(seq)
            pending = self._pending.pop(seq)
            if pending.attempts == 1 and not pending.restored:  # which copy an ack answers
                self.round_trip.sample(now - pending.sent_at)  # is known only for one
                self.overtaking.acked_first_copy(pending.file)
            elif pending.overtook and self._too_soon(now - pending.sent_at):
                self.overtaking.needless_copy()  # its earlier copy came, late
        if done:
            self.stats.acked += len(done)
            self.stats.last_ack = now
        self.next_seq = max(self.next_seq, state.upto + 1, *(hi + 1 for _, hi in state.ranges))
        return done
