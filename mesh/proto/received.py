"""What a peer has received from one sender: a contiguous prefix `upto` plus ranges above it.

A grow-only state (a join-semilattice): `merge` is union, so it is commutative,
associative and idempotent, and an old copy of the state can never undo a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Range = tuple[int, int]  # inclusive: (first, last)


@dataclass(frozen=True, slots=True)
class ReceivedState:
    """Sequence numbers 1..upto, plus each ``first..last`` in `ranges`.

    Invariant: ranges are sorted, disjoint, not adjacent to each other, and start above
    ``upto + 1`` (a range touching the prefix is folded into it).
    """

    upto: int = 0
    ranges: tuple[Range, ...] = ()

    def __contains__(self, seq: int) -> bool:
        return seq <= self.upto or any(lo <= seq <= hi for lo, hi in self.ranges)

    def add(self, seq: int) -> ReceivedState:
        return self.merge(ReceivedState(0, ((seq, seq),)) if seq > 0 else ReceivedState())

    def merge(self, other: ReceivedState) -> ReceivedState:
        """The union of both states."""
        upto = max(self.upto, other.upto)
        merged: list[list[int]] = []
        for lo, hi in sorted(self.ranges + other.ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        ranges = []
        for lo, hi in merged:
            if lo <= upto + 1:
                upto = max(upto, hi)
            else:
                ranges.append((lo, hi))
        return ReceivedState(upto, tuple(ranges))

    def to_wire(self) -> list[Any]:
        return [self.upto, [list(r) for r in self.ranges]]

    @classmethod
    def from_wire(cls, value: Any, max_ranges: int) -> ReceivedState:
        """Parse and normalise; ValueError for anything that is not a valid state."""
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError("ack must be [upto, ranges]")
        upto, ranges = value
        if type(upto) is not int or upto < 0:
            raise ValueError("ack upto must be a whole number >= 0")
        if not isinstance(ranges, list) or len(ranges) > max_ranges:
            raise ValueError(f"ack ranges must be a list of at most {max_ranges}")
        parsed = []
        for r in ranges:
            if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)):
                raise ValueError("ack range must be [first, last]")
            lo, hi = r
            if not 1 <= lo <= hi:
                raise ValueError("ack range must have 1 <= first <= last")
            parsed.append((lo, hi))
        return ReceivedState(upto).merge(ReceivedState(0, tuple(parsed)))
