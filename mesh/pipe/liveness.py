"""Who is alive, for a running peer: the pure `proto.presence` tracker, told of every
valid file, checked on a timer, with what it finds logged."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import trio

from ..config.units import format_duration
from ..proto import presence


class Liveness:
    """The remote peers of peer `name`, each silent after `silent_after[peer]` seconds."""

    def __init__(self, name: str, silent_after: Mapping[str, float]) -> None:
        self.name = name
        self.log = logging.getLogger(f"mesh.{name}")
        self.presence = presence.Presence(silent_after, trio.current_time())
        self.check_every = min(silent_after.values(), default=1.0) / 6

    def heard(self, peer: str, epoch: str) -> None:
        """A valid file came from `peer`, in `epoch`."""
        self._record(self.presence.heard(peer, epoch, trio.current_time()))

    async def run(self) -> None:
        """Notice peers going silent, until cancelled."""
        while True:
            await trio.sleep(self.check_every)
            self._record(self.presence.check(trio.current_time()))

    def status(self, remote: str) -> dict[str, Any]:
        """Whether `remote` is alive, its epoch, and how long since it was last heard."""
        contact = self.presence.contacts.get(remote)
        return {
            "alive": self.presence.alive(remote),
            "epoch": contact.epoch if contact else None,
            "heard_age": trio.current_time() - contact.last_heard if contact else None,
        }

    def _record(self, events: list[presence.PresenceEvent]) -> None:
        for event in events:
            match event:
                case presence.FirstHeard(peer, epoch):
                    self.log.info("%s: first heard from %s (epoch %s)", self.name, peer, epoch)
                case presence.WentSilent(peer, quiet):
                    self.log.warning(
                        "%s: %s went silent (nothing for %s)",
                        self.name,
                        peer,
                        format_duration(quiet),
                    )
                case presence.Back(peer, quiet):
                    self.log.info(
                        "%s: %s is back after %s", self.name, peer, format_duration(quiet)
                    )
                case presence.NewEpoch(peer, old, new):
                    self.log.warning(
                        "%s: %s has a new epoch %s (was %s): its state was created anew",
                        self.name,
                        peer,
                        new,
                        old,
                    )
                case presence.NotHeard(peer, waited):
                    self.log.warning(
                        "%s: nothing heard from %s yet (%s since start)",
                        self.name,
                        peer,
                        format_duration(waited),
                    )
