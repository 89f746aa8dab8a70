"""The lifecycle of a request at the caller's peer, as one table. Pure.

Rule 1: everything that decides which state a request may move to lives here: the states,
the table of allowed moves (`TRANSITIONS`), `advance`, and which states end a request
(`FINAL`). Storage and drivers ask these; none orders states itself.

Rule 2: a request only moves forward. What moves it comes from different places at
different times (an ack of its file, a note from the far peer, the response), so news
may come late or twice: news of a state the request has passed, or of any state once it
has ended, moves it nowhere.

Rule 3: a later step implies the steps before it. A response proves the request was
sent, delivered and forwarded even when the news of those steps has not come yet (it
may never come: the ack and the response can travel in one file). Moving to a state
records each state on the way.

The states, in order: ``stored`` (durable here, with an id), ``sent`` (its file is in
the pipe), ``delivered`` (the far peer acknowledged it), ``forwarded`` (the far peer
handed it to its upstream), ``responded`` (a response came back), then one of two ends:
``completed`` (the response is the answer) or ``failed`` (mesh answers with a problem of
its own instead, e.g. a response over this peer's body limit). A request may fail from
any state before its end.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class RequestState(StrEnum):
    STORED = "stored"
    SENT = "sent"
    DELIVERED = "delivered"
    FORWARDED = "forwarded"
    RESPONDED = "responded"
    COMPLETED = "completed"
    FAILED = "failed"


STORED = RequestState.STORED
SENT = RequestState.SENT
DELIVERED = RequestState.DELIVERED
FORWARDED = RequestState.FORWARDED
RESPONDED = RequestState.RESPONDED
COMPLETED = RequestState.COMPLETED
FAILED = RequestState.FAILED

TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    STORED: frozenset({SENT, FAILED}),
    SENT: frozenset({DELIVERED, FAILED}),
    DELIVERED: frozenset({FORWARDED, FAILED}),
    FORWARDED: frozenset({RESPONDED, FAILED}),
    RESPONDED: frozenset({COMPLETED, FAILED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
}
INITIAL = STORED
FINAL = frozenset(state for state, moves in TRANSITIONS.items() if not moves)


def advance(current: RequestState, target: RequestState) -> tuple[RequestState, ...]:
    """The states a request in `current` passes through to reach `target`, `target` last
    (Rule 3), by the shortest way the table allows; () when `target` cannot be reached
    from `current` (Rule 2: it is behind, or the request has ended)."""
    ways: dict[RequestState, tuple[RequestState, ...]] = {current: ()}
    frontier = [current]
    while frontier:
        following = []
        for state in frontier:
            for step in sorted(TRANSITIONS[state]):  # the same way every time
                if step not in ways:
                    ways[step] = (*ways[state], step)
                    following.append(step)
        frontier = following
    return ways.get(target, ()) if target != current else ()
