"""How much of a body that streams is here from its start, as its pieces come in any
order, some twice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.pipe.receiving import Prefix


def covered(pieces: list[tuple[int, int]]) -> int:
    """The length from 0 that the pieces cover without a gap (by brute force)."""
    here = set()
    for offset, length in pieces:
        here.update(range(offset, offset + length))
    end = 0
    while end in here:
        end += 1
    return end


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30),
    data=st.data(),
)
def test_the_prefix_is_what_the_pieces_cover_from_the_start(
    sizes: list[int], data: st.DataObject
) -> None:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = list(zip(starts, sizes, strict=True))
    order = data.draw(st.permutations(pieces + data.draw(st.lists(st.sampled_from(pieces)))))
    prefix, seen = Prefix(), []
    for offset, length in order:
        prefix.add(offset, length)
        seen.append((offset, length))
        assert prefix.length == covered(seen)
    assert prefix.length == sum(sizes) and not prefix.abandoned


def test_pieces_past_a_gap_wait_for_it() -> None:
    prefix = Prefix()
    prefix.add(10, 5)
    prefix.add(20, 5)
    assert prefix.length == 0
    prefix.add(0, 10)
    assert prefix.length == 15
    prefix.add(15, 5)
    assert prefix.length == 25
