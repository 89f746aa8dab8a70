"""The file size a link learns from the frames its reader loses (`mesh.proto.sizing`),
alone and inside the protocol."""

from __future__ import annotations

import random
from itertools import count

from hypothesis import given
from hypothesis import strategies as st

from mesh.proto.sizing import FileSizes

MiB = 1 << 20
HEARTBEAT = 300  # payload bytes of a small file


class Pipe:
    """Files written through a `FileSizes`, cut at random by a pipe that cuts files of
    `cut_above` bytes or more with probability `p_big`, others with `p_small`."""

    def __init__(self, sizes: FileSizes, cut_above: int, p_big: float, p_small: float) -> None:
        self.sizes, self.cut_above, self.p_big, self.p_small = sizes, cut_above, p_big, p_small
        self.rng = random.Random(7)
        self.seqs = count(1)

    def file(self, size: int) -> None:
        seqs = tuple(next(self.seqs) for _ in range(max(size // (4 * MiB), 1)))
        self.sizes.wrote(seqs, size)
        p = self.p_big if size >= self.cut_above else self.p_small
        if self.rng.random() < p:
            self.sizes.lost(seqs[-1:])  # the last frame is cut off

    def traffic(self, rounds: int) -> None:
        """Per round, a few small files and one as big as the link allows."""
        for _ in range(rounds):
            for _ in range(4):
                self.file(HEARTBEAT)
            self.file(self.sizes.limit)


def test_a_pipe_cutting_big_files_teaches_a_smaller_size() -> None:
    sizes = FileSizes(largest=256 * MiB)
    pipe = Pipe(sizes, cut_above=64 * MiB, p_big=0.9, p_small=0.0)
    pipe.traffic(40)
    assert sizes.limit == 60 * MiB  # the class under 64 MiB, less room for headers: whole


def test_a_pipe_cutting_every_size_alike_teaches_nothing() -> None:
    sizes = FileSizes(largest=256 * MiB)
    pipe = Pipe(sizes, cut_above=0, p_big=0.2, p_small=0.2)
    pipe.traffic(200)
    assert sizes.limit == 256 * MiB


def test_no_size_is_learned_without_small_files_to_compare_with() -> None:
    sizes = FileSizes(largest=256 * MiB)
    seqs = count(1)
    for _ in range(20):  # big files only, all cut: maybe the pipe cuts everything
        file = (next(seqs),)
        sizes.wrote(file, 200 * MiB)
        sizes.lost(file)
    assert sizes.limit == 256 * MiB


def test_a_file_counts_as_cut_once_however_often_its_frames_are_named() -> None:
    sizes = FileSizes(largest=256 * MiB)
    for n in range(10):
        sizes.wrote((1000 + n,), HEARTBEAT)
    sizes.wrote((1, 2, 3), 200 * MiB)
    for _ in range(5):
        assert not sizes.lost((1, 2, 3))
    assert sizes.limit == 256 * MiB  # one cut file is no evidence


def test_frames_of_files_never_written_or_forgotten_count_for_nothing() -> None:
    sizes = FileSizes(largest=256 * MiB)
    assert not sizes.lost((5, 6, 7))
    assert sizes.limit == 256 * MiB


def test_the_size_never_goes_below_the_smallest() -> None:
    sizes = FileSizes(largest=256 * MiB, smallest=4 * MiB)
    pipe = Pipe(sizes, cut_above=HEARTBEAT + 1, p_big=1.0, p_small=0.0)
    pipe.traffic(100)
    assert sizes.limit == 4 * MiB


@given(
    st.lists(
        st.tuples(st.integers(0, 1 << 30), st.booleans()),
        max_size=300,
    )
)
def test_the_size_stays_within_its_bounds_and_only_comes_down(
    files: list[tuple[int, bool]],
) -> None:
    sizes = FileSizes(largest=256 * MiB)
    seqs = count(1)
    last = sizes.limit
    for size, cut in files:
        file = (next(seqs),)
        sizes.wrote(file, size)
        if cut:
            sizes.lost(file)
        assert MiB <= sizes.limit <= last
        last = sizes.limit


def test_cuts_reported_after_all_the_writes_still_teach() -> None:
    """The classes are looked at again whenever a count changed: cuts that come in a row,
    with no file written between them, count as much as cuts between writes."""
    sizes = FileSizes(largest=256 * MiB)
    for n in range(10):
        sizes.wrote((1000 + n,), HEARTBEAT)
    for n in range(3):
        sizes.wrote((n,), 200 * MiB)
    assert not sizes.lost((0,)) and not sizes.lost((1,))
    assert not sizes.lost(())  # nothing new: nothing to learn
    assert sizes.lost((2,))
    assert sizes.limit == 120 * MiB
