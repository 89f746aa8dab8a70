"""The received-state is a join-semilattice: merge is commutative, associative, idempotent,
and nothing once received is ever forgotten."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proto.received import ReceivedState

seqs = st.sets(st.integers(min_value=1, max_value=80), max_size=40)


def state_of(numbers: set[int]) -> ReceivedState:
    state = ReceivedState()
    for n in numbers:
        state = state.add(n)
    return state


states = seqs.map(state_of)


def members(state: ReceivedState, top: int = 100) -> set[int]:
    return {n for n in range(1, top) if n in state}


@given(states, states)
def test_merge_is_commutative(a: ReceivedState, b: ReceivedState) -> None:
    assert a.merge(b) == b.merge(a)


@given(states, states, states)
def test_merge_is_associative(a: ReceivedState, b: ReceivedState, c: ReceivedState) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(states)
def test_merge_is_idempotent(a: ReceivedState) -> None:
    assert a.merge(a) == a


@given(seqs, seqs)
def test_merge_is_exactly_the_union_and_forgets_nothing(x: set[int], y: set[int]) -> None:
    merged = state_of(x).merge(state_of(y))
    assert members(merged) == x | y
    assert members(state_of(x)) <= members(merged)


@given(seqs)
def test_the_form_is_canonical(x: set[int]) -> None:
    state = state_of(x)
    assert state.upto == next(n for n in range(1, 200) if n not in x) - 1
    bounds = [b for r in state.ranges for b in r]
    assert bounds == sorted(bounds)
    assert all(
        hi + 1 < lo for (_, hi), (lo, _) in zip(state.ranges, state.ranges[1:], strict=False)
    )
    assert all(lo > state.upto + 1 for lo, _ in state.ranges)
    assert ReceivedState.from_wire(state.to_wire(), 100) == state


@given(seqs, st.integers(min_value=0, max_value=90))
def test_advancing_the_floor_keeps_everything(x: set[int], floor: int) -> None:
    state = state_of(x).merge(ReceivedState(floor))
    assert members(state) == x | set(range(1, floor + 1))


@pytest.mark.parametrize(
    "wire",
    [[-1, []], [1, [[3]]], [1, [[5, 4]]], [1, [[0, 2]]], "x", [1, [[1, 2]] * 5], [True, []]],
)
def test_from_wire_refuses_nonsense(wire: object) -> None:
    with pytest.raises(ValueError):
        ReceivedState.from_wire(wire, 4)
