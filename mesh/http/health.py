"""Whether a peer can take requests, for a load balancer or a supervisor
(``GET /mesh/health``, open to all): it can when its outbox and its store can be written
and there is space where its state and its outbox are. The answer names what is wrong in words,
never a path, and each remote peer's liveness; nothing else."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    troubles: Iterable[str | None], places: Mapping[str, Path], alive: Mapping[str, bool]
) -> Health:
    """The `Health` of a peer with `troubles` (why its outbox or its store cannot be
    written, in words without a path; None: no trouble there), with `places` (``state``,
    ``outbox``: their folders) to check for space, and its remote peers' liveness."""
    reasons = [trouble for trouble in troubles if trouble is not None]
    for what, folder in places.items():
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            reasons.append(f"the {what} cannot be reached")
            continue
        if free < LOW_SPACE:
            reasons.append(f"little space left where the {what} is ({free >> 20} MiB)")
    return Health(tuple(reasons), dict(alive))
