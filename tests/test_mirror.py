"""`mesh mirror`: the fault plan alone, the mirror on real folders, and the command itself."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from mesh.cli.commands import main
from mesh.cli.mirror import (
    AGAIN_PASSES,
    HOLD,
    PART,
    PAUSE,
    PIECES,
    Faults,
    Mirror,
    Plan,
    parse_delay,
    parse_interval,
    parse_probability,
    plan,
    run_mirror,
)
from mesh.wire.names import FileKind, FileName

MESH = Path(sys.executable).with_name("mesh")
PROBABILITIES = ("truncate", "corrupt", "drop", "duplicate")


def fill(
    folder: Path, count: int, seed: int = 1, sizes: tuple[int, int] = (0, 5000)
) -> dict[str, bytes]:
    """`count` files with mesh names, oldest first, of random sizes and bytes, in `folder`."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for stamp in range(1, count + 1):
        name = str(
            FileName(stamp, "alpha", "bravo", f"{rng.getrandbits(32):08x}", FileKind.MESSAGES)
        )
        files[name] = rng.randbytes(rng.randint(*sizes))
        (folder / name).write_bytes(files[name])
    return files


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def only(fault: str, chance: float) -> Faults:
    """Faults with `fault` at probability `chance` and no other."""
    p = {name: chance if name == fault else 0.0 for name in PROBABILITIES}
    return Faults(
        truncate=p["truncate"], corrupt=p["corrupt"], drop=p["drop"], duplicate=p["duplicate"]
    )


async def until(condition: Callable[[], bool], bound: float = 5) -> None:
    """Wait until `condition()` holds, checking every few ms, failing after `bound` seconds."""
    with trio.fail_after(bound):
        while True:
            if condition():
                return
            await trio.sleep(0.002)


async def mirror_once(src: Path, dst: Path, faults: Faults) -> list[str]:
    """The lines of one `--once` run (the last is the summary)."""
    lines: list[str] = []
    with trio.fail_after(10):
        await run_mirror(src, dst, faults, 0.01, True, lines.append)
    return lines


# The plan, without files.


@pytest.mark.parametrize("fault", PROBABILITIES)
def test_a_certain_fault_always_happens_and_an_impossible_one_never(fault: str) -> None:
    for seed in range(200):
        size = random.Random(seed).randint(1, 1000)
        fate = plan(random.Random(seed), size, only(fault, 1.0))
        assert fate.drop == (fault == "drop")
        assert (fate.truncate_to is not None) == (fault == "truncate")
        assert bool(fate.corruptions) == (fault == "corrupt")
        assert fate.duplicate == (fault == "duplicate")
        assert plan(random.Random(seed), size, only(fault, 0.0)) == Plan()


def test_truncate_above_cuts_only_files_of_that_size_or_more() -> None:
    faults = Faults(truncate_above=(1000, 0.9))
    rng = random.Random(3)
    small = [plan(rng, 999, faults).truncate_to for _ in range(200)]
    big = [plan(rng, 1000, faults).truncate_to for _ in range(200)]
    assert small == [None] * 200
    cut = [n for n in big if n is not None]
    assert 150 < len(cut) < 200 and all(0 <= n < 1000 for n in cut)
    with pytest.raises(ValueError, match="truncate-above"):
        Faults(truncate_above=(1000, 1.5))


def test_the_same_seed_gives_the_same_plans_and_another_seed_others() -> None:
    faults = Faults(truncate=0.3, corrupt=0.3, drop=0.1, duplicate=0.2, slow_write=True)

    def plans(seed: int) -> list[Plan]:
        rng = random.Random(seed)
        return [plan(rng, size, faults) for size in range(100)]

    assert plans(7) == plans(7)
    assert plans(7) != plans(8)


def test_truncation_leaves_a_shorter_prefix_and_corruption_changes_bytes() -> None:
    rng = random.Random(0)
    for _ in range(200):
        data = rng.randbytes(rng.randint(1, 300))
        cut = plan(rng, len(data), Faults(truncate=1))
        assert cut.truncate_to is not None and cut.truncate_to < len(data)
        assert cut.apply(data) == data[: cut.truncate_to]
        flipped = plan(rng, len(data), Faults(corrupt=1))
        offsets = [offset for offset, _ in flipped.corruptions]
        assert 1 <= len(offsets) <= 4 and len(set(offsets)) == len(offsets)
        assert all(0 < xor < 256 for _, xor in flipped.corruptions)
        damaged = flipped.apply(data)
        assert len(damaged) == len(data)
        assert sum(a != b for a, b in zip(damaged, data, strict=True)) == len(offsets)


