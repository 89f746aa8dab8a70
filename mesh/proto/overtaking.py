"""Which of our messages were overtaken, pure: TCP's fast retransmit, over files.

Our files that carry messages are numbered as they are written. When a message first
written in file F is acknowledged (written once only: which copy an ack answers is known
only then, Karn's rule), the files up to F - `depth` came through, if the pipe keeps the
order of files to within `depth` of them. A message whose last copy went in one of those
and is still unacknowledged came cut, and the reader's ask for it was lost: it is due
again at once.

The depth starts at `DEPTH` files. A pipe that reorders deeper costs needless copies;
each one noticed (its first copy acknowledged sooner after the new one was written than
half a round trip: the first came after all) doubles the depth, up to `MAX_DEPTH`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection

DEPTH = 3  # files of ours acknowledged after a message's file: it was lost
MAX_DEPTH = 64

LastFile = Callable[[int], "int | None"]  # a pending message's last file; None once acked


class Overtaking:
    """The files of one link's messages, and how deep its pipe reorders them."""

    def __init__(self) -> None:
        self.depth = DEPTH
        self._files = 0  # files with messages written so far, numbered from 1
        self._acked_file = 0  # the newest file one of whose first copies was acknowledged
        self._carried: list[tuple[int, int]] = []  # heap of (file, seq), one per write

    def wrote(self, seqs: Collection[int]) -> int:
        """A file carrying `seqs` (not empty) was written: its number."""
        self._files += 1
        for seq in seqs:
            heapq.heappush(self._carried, (self._files, seq))
        return self._files

    def acked_first_copy(self, file: int) -> None:
        """A message written once, in `file`, was acknowledged."""
        self._acked_file = max(self._acked_file, file)

    def needless_copy(self) -> None:
        """A copy made for a message found overtaken was not needed: reorder deeper."""
        self.depth = min(2 * self.depth, MAX_DEPTH)

    def overtaken(self, last_file: LastFile) -> list[int]:
        """Messages whose last copy went `depth` or more files before the newest file
        acknowledged. Each copy is found once."""
        found = []
        while self._carried and self._carried[0][0] <= self._acked_file - self.depth:
            file, seq = heapq.heappop(self._carried)
            if last_file(seq) == file:
                found.append(seq)
        return found

    def compact(self, last_file: LastFile, pending: int) -> None:
        """Drop the entries of copies no longer last (resent since, or acknowledged) once
        they outnumber the `pending` messages: while nothing written once is acknowledged
        (the reader away for days, resends on their timers), nothing else drops them."""
        if len(self._carried) > 2 * pending + 64:
            self._carried = [(f, seq) for f, seq in self._carried if last_file(seq) == f]
            heapq.heapify(self._carried)
