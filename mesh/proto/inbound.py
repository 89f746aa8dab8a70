"""What we received from one remote, pure: per its epoch, and what we know we miss.

A remote's epoch changes when its state is created anew: we then start afresh from its
`floor`, and files from a retired epoch deliver nothing. A number is acknowledged only
once the driver reports it durable (`stored`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from .received import ReceivedState

NOTHING = ReceivedState()


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
        self._missing: set[int] = set()
        self.news = False  # received something not yet told in a file

    def observe(self, epoch: str, floor: int, created: float = 0.0) -> Verdict:
        """Take note of a file from the remote in `epoch` whose writer's floor is `floor`,
        written at `created` (by the writer's clock)."""
        if epoch == self.epoch:
            self.received = self.received.merge(ReceivedState(floor - 1))
            return Verdict.CURRENT
        if epoch in self.retired:
            return Verdict.STALE
        if self.epoch is not None:
            self.retired.add(self.epoch)
        self.epoch, self.received, self.since = epoch, ReceivedState(floor - 1), created
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