def test_a_dropped_file_gets_no_other_fault_and_an_empty_one_cannot_be_damaged() -> None:
    everything = Faults(truncate=1, corrupt=1, drop=1, duplicate=1, delay=(1, 2), slow_write=True)
    assert plan(random.Random(0), 100, everything) == Plan(drop=True)
    empty = plan(random.Random(0), 0, Faults(truncate=1, corrupt=1))
    assert empty.truncate_to is None and empty.corruptions == ()
    assert empty.apply(b"") == b""


def test_turning_on_one_fault_does_not_change_who_meets_another() -> None:
    alone, together = Faults(drop=0.5), Faults(drop=0.5, corrupt=0.5, slow_write=True)
    for seed in range(100):
        assert (
            plan(random.Random(seed), 50, alone).drop
            == plan(random.Random(seed), 50, together).drop
        )


def test_delays_second_copies_and_slow_pieces_stay_in_their_ranges() -> None:
    rng = random.Random(3)
    for _ in range(200):
        size = rng.randint(0, 2000)
        by_passes = plan(rng, size, Faults(duplicate=1, slow_write=True))
        assert by_passes.again_passes is not None and by_passes.again_delay is None
        assert AGAIN_PASSES[0] <= by_passes.again_passes <= AGAIN_PASSES[1]
        ends = [end for end, _ in by_passes.pieces]
        assert ends == sorted(set(ends)) and all(0 < end < size for end in ends)
        assert len(ends) <= PIECES[1] - 1 and (size < PIECES[0] or len(ends) >= PIECES[0] - 1)
        assert all(PAUSE[0] <= pause <= PAUSE[1] for _, pause in by_passes.pieces)
        timed = plan(rng, size, Faults(duplicate=1, delay=(0.5, 2)))
        assert timed.again_passes is None and timed.again_delay is not None
        assert timed.delay is not None and 0.5 <= timed.delay <= 2 and 0.5 <= timed.again_delay <= 2


def test_option_values_are_parsed_or_refused_with_a_reason() -> None:
    assert parse_probability("0.25") == 0.25 and parse_probability("1") == 1
    assert parse_delay("50ms..2s") == (0.05, 2.0) and parse_delay("1s") == (1.0, 1.0)
    assert parse_interval("50ms") == 0.05
    for bad in ("2", "-0.1", "nan", "lots"):
        with pytest.raises(ValueError, match="not a probability"):
            parse_probability(bad)
    with pytest.raises(ValueError, match="MIN more than MAX"):
        parse_delay("5s..1s")
    with pytest.raises(ValueError, match=r'"soon" is not a duration.*MIN\.\.MAX'):
        parse_delay("soon..2s")
    with pytest.raises(ValueError, match="more than 0"):
        parse_interval("0ms")
    with pytest.raises(ValueError, match=r"--drop 1\.5 is not a probability"):
        Faults(drop=1.5)
    with pytest.raises(ValueError, match="--delay"):
        Faults(delay=(2, 1))


# The mirror on real folders.


