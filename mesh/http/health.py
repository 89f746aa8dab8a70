"""Whether a peer can take requests, for a load balancer or a supervisor
(``GET /mesh/health``, open to all): it can when its outbox and its store can be written
and there is space where its state and its outbox are. The answer names what is wrong in words,
never a path, and each remote peer's liveness; nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOW_SPACE = 64 << 20  # bytes free below which a place counts as full


@dataclass(frozen=True)
class Health:
    """What is wrong (nothing: healthy), and whether each remote peer is heard."""

    reasons: tuple[str, ...]
    alive: Mapping[str, bool]

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_json(self) -> dict[str, Any]:
        peers = {remote: "alive" if alive else "silent" for remote, alive in self.alive.items()}
        return {"ok": self.ok, "reasons": list(self.reasons), "peers": peers}


def health(
    troubles: Iterable[str | None], free: Mapping[str, int | None], alive: Mapping[str, bool]
) -> Health:
    """The `Health` of a peer with `troubles` (why its outbox or its store cannot be
    written, in words without a path; None: no trouble there), the bytes `free` where
    its ``state`` and ``outbox`` are (as last measured: `pipe.space`; None where it
    could not be reached), and its remote peers' liveness."""
    reasons = [trouble for trouble in troubles if trouble is not None]
    for what, left in free.items():
        if left is None:
            reasons.append(f"the {what} cannot be reached")
        elif left < LOW_SPACE:
            reasons.append(f"little space left where the {what} is ({left >> 20} MiB)")
    return Health(tuple(reasons), dict(alive))
