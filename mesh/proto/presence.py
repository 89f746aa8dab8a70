"""Who is alive: a pure tracker of heard-from peers. Time is passed in; no clock, no I/O.

A peer is silent once nothing was heard from it for its `silent_after` (three of its
heartbeats). Events come back as values for the driver to log or publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FirstHeard:
    peer: str
    epoch: str


@dataclass(frozen=True)
class WentSilent:
    peer: str
    quiet_for: float


@dataclass(frozen=True)
class Back:
    peer: str
    quiet_for: float


@dataclass(frozen=True)
class NewEpoch:
    """The peer's state was created anew (lost, wiped or restored) since we last heard it."""

    peer: str
    old: str
    new: str


@dataclass(frozen=True)
class NotHeard:
    """Nothing at all was heard from the peer in its `silent_after` since we started."""

    peer: str
    waited: float


PresenceEvent = FirstHeard | WentSilent | Back | NewEpoch | NotHeard


@dataclass
class Contact:
    epoch: str
    last_heard: float
    silent: bool = False


class Presence:
    """Tracks the peers in `silent_after` (peer → seconds of quiet that mean silent)."""

    def __init__(self, silent_after: Mapping[str, float], started: float) -> None:
        self.silent_after = dict(silent_after)
        self.started = started
        self.contacts: dict[str, Contact] = {}
        self._not_heard_reported: set[str] = set()

    def heard(self, peer: str, epoch: str, now: float) -> list[PresenceEvent]:
        """Record that a valid file from `peer` arrived at `now`. Unknown peers are ignored."""
        if peer not in self.silent_after:
            return []
        contact = self.contacts.get(peer)
        if contact is None:
            self.contacts[peer] = Contact(epoch, now)
            return [FirstHeard(peer, epoch)]
        events: list[PresenceEvent] = []
        if contact.silent:
            events.append(Back(peer, now - contact.last_heard))
        if epoch != contact.epoch:
            events.append(NewEpoch(peer, contact.epoch, epoch))
        contact.epoch, contact.last_heard, contact.silent = (
            epoch,
            max(now, contact.last_heard),
            False,
        )
        return events

    def check(self, now: float) -> list[PresenceEvent]:
        """Peers that went silent, or were never heard, since the last check (once each)."""
        events: list[PresenceEvent] = []
        for peer, limit in self.silent_after.items():
            waited = now - self.started
            fresh = peer not in self.contacts and peer not in self._not_heard_reported
            if fresh and waited >= limit:
                self._not_heard_reported.add(peer)
                events.append(NotHeard(peer, waited))
        for peer, contact in self.contacts.items():
            quiet = now - contact.last_heard
            if not contact.silent and quiet >= self.silent_after[peer]:
                contact.silent = True
                events.append(WentSilent(peer, quiet))
        return events

    def next_check(self) -> float | None:
        """The earliest time a peer could go silent, or None if none could."""
        due = [
            c.last_heard + self.silent_after[p] for p, c in self.contacts.items() if not c.silent
        ]
        return min(due, default=None)

    def alive(self, peer: str) -> bool:
        contact = self.contacts.get(peer)
        return contact is not None and not contact.silent
