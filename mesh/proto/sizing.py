"""How big a file the pipe carries whole, learned per link; pure.

Real pipes cut files over some size (about 1 GB is common) far more often than smaller
ones. The writer cannot see a file cut, but its reader names the frames it lost
(`LinkFields.missing`), and the writer knows which file carried them. Files are counted
by size class (powers of two of their payload bytes): how many were written, and how many
lost frames on the way. When the files from some class up lose frames clearly more often
than the smaller ones, the link's files are kept under that class's lower edge from then
on (15/16 of it, room for headers): if those still lose, the size comes down a class at
a time to what the pipe carries, never below `smallest`.

Rules:
- A file counts as cut at most once, whichever frames it lost and however often the
  reader names them.
- The line is drawn at a class with files cut, and only with evidence on both sides:
  `EVIDENCE` cut files in the classes from the line up, `BASELINE` files written below
  it, and a rate above at least twice the rate below plus `MARGIN` (a pipe that cuts
  files of every size alike teaches nothing: its small heartbeats are cut as often).
- The size only comes down; a peer starts again from `largest` when it restarts.
- Counts are halved per class once it reaches `WINDOW` files: old news weighs less.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

EVIDENCE = 3  # cut files above the line before the size comes down
BASELINE = 8  # files written below the line, to compare with
MARGIN = 0.1  # the rate above must exceed twice the rate below by this much
WINDOW = 64  # files counted per size class before its counts are halved
RECENT = 256  # files remembered, to tell which one carried the frames lost


@dataclass
class _Class:
    written: float = 0.0
    cut: float = 0.0


@dataclass
class _File:
    size: int
    seqs: frozenset[int]
    cut: bool = False


@dataclass
class FileSizes:
    """The payload bytes per file a link uses: `limit`, between `smallest` and `largest`."""

    largest: int
    smallest: int = 1 << 20
    limit: int = 0  # set from `largest`
    _classes: dict[int, _Class] = field(default_factory=dict)
    _recent: deque[_File] = field(default_factory=lambda: deque(maxlen=RECENT))
    _counted: bool = False  # counts changed since `_learn` last looked at them

    def __post_init__(self) -> None:
        self.smallest = min(self.smallest, self.largest)
        self.limit = self.largest

    def wrote(self, seqs: tuple[int, ...], size: int) -> None:
        """A file of `size` payload bytes carrying `seqs` went into the pipe."""
        counts = self._classes.setdefault(size.bit_length(), _Class())
        counts.written += 1
        self._counted = True
        if counts.written >= WINDOW:
            counts.written, counts.cut = counts.written / 2, counts.cut / 2
        if seqs:
            self._recent.append(_File(size, frozenset(seqs)))

    def lost(self, seqs: tuple[int, ...]) -> bool:
        """The reader lost `seqs` on the way (frames cut from a file): count the files
        that carried them (the newest carrying each) as cut. True when `limit` came down.
        Called for every file that arrives (most name nothing): the classes are looked at
        again only when a count changed since."""
        wanted = set(seqs)
        for file in reversed(self._recent):
            if not wanted:
                break
            if file.seqs & wanted:
                wanted -= file.seqs
                if not file.cut:
                    file.cut = self._counted = True
                    self._classes.setdefault(file.size.bit_length(), _Class()).cut += 1
        if not self._counted:
            return False
        self._counted = False
        return self._learn()

    def _learn(self) -> bool:
        """Lower `limit` under the smallest class whose files, with all those above it, are
        cut clearly more often than the files below it."""
        for line in sorted(size_class for size_class, c in self._classes.items() if c.cut):
            above = [c for size_class, c in self._classes.items() if size_class >= line]
            below = [c for size_class, c in self._classes.items() if size_class < line]
            cut_above, written_below = sum(c.cut for c in above), sum(c.written for c in below)
            if cut_above < EVIDENCE or written_below < BASELINE:
                continue
            rate_above = cut_above / max(sum(c.written for c in above), cut_above)
            rate_below = sum(c.cut for c in below) / written_below
            if rate_above > 2 * rate_below + MARGIN:
                edge = 1 << (line - 1)  # the smallest size in the class
                wanted = max(edge - edge // 16, self.smallest)
                if wanted < self.limit:
                    self.limit = wanted
                    return True
                return False
        return False
