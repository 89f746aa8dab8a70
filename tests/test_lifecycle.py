"""The request lifecycle: its table (pure), and the request table that follows it on real
SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.proto.lifecycle import (
    COMPLETED,
    DELIVERED,
    FAILED,
    FINAL,
    FORWARDED,
    INITIAL,
    RESPONDED,
    SENT,
    STORED,
    TRANSITIONS,
    RequestState,
    advance,
)
from mesh.state.requests import Answer
from mesh.state.store import Store


def test_every_state_is_reachable_and_every_way_ends() -> None:
    reached, frontier = {INITIAL}, [INITIAL]
    while frontier:
        frontier = [n for s in frontier for n in TRANSITIONS[s] if n not in reached]
        reached.update(frontier)
    assert reached == set(RequestState)
    assert {COMPLETED, FAILED} == FINAL
    assert all(advance(INITIAL, end) for end in FINAL)


def test_a_later_step_implies_the_ones_before_it() -> None:
    assert advance(STORED, COMPLETED) == (SENT, DELIVERED, FORWARDED, RESPONDED, COMPLETED)
    assert advance(SENT, FORWARDED) == (DELIVERED, FORWARDED)
    assert advance(DELIVERED, FAILED) == (FAILED,)  # a failure implies nothing


@pytest.mark.parametrize(
    ("current", "target"),
    [(FORWARDED, SENT), (SENT, SENT), (COMPLETED, FAILED), (FAILED, COMPLETED), (COMPLETED, SENT)],
)
def test_late_or_repeated_news_and_news_after_the_end_move_nothing(
    current: RequestState, target: RequestState
) -> None:
    assert advance(current, target) == ()


def test_the_request_table_follows_the_lifecycle(tmp_path: Path) -> None:
    store = Store(tmp_path)
    requests = store.requests
    requests.add("a" * 32, "bravo", 1, "GET", "/", deadline=1e12, now=1.0)
    assert requests.advance("a" * 32, DELIVERED, at=2.0, now=2.0) == [(SENT, 2.0), (DELIVERED, 2.0)]
    assert requests.advance("a" * 32, SENT, at=3.0, now=3.0) == []  # the late ack of its file
    assert requests.in_flight() == {"delivered": 1}
    answer = Answer("a" * 32, 502, ((b"content-type", b"application/problem+json"),), b"{}")
    events = requests.answer(0, answer, at=4.0, end=FAILED)
    assert [state for state, _ in events] == [FORWARDED, RESPONDED, FAILED]
    record = requests.get("a" * 32)
    assert record is not None and record.done and record.status == 502
    assert [state for state, _ in record.events] == [STORED, SENT, DELIVERED, *_states(events)]
    assert requests.in_flight() == {}
    assert requests.answer(0, answer, at=5.0) == []  # ended: a second answer changes nothing
    store.close()


def _states(events: list[tuple[RequestState, float]]) -> list[RequestState]:
    return [state for state, _ in events]
