"""What the links tell the layers above as it happens: per-message status events, the
progress of bodies crossing in fragments, and the hub that fans them out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


@dataclass(frozen=True)
class MessageId:
    remote: str
    seq: int

    def __str__(self) -> str:
        return f"{self.remote}#{self.seq}"


@dataclass(frozen=True)
class LinkEvent:
    """A status change of one message: stored, sent, resent, acked or delivered."""

    state: str
    peer: str  # the peer that saw it
    remote: str
    seq: int
    at: float  # wall clock

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "peer": self.peer,
            "remote": self.remote,
            "seq": self.seq,
            "at": self.at,
        }


@dataclass(frozen=True)
class Progress:
    """How far a body that crosses in fragments has got: bytes acknowledged by `remote`
    (sending) or arrived from it (receiving), of `total`."""

    direction: str  # "sending" or "receiving"
    remote: str
    message_id: str
    done: int
    total: int | None  # None: a body that streams, its size not known yet

    def as_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "peer": self.remote,
            "id": self.message_id,
            "done": self.done,
            "total": self.total,
        }


class EventHub(Generic[T]):
    """Fan-out of events to subscribers; a subscriber too slow to keep up loses events
    (counted), never slows the publisher."""

    def __init__(self, buffer: int = 1024) -> None:
        self._buffer = buffer
        self._subscribers: list[trio.MemorySendChannel[T]] = []
        self.dropped = 0

    def subscribe(self) -> trio.MemoryReceiveChannel[T]:
        send, receive = trio.open_memory_channel[T](self._buffer)
        self._subscribers.append(send)
        return receive

    def publish(self, event: T) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)


class LinkEvents(EventHub[LinkEvent]):
    """The status events of the messages of peer `peer`."""

    def __init__(self, peer: str, buffer: int = 1024) -> None:
        super().__init__(buffer)
        self.peer = peer

    def tell(self, state: str, remote: str, seqs: Iterable[int], at: float) -> None:
        """Each of `seqs` (messages to or from `remote`) reached `state` at `at`."""
        for seq in seqs:
            self.publish(LinkEvent(state, self.peer, remote, seq, at))
