"""Settling: a file a mirror writes in place grows under its final name. A file that looks
cut short is judged only once it has stayed the same for `settle` seconds. Pure."""

from __future__ import annotations

import math
from collections.abc import Hashable


class Settling:
    """Remembers, per file name, its last seen mark (size, mtime) and since when."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._seen: dict[str, tuple[Hashable, float]] = {}

    def settled(self, name: str, mark: Hashable, now: float) -> bool:
        """True when `name` has shown `mark` for at least `settle` seconds up to `now`."""
        seen = self._seen.get(name)
        if seen is None or seen[0] != mark:
            self._seen[name] = (mark, now)
            return self.settle <= 0
        return now - seen[1] >= self.settle

    def marks(self, now: float) -> dict[str, Hashable]:
        """The mark of each file known to be settling and not due yet at `now`: while it
        keeps that mark, there is no need to read it again."""
        return {
            name: mark for name, (mark, since) in self._seen.items() if now - since < self.settle
        }

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)

    def next_check(self) -> float:
        """When the earliest waiting file may have settled (inf when none waits)."""
        return min((since + self.settle for _, since in self._seen.values()), default=math.inf)