async def test_once_without_faults_moves_every_file_exactly(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "new" / "dst"  # DST is made when missing
    files = fill(src, 20)
    (src / ".being-written").write_bytes(b"half")
    (src / "a-folder").mkdir()
    (src / "a-link").symlink_to(src / ".being-written")
    lines = await mirror_once(src, dst, Faults())
    assert contents(dst) == files
    assert sorted(p.name for p in dst.iterdir()) == sorted(files)  # no hold, no temporaries
    assert sorted(p.name for p in src.iterdir()) == [".being-written", "a-folder", "a-link"]
    assert (src / ".being-written").read_bytes() == b"half"
    assert lines == [
        "mirrored 20 files: 0 truncated, 0 corrupted, 0 dropped, 0 duplicated, 0 delayed"
    ]


async def test_a_file_already_in_dst_is_replaced(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 1)
    dst.mkdir()
    (name,) = files
    (dst / name).write_bytes(b"an older copy, longer than the new one" * 1000)
    await mirror_once(src, dst, Faults())
    assert contents(dst) == files


async def test_truncate_delivers_a_shorter_prefix(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 10, sizes=(1, 5000))
    lines = await mirror_once(src, dst, Faults(truncate=1))
    got = contents(dst)
    assert got.keys() == files.keys() and not any(src.iterdir())
    for name, data in files.items():
        assert len(got[name]) < len(data) and data.startswith(got[name])
        assert f"truncate {name} {len(data)} -> {len(got[name])} bytes" in lines
    assert lines[-1].startswith("mirrored 10 files: 10 truncated, 0 corrupted")


async def test_corrupt_delivers_the_same_length_with_other_bytes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 10, sizes=(1, 5000))
    lines = await mirror_once(src, dst, Faults(corrupt=1))
    got = contents(dst)
    for name, data in files.items():
        assert len(got[name]) == len(data) and got[name] != data
    assert sum(line.startswith("corrupt ") for line in lines) == 10
    assert ", 10 corrupted," in lines[-1]


async def test_drop_leaves_the_file_nowhere(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 5)
    lines = await mirror_once(src, dst, Faults(drop=1))
    assert not any(src.iterdir()) and not any(dst.iterdir())
    assert lines[:-1] == [f"drop {name}" for name in files]
    assert ", 5 dropped," in lines[-1]


