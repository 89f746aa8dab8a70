"""What we received from one remote, pure: per its epoch, and what we know we miss.

A message seen cut from a file is asked for at once, and again each time `again_after`
passes without it (an ask travels in a file, which the pipe may lose too; the writer's
timer, backing off, would be much slower). It is no longer asked for once stored, or
once the writer's floor passes it. How long an ask takes to be answered is measured
(`ask_round_trip`) from messages asked for once only, as the writer's round trip is.

Each file also says the highest number its writer wrote before it (`told_written`): a
number up to it not seen `again_after` later is asked for as unseen (a file lost whole,
with no later file to show the gap: the writer's timer, backing off, would take minutes),
and again each `again_after` until it comes.

A remote's epoch changes when its state is created anew: we then start afresh from its
`floor`, and files from a retired epoch deliver nothing. A number is acknowledged only
once the driver reports it durable (`stored`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from enum import Enum

from .outbound import RoundTrip
from .received import ReceivedState

NOTHING = ReceivedState()
MISSING_KEPT = 1 << 16  # numbers seen cut and asked for, at most


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
        since: float = 0.0,
    ) -> None:
        self.epoch = epoch
        self.since = since  # `created` of the file that began `epoch` (the writer's clock)
        self.received = received
        self.retired = set(retired)
        self._missing: dict[int, float] = {}  # seq: when last asked (-inf: not yet)
        self._asked_once: dict[int, float] = {}  # seq: when, if asked once since cut
        self._unseen: dict[int, float] = {}  # seq: when last asked, or known written
        self._told_written = 0  # the highest number written the writer told, this epoch
        self.ask_round_trip = RoundTrip()
        self.news = False  # received something not yet told in a file

    def observe(self, epoch: str, floor: int, created: float = 0.0) -> Verdict:
        """Take note of a file from the remote in `epoch` whose writer's floor is `floor`,
        written at `created` (by the writer's clock)."""
        if epoch == self.epoch:
            self.received = self.received.merge(ReceivedState(floor - 1))
            if self._missing:  # the writer no longer holds those below its floor
                self._missing = {s: at for s, at in self._missing.items() if self.fresh(s)}
                asked = self._asked_once.items()
                self._asked_once = {s: at for s, at in asked if s in self._missing}
            if self._unseen:
                self._unseen = {s: at for s, at in self._unseen.items() if self.fresh(s)}
            return Verdict.CURRENT
        if epoch in self.retired:
            return Verdict.STALE
        if self.epoch is not None:
            self.retired.add(self.epoch)
        self.epoch, self.received, self.since = epoch, ReceivedState(floor - 1), created
        self._missing.clear()
        self._asked_once.clear()
        self._unseen.clear()
        self._told_written = 0
        self.news = True
        return Verdict.NEW_EPOCH

    def fresh(self, seq: int) -> bool:
        return seq not in self.received

    def stored(self, seqs: Iterable[int]) -> None:
        """These are durable now: they may be acknowledged."""
        for seq in seqs:
            self.received = self.received.add(seq)
            self._missing.pop(seq, None)
            self._unseen.pop(seq, None)
        self.news = True

    def came(self, seqs: Iterable[int], now: float) -> None:
        """Frames of these came at `now`, whole or cut: an ask made once is answered."""
        if self._asked_once:
            for seq in seqs:
                asked = self._asked_once.pop(seq, None)
                if asked is not None:
                    self.ask_round_trip.sample(now - asked)

    def note_missing(self, seqs: Iterable[int]) -> None:
        """These were cut from a file: ask for them at once (again, if asked before). At
        most `MISSING_KEPT` are kept, the lowest (a writer naming ever more numbers in
        its files' frames cannot grow this without bound)."""
        noted = [seq for seq in seqs if self.fresh(seq)]
        self._missing.update((seq, -math.inf) for seq in noted)
        for seq in noted:
            self._unseen.pop(seq, None)
        if len(self._missing) > MISSING_KEPT:
            for seq in sorted(self._missing)[MISSING_KEPT:]:
                del self._missing[seq]
                self._asked_once.pop(seq, None)

    def told_written(self, written: int, seen: Collection[int], now: float) -> None:
        """A file (carrying `seen`) says its writer wrote up to `written` before it: the
        numbers up to it not seen yet are asked for if still not seen `again_after` from
        `now` (a file may still be on its way). At most `MISSING_KEPT` are kept."""
        start = max(self._told_written, self.received.upto) + 1
        end = min(written, start + MISSING_KEPT - len(self._unseen) - 1)
        for seq in range(start, end + 1):
            if self.fresh(seq) and seq not in seen and seq not in self._missing:
                self._unseen.setdefault(seq, now)
        self._told_written = max(self._told_written, end)

    def next_ask(self, again_after: float) -> float | None:
        """When a missing or unseen message is next to be asked for (-inf: one never asked
        yet); None if none is."""
        if not (self._missing or self._unseen):
            return None
        return min(*self._missing.values(), *self._unseen.values(), math.inf) + again_after

    def take_unseen(self, now: float, again_after: float, limit: int = 4096) -> tuple[int, ...]:
        """The unseen numbers to ask for now (not seen `again_after` after the writer said
        it wrote them, or last asked that long ago), lowest first, taken as asked at `now`."""
        taken = _due(self._unseen, now, again_after, limit)
        self._unseen.update((seq, now) for seq in taken)
        return taken

    def take_missing(self, now: float, again_after: float, limit: int = 4096) -> tuple[int, ...]:
        """The missing numbers to ask for now (never asked, or last asked `again_after`
        ago or more), lowest first, taken as asked at `now`."""
        taken = _due(self._missing, now, again_after, limit)
        for seq in taken:
            if self._missing[seq] == -math.inf:
                self._asked_once[seq] = now
            else:  # asked before: which ask an answer answers is unknown
                self._asked_once.pop(seq, None)
            self._missing[seq] = now
        return taken


def _due(asks: dict[int, float], now: float, again_after: float, limit: int) -> tuple[int, ...]:
    """Of `asks` (number: when last asked), those to ask for at `now`, lowest first."""
    due = sorted(seq for seq, at in asks.items() if at + again_after <= now)
    return tuple(due[:limit])
