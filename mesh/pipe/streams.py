"""A body sent in fragments while it still arrives (from a caller, or from the upstream),
and how it is given up."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from .events import Progress

ABANDON = "abandon"  # the control op that gives a transfer up (the far side drops it)
# The control op that tells a body's length at its end, when its message went ahead of it
# without one (a request body of unknown size): args ``transfer`` and ``length``
ENDED = "ended"


@dataclass
class BodyStream:
    """A body of `total` bytes for message `message_id`, sent to `remote` in fragments
    as transfer `transfer`, while it may still be arriving (its total then maybe not
    known yet)."""

    remote: str
    message_id: str
    total: int | None  # None: a body that streams, its size known at its end
    transfer: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    spool: str | None = None  # its body file, once known
    queued: int = 0  # bytes of it stored as fragments so far
    opened: bool = False  # recorded as open: fragments stored, its message not yet
    ahead: bool = False  # its message went before it (the far side waits for the body)
    flowing: bool = False  # each piece goes once durable (`pipe.flowing`), not by blocks

    def progress(self, waiting: int) -> Progress:
        """How far it has got, with `waiting` bytes of its fragments not acknowledged."""
        done = max(self.queued - waiting, 0)
        return Progress("sending", self.remote, self.message_id, done, self.total)
