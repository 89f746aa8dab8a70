"""Our messages to one remote, pure: numbering, what is unacknowledged, when to resend.

A message is pending from the moment it is durable (`queue`) until an ack state holds it
(`acked`). Each write schedules its resend after the timeout (`resend_after`, or twice
the smoothed round trip when longer) times a capped exponential backoff; a message the
reader proves missing is due again at once. So is one overtaken: acknowledgements came
for messages first written `OVERTAKEN_BY` or more files after its own copy's file (a
pipe keeps the order of files, so that file came through, cut, and the reader's ask for
it was lost: TCP's fast retransmit). A pipe that reorders files more than that costs a
needless copy, dropped by the reader as a duplicate. Time is passed in.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .received import ReceivedState

BACKOFF_LIMIT = 8  # resend delays: 1, 2, 4, 8, 8, 8... times resend_after
OVERTAKEN_BY = 3  # files of ours acknowledged after a message's file: it was lost


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
        self._files = 0  # our files with messages written so far, numbered from 1
        self._acked_file = 0  # the newest file one of whose first copies was acknowledged
        self._carried: list[tuple[int, int]] = []  # heap of (file, seq) for each write
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
        carried = [seq for seq in seqs if seq in self._pending]
        if carried:
            self._files += 1
        for seq in carried:
            pending = self._pending[seq]
            pending.attempts += 1
            pending.sent_at = now
            pending.file = self._files
            heapq.heappush(self._carried, (self._files, seq))
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

    def hold_resends(self, seqs: Iterable[int], now: float, waiting: Collection[int]) -> list[int]:
        """Of `seqs`, those already written once and still `waiting` in the outbox (the
        pipe has not taken their file yet), put off for another timeout. The rest (never
        written, proven missing by the reader, or whose file the pipe took) are returned."""
        fresh = []
        for seq in seqs:
            if self.attempts(seq) and seq not in self._proven and seq in waiting:
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

    def overtaken(self, now: float) -> list[int]:
        """Messages whose last copy's file came `OVERTAKEN_BY` or more files before the
        newest file acknowledged (by a message written once): due again at once, as if
        proven missing. Each copy is found once; call after `acked`."""
        found = []
        while self._carried and self._carried[0][0] <= self._acked_file - OVERTAKEN_BY:
            file, seq = heapq.heappop(self._carried)
            pending = self._pending.get(seq)
            if pending is not None and pending.file == file:
                found.append(seq)
        return self.resend_now(found, now)

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
            if pending.attempts == 1:  # which copy an ack answers is known only for one
                self.round_trip.sample(now - pending.sent_at)
                self._acked_file = max(self._acked_file, pending.file)
        if done:
            self.stats.acked += len(done)
            self.stats.last_ack = now
        self.next_seq = max(self.next_seq, state.upto + 1, *(hi + 1 for _, hi in state.ranges))
        return done