async def test_duplicate_delivers_the_same_file_again_passes_later(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    ((name, data),) = fill(src, 1).items()
    lines: list[str] = []
    mirror = Mirror(src, dst, Faults(duplicate=1), lines.append)
    with trio.fail_after(5):
        await mirror.start()
        await mirror.sweep()
        assert (dst / name).read_bytes() == data and lines == []
        (dst / name).unlink()  # the receiver took the first copy
        for _ in range(AGAIN_PASSES[1]):
            await mirror.sweep()
    assert (dst / name).read_bytes() == data and not (src / name).exists()
    assert lines == [f"duplicate {name}"] and mirror.stats.duplicated == 1
    assert not mirror.pending


async def test_once_waits_for_second_copies_timed_by_delay(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 3)
    lines = await mirror_once(src, dst, Faults(duplicate=1, delay=(0.01, 0.03)))
    assert contents(dst) == files
    assert sorted(line for line in lines if line.startswith("duplicate ")) == [
        f"duplicate {name}" for name in files
    ]
    assert lines[-1].endswith("3 duplicated, 3 delayed")


async def test_files_go_oldest_first_unless_reordered(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    # bravo's name sorts after alpha's as text but was made first: mesh names go by time
    early = FileName(0, "bravo", "alpha", "00000000", FileKind.MESSAGES)
    (tmp_path / "src").mkdir()
    (src / str(early)).write_bytes(b"early")
    files = [str(early), *fill(src, 30, sizes=(1, 100))]

    def corrupted(lines: list[str]) -> list[str]:
        return [line.split()[1] for line in lines if line.startswith("corrupt ")]

    assert corrupted(await mirror_once(src, dst, Faults(corrupt=1))) == files
    for seed in range(5):  # a shuffle of 31 files is sorted once in 31! seeds
        for name in files:
            os.replace(dst / name, src / name)
        order = corrupted(await mirror_once(src, dst, Faults(corrupt=1, reorder=True, seed=seed)))
        assert sorted(order) == sorted(files)
        if order != files:
            return
    raise AssertionError("--reorder never changed the order")


@pytest.mark.parametrize("truncate", [0.0, 1.0])
async def test_slow_write_shows_the_file_growing_under_its_final_name(
    tmp_path: Path, truncate: float
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    ((name, data),) = fill(src, 1, sizes=(64 * 1024, 64 * 1024)).items()
    sizes: list[int] = []
    names: set[str] = set()

    async def watch() -> None:
        while True:
            if dst.is_dir():
                names.update(p.name for p in dst.iterdir())
            if (dst / name).exists():
                sizes.append((dst / name).stat().st_size)
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        lines = await mirror_once(src, dst, Faults(slow_write=True, truncate=truncate))
        nursery.cancel_scope.cancel()
    final = (dst / name).read_bytes()
    assert data.startswith(final) and (len(final) == len(data)) == (truncate == 0)
    assert any(size < len(final) for size in sizes), "never saw the file incomplete"
    assert names == {name} and not (src / name).exists()
    assert len(lines) == 1 + int(truncate)


async def test_delayed_files_are_held_in_dst_then_delivered(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 5)
    lines = await mirror_once(src, dst, Faults(delay=(0.01, 0.05)))
    assert contents(dst) == files and not (dst / HOLD).exists()
    assert [line.split()[:2] for line in lines[:-1]] == [["delay", name] for name in files]
    assert lines[-1].endswith("0 duplicated, 5 delayed")


async def test_a_stop_delivers_what_is_held_at_once_without_faults(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 5, sizes=(1, 5000))
    lines: list[str] = []
    faults = Faults(delay=(60, 60), truncate=1, corrupt=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_mirror, src, dst, faults, 0.01, False, lines.append)
            await until(lambda: len(lines) == 5)
            assert contents(dst / HOLD) == files and not any(src.iterdir())
            nursery.cancel_scope.cancel()
    assert contents(dst) == files and not (dst / HOLD).exists()
    assert lines[:-1] == [f"delay {name} 1m" for name in files]
    assert (
        lines[-1]
        == "mirrored 5 files: 0 truncated, 0 corrupted, 0 dropped, 0 duplicated, 5 delayed"
    )


async def test_a_stop_during_a_slow_write_finishes_that_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    ((name, data),) = fill(src, 1, sizes=(64 * 1024, 64 * 1024)).items()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_mirror, src, dst, Faults(slow_write=True), 0.01, False, print)
            await until(lambda: (dst / name).exists())
            nursery.cancel_scope.cancel()
    assert (dst / name).read_bytes() == data and not (src / name).exists()


async def test_files_held_by_a_crashed_mirror_are_delivered_at_the_next_start(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 3)
    crashed = Mirror(src, dst, Faults(delay=(60, 60)), print)
    with trio.fail_after(5):
        await crashed.start()
        await crashed.sweep()
        assert contents(dst / HOLD) == files and contents(dst) == {}
        (dst / f".half-written{PART}").write_bytes(b"x")  # it died writing, too
        await Mirror(src, dst, Faults(), print).start()
    assert contents(dst) == files and contents(dst / HOLD) == {}
    assert [p.name for p in dst.iterdir() if p.name.startswith(".")] == [HOLD]


# The command.


class Output:
    """Lines a process writes to one of its pipes, as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.lines = stream, list[str]()

    async def pump(self) -> None:
        pending = b""
        async for chunk in self.stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
        if pending:
            self.lines.append(pending.decode())


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_mesh_mirror_stops_cleanly_on_a_signal(
    tmp_path: Path, signum: int, code: int
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = fill(src, 3)
    command = [str(MESH), "mirror", str(src), str(dst), "--delay", "1m", "--interval", "10ms"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = Output(process.stdout), Output(process.stderr)
    try:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(out.pump)
                nursery.start_soon(err.pump)
                await until(lambda: len(out.lines) == 3, bound=15)
                process.send_signal(signum)
                assert await process.wait() == code
    finally:
        if process.returncode is None:
            process.kill()
    assert out.lines == [
        *(f"delay {name} 1m" for name in files),
        "mirrored 3 files: 0 truncated, 0 corrupted, 0 dropped, 0 duplicated, 3 delayed",
    ]
    assert "Traceback" not in "\n".join(err.lines)
    assert contents(dst) == files and not (dst / HOLD).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--drop", "2"], "Invalid value for '--drop': \"2\" is not a probability"),
        (["--corrupt", "often"], "Invalid value for '--corrupt': \"often\" is not a probability"),
        (["--delay", "5s..1s"], "Invalid value for '--delay': \"5s..1s\" has MIN more than MAX"),
        (["--delay", "garbage"], "Invalid value for '--delay': \"garbage\" is not a duration"),
        (["--interval", "0"], "Invalid value for '--interval': \"0\" is too short"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["mirror", str(tmp_path), str(tmp_path / "dst"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_bad_folders_are_usage_errors(tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["mirror", str(tmp_path / "nope"), str(tmp_path)])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    same = CliRunner().invoke(main, ["mirror", str(tmp_path), str(tmp_path / ".")])
    assert same.exit_code == 2 and "SRC and DST are the same folder" in same.output
