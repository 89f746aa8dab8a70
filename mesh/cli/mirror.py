"""`mesh mirror`: move files from one folder to another as a mirroring service would, with faults.

A rehearsal of a real pipe (an SFTP sync, a diode's return path), and the pipe of end-to-end
tests. Every regular file in SRC whose name does not start with ``.`` (a file still being
written) is taken, oldest first, and delivered to DST under the same name: written under a
``.`` name, fsync'd, renamed into place (replacing a file of that name), and only then deleted
from SRC, so a crash of the mirror may deliver a file twice but never loses one.

Faults are decided per file by `plan`, from a random stream seeded with ``--seed``: with the
same seed and options the n-th file taken meets the same fate (which files are in SRC at each
pass depends on the writers' timing, of course).

Delayed files are held in ``DST/.mirror-hold/``, written and fsync'd there before they leave
SRC, not in memory, so a crash loses none: the next start delivers what it finds there at
once. On a stop (Ctrl-C, SIGTERM) everything held is delivered at once and without faults.
Second copies of duplicated files wait in memory, and a stop forgets them: the first copy was
delivered. ``--once`` takes what is in SRC once, then waits out its delays and second copies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from ..config.units import format_duration, parse_duration, parse_size
from ..pipe.folder import fsync_folder, replace_atomically, write_all
from ..wire.names import parse_name

MIRRORED_MODE = 0o644  # of the files a mirror delivers (as cp would)

__all__ = [
    "DELAY",
    "INTERVAL",
    "PROBABILITY",
    "SIZE",
    "Faults",
    "Mirror",
    "MirrorStats",
    "Plan",
    "parse_delay",
    "parse_interval",
    "parse_probability",
    "plan",
    "prepare_folders",
    "run_mirror",
    "run_until_signal",
]

HOLD = ".mirror-hold"  # in DST: delayed files wait here
PART = ".mirror.part"  # suffix of the mirror's own temporary files
CORRUPT_BYTES = (1, 4)  # a corruption flips this many bytes
AGAIN_PASSES = (1, 5)  # a second copy comes this many passes after the first (without --delay)
PIECES = (4, 16)  # a slow write comes in this many pieces
PAUSE = (0.005, 0.05)  # seconds between two pieces

log = logging.getLogger("mesh.mirror")
Out = Callable[[str], None]


def parse_probability(text: str) -> float:
    """A probability from 0 to 1 (``"0.05"``); ValueError with a hint otherwise (nan too)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise ValueError(f'"{text}" is not a probability (use a number from 0 to 1, e.g. 0.05)')
    return value


def parse_delay(text: str) -> tuple[float, float]:
    """``"50ms..2s"`` as ``(0.05, 2.0)``; one duration (``"1s"``) is a fixed delay.

    ValueError when a bound is not a duration or MIN is more than MAX.
    """
    low, dots, high = text.partition("..")
    try:
        bounds = parse_duration(low), parse_duration(high if dots else low)
    except ValueError as exc:
        raise ValueError(f"{exc}; write a delay as MIN..MAX, e.g. 50ms..2s") from None
    if bounds[0] > bounds[1]:
        raise ValueError(f'"{text}" has MIN more than MAX (write MIN..MAX, e.g. 50ms..2s)')
    return bounds


def parse_interval(text: str) -> float:
    """A duration of more than 0 (``"50ms"``); ValueError otherwise."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f'"{text}" is too short (an interval must be more than 0)')
    return seconds


class _Parsed(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.5 only
    """A click option type from one of the parsers above: their ValueError is the usage error."""

    def __init__(self, name: str, parse: Callable[[str], object]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


PROBABILITY = _Parsed("probability", parse_probability)
SIZE = _Parsed("size", parse_size)
DELAY = _Parsed("delay", parse_delay)
INTERVAL = _Parsed("interval", parse_interval)


@dataclass(frozen=True)
class Faults:
    """What the mirror does wrong on purpose: probabilities per file, from 0 to 1, and `delay`
    as (MIN, MAX) seconds, None for no holding. ValueError on a value out of range."""

    truncate: float = 0.0
    corrupt: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    delay: tuple[float, float] | None = None
    slow_write: bool = False
    seed: int = 0
    truncate_above: tuple[int, float] | None = None  # (SIZE, P): as a pipe cutting big files

    def __post_init__(self) -> None:
        for option in ("truncate", "corrupt", "drop", "duplicate"):
            value = getattr(self, option)
            if not 0 <= value <= 1:
                raise ValueError(f"--{option} {value} is not a probability (use 0 to 1)")
        if self.truncate_above is not None:
            size, p = self.truncate_above
            if size < 0 or not 0 <= p <= 1:
                raise ValueError(f"--truncate-above {size} {p}: use a size and 0 to 1")
        if self.delay is not None and not 0 <= self.delay[0] <= self.delay[1] < math.inf:
            raise ValueError(f"--delay {self.delay} is not a range MIN..MAX with 0 <= MIN <= MAX")


@dataclass(frozen=True)
class Plan:
    """The fate of one file.

    Truncation comes first; `corruptions` are (offset, xor) pairs within what is left. A second
    copy comes `again_passes` passes or `again_delay` seconds after the first (at most one is
    set). `pieces` are (end, pause) for every piece of a slow write but the last; empty when
    the file is written at once.
    """

    drop: bool = False
    truncate_to: int | None = None
    corruptions: tuple[tuple[int, int], ...] = ()
    delay: float | None = None
    again_passes: int | None = None
    again_delay: float | None = None
    pieces: tuple[tuple[int, float], ...] = ()

    @property
    def duplicate(self) -> bool:
        return self.again_passes is not None or self.again_delay is not None

    def apply(self, data: bytes) -> bytes:
        """`data` as delivered: cut to `truncate_to`, then XOR'd at each corruption."""
        damaged = bytearray(data[: self.truncate_to])
        for offset, xor in self.corruptions:
            damaged[offset] ^= xor
        return bytes(damaged)


def plan(rng: random.Random, size: int, faults: Faults) -> Plan:
    """The fate of a file of `size` bytes, drawn from `rng`.

    Whether each fault happens is drawn first, always in the same order, so turning one fault
    on does not change which files meet the others. A dropped file gets no other fault. An
    empty file is neither truncated nor corrupted, nor is a file truncated to 0 bytes
    corrupted. With `faults.delay`, a second copy waits a delay in that range, not passes.
    `faults.truncate_above` draws once more per file, after those (only when it is set).
    """
    drop, truncate, corrupt, duplicate = [
        rng.random() < p for p in (faults.drop, faults.truncate, faults.corrupt, faults.duplicate)
    ]
    if faults.truncate_above is not None:
        cut_big = rng.random() < faults.truncate_above[1]
        truncate = truncate or (cut_big and size >= faults.truncate_above[0])
    if drop:
        return Plan(drop=True)
    cut = rng.randrange(size) if truncate and size > 0 else None
    length = size if cut is None else cut
    again_passes = again_delay = None
    if duplicate and faults.delay is not None:
        again_delay = rng.uniform(*faults.delay)
    elif duplicate:
        again_passes = rng.randint(*AGAIN_PASSES)
    return Plan(
        truncate_to=cut,
        corruptions=_corruptions(rng, length) if corrupt else (),
        delay=None if faults.delay is None else rng.uniform(*faults.delay),
        again_passes=again_passes,
        again_delay=again_delay,
        pieces=_pieces(rng, length) if faults.slow_write else (),
    )


def _corruptions(rng: random.Random, length: int) -> tuple[tuple[int, int], ...]:
    """1 to 4 distinct offsets below `length` (fewer if it is shorter), each with a xor byte."""
    count = min(rng.randint(*CORRUPT_BYTES), length)
    return tuple(
        (offset, rng.randrange(1, 256)) for offset in sorted(rng.sample(range(length), count))
    )


def _pieces(rng: random.Random, length: int) -> tuple[tuple[int, float], ...]:
    """Where a slow write of `length` bytes pauses, and how long (one piece if under 2 bytes)."""
    count = min(rng.randint(*PIECES), max(length, 1))
    ends = sorted(rng.sample(range(1, length), count - 1))
    return tuple((end, rng.uniform(*PAUSE)) for end in ends)


@dataclass
class MirrorStats:
    """What a mirror did: files taken from SRC, and how many met each fault."""

    files: int = 0
    truncated: int = 0
    corrupted: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0

    def summary(self) -> str:
        return (
            f"mirrored {self.files} files: {self.truncated} truncated, {self.corrupted} "
            f"corrupted, {self.dropped} dropped, {self.duplicated} duplicated, "
            f"{self.delayed} delayed"
        )


def prepare_folders(src: Path, dst: Path) -> None:
    """Create `dst` if missing; ValueError, saying why, when it cannot be or is `src` itself."""
    try:
        dst.mkdir(parents=True, exist_ok=True)
        same = src.samefile(dst)
    except OSError as exc:
        raise ValueError(f"cannot use {dst} as DST: {exc.strerror or exc}") from None
    if same:
        raise ValueError(f"SRC and DST are the same folder ({src}): files would be lost")


# Blocking file work, run in threads.


def _sort_key(name: str) -> tuple[int, int, str]:
    """Mesh names by the time in them, then every other name alphabetically."""
    parsed = parse_name(name)
    return (0, parsed.stamp, name) if parsed is not None else (1, 0, name)


def _listing(folder: Path) -> list[str]:
    """Regular files in `folder` whose name does not start with ``.``, oldest first; [] if
    `folder` is missing."""
    try:
        with os.scandir(folder) as entries:
            names = [
                e.name
                for e in entries
                if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        return []
    return sorted(names, key=_sort_key)


def _read(path: Path) -> bytes | None:
    """The bytes of `path`; None if it is gone (taken by someone else)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    """`data` as `folder/name`, via an fsync'd ``.`` file renamed over whatever was there."""
    replace_atomically(folder, name, f".{name}{PART}", data, MIRRORED_MODE)


def _remove_stale_parts(folder: Path) -> None:
    """Delete the temporary files a crashed mirror left in `folder`."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(PART):
                _unlink(Path(entry.path))


class _InPlace:
    """A file written under its final name, piece by piece, as slow mirrors do (blocking).

    The file is open all along: a reader that deletes it meanwhile gets no half-recreated file.
    """

    def __init__(self, path: Path, data: bytes) -> None:
        self.data, self.done = data, 0
        self.fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.folder = path.parent

    def write_to(self, end: int) -> None:
        assert self.fd is not None
        write_all(self.fd, self.data[self.done : end])
        self.done = end

    def finish(self) -> None:
        """Write the rest, fsync, close."""
        self.write_to(len(self.data))
        assert self.fd is not None
        os.fsync(self.fd)
        self.close()
        fsync_folder(self.folder)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class _Pending:
    """A delivery to come, at trio time `at` or after pass `after_pass`: a delayed file held
    at `held`, or (when `held` is None) a second copy of `data`."""

    name: str
    fate: Plan
    at: float = math.inf
    after_pass: float = math.inf
    held: Path | None = None
    data: bytes = b""


class Mirror:
    """A mirror from `src` to `dst` between passes: its random streams, what it holds, its
    counts. Fault lines go to `out` as they happen; file errors are logged and retried.

    Drive it with `start`, then `sweep` every interval and `deliver_due` when `next_due` comes,
    and `release` at the end; `run_mirror` does exactly that. Each file is handled to its end
    even when cancelled meanwhile (a stop waits for it; `hurry` cuts slow writes short), so a
    stop never leaves a file half delivered.
    """

    def __init__(self, src: Path, dst: Path, faults: Faults, out: Out) -> None:
        self.src, self.dst, self.faults, self.out = src, dst, faults, out
        self.hold = dst / HOLD
        self.stats = MirrorStats()
        self.passes = 0
        self.pending: list[_Pending] = []
        self._fates = random.Random(faults.seed)
        self._order = random.Random(f"{faults.seed}/order")
        self._hurry = trio.Event()
        self._failing: set[str] = set()

    async def start(self) -> None:
        """Create DST; deliver what a crashed run left held there, at once, without faults."""
        recovered = await trio.to_thread.run_sync(self._recover)
        if recovered:
            log.info("delivered %d held file(s) left by an earlier run", recovered)

    def _recover(self) -> int:
        self.dst.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(self.dst)
        if not self.hold.is_dir():
            return 0
        _remove_stale_parts(self.hold)
        names = _listing(self.hold)
        for name in names:
            self._deliver_plainly(name, self.hold / name)
        return len(names)

    def next_due(self) -> float:
        """The trio time the next held file or second copy is due (inf if none is timed)."""
        return min((item.at for item in self.pending), default=math.inf)

    def hurry(self) -> None:
        """Finish slow writes at once from now on: the mirror is stopping."""
        self._hurry.set()

    async def sweep(self, take: bool = True) -> None:
        """One pass: deliver what is due, then (when `take`) take every file now in SRC."""
        self.passes += 1
        await self.deliver_due()
        if not take:
            return
        names = await trio.to_thread.run_sync(_listing, self.src)
        if self.faults.reorder:
            self._order.shuffle(names)
        for name in names:
            await self._whole(name, partial(self._take, name))

    async def deliver_due(self) -> None:
        """Deliver the held files and second copies whose time or pass has come.

        One that fails (DST unwritable) is tried again at the next pass.
        """
        now = trio.current_time()
        due = [p for p in self.pending if p.at <= now or p.after_pass <= self.passes]
        for item in sorted(due, key=lambda p: p.at):
            if not await self._whole(item.name, partial(self._deliver_pending, item)):
                item.at, item.after_pass = math.inf, self.passes + 1

    async def release(self) -> None:
        """Deliver everything held at once and without faults; forget second copies to come.

        A file that cannot be delivered now stays held, for the next start to deliver.
        """
        self.hurry()
        for item in self.pending:
            if item.held is not None:
                try:
                    await trio.to_thread.run_sync(self._deliver_plainly, item.name, item.held)
                except OSError as exc:
                    log.error("%s: %s; it stays in %s", item.name, exc, self.hold)
        self.pending.clear()
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(self.hold.rmdir)

    def _deliver_plainly(self, name: str, held: Path) -> None:
        data = _read(held)
        if data is not None:
            _write_atomically(self.dst, name, data)
            _unlink(held)

    async def _whole(self, name: str, step: Callable[[], Awaitable[None]]) -> bool:
        """Run one file's `step` to its end, even if cancelled meanwhile; False on an OSError,
        logged once per file name until that name succeeds again."""
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):
            try:
                await step()
            except OSError as exc:
                if name not in self._failing:
                    log.warning("%s: %s (will try again)", name, exc)
                self._failing.add(name)
                return False
        self._failing.discard(name)
        return True

    async def _take(self, name: str) -> None:
        source = self.src / name
        held = self.hold / name
        if self.faults.delay is not None and any(p.held == held for p in self.pending):
            return  # one of that name is held already: take this one once it is delivered
        data = await trio.to_thread.run_sync(_read, source)
        if data is None:
            return
        fate = plan(random.Random(self._fates.getrandbits(64)), len(data), self.faults)
        if fate.drop:
            await trio.to_thread.run_sync(_unlink, source)
            self.stats.dropped += 1
            self.out(f"drop {name}")
        elif fate.delay is not None:
            await trio.to_thread.run_sync(self._hold, name, data, source)
            self.pending.append(
                _Pending(name, fate, at=trio.current_time() + fate.delay, held=held)
            )
            self.stats.delayed += 1
            self.out(f"delay {name} {format_duration(fate.delay)}")
        else:
            await self._deliver(name, data, fate, source)
        self.stats.files += 1

    def _hold(self, name: str, data: bytes, source: Path) -> None:
        self.hold.mkdir(exist_ok=True)
        _write_atomically(self.hold, name, data)
        _unlink(source)

    async def _deliver_pending(self, item: _Pending) -> None:
        if item.held is None:
            await self._write(item.name, item.data, item.fate)
            self.stats.duplicated += 1
            self.out(f"duplicate {item.name}")
        else:
            data = await trio.to_thread.run_sync(_read, item.held)
            if data is None:  # another mirror into DST delivered it at its start
                log.warning("%s: gone from %s; delivered by another mirror?", item.name, self.hold)
            else:
                await self._deliver(item.name, data, item.fate, item.held)
        self.pending.remove(item)

    async def _deliver(self, name: str, data: bytes, fate: Plan, source: Path) -> None:
        """Deliver `data` with its faults, then delete `source`; print the faults."""
        payload = fate.apply(data)
        await self._write(name, payload, fate)
        await trio.to_thread.run_sync(_unlink, source)
        if fate.truncate_to is not None:
            self.stats.truncated += 1
            self.out(f"truncate {name} {len(data)} -> {len(payload)} bytes")
        if fate.corruptions:
            self.stats.corrupted += 1
            self.out(f"corrupt {name} {len(fate.corruptions)} bytes")
        if fate.duplicate:
            at = math.inf if fate.again_delay is None else trio.current_time() + fate.again_delay
            after = math.inf if fate.again_passes is None else self.passes + fate.again_passes
            self.pending.append(_Pending(name, fate, at=at, after_pass=after, data=payload))

    async def _write(self, name: str, payload: bytes, fate: Plan) -> None:
        """`payload` as DST/name: atomically, or with --slow-write in place, piece by piece."""
        if not self.faults.slow_write:
            await trio.to_thread.run_sync(_write_atomically, self.dst, name, payload)
            return
        writer = await trio.to_thread.run_sync(_InPlace, self.dst / name, payload)
        try:
            for end, pause in fate.pieces:
                await trio.to_thread.run_sync(writer.write_to, end)
                with trio.move_on_after(pause):
                    await self._hurry.wait()
            await trio.to_thread.run_sync(writer.finish)
        finally:
            writer.close()


async def run_mirror(
    src: Path, dst: Path, faults: Faults, interval: float, once: bool, out: Out
) -> MirrorStats:
    """Mirror `src` into `dst`, scanning every `interval` seconds, until cancelled; with `once`,
    take what is in `src` now, deliver it (waiting out delays and second copies) and return.

    However it ends, what is held is delivered and the summary line goes to `out`.
    """
    mirror = Mirror(src, dst, faults, out)
    try:
        await mirror.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hurry_when_cancelled, mirror)
            await _passes(mirror, interval, once)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await mirror.release()
        out(mirror.stats.summary())
    return mirror.stats


async def _passes(mirror: Mirror, interval: float, once: bool) -> None:
    next_pass = trio.current_time()
    while True:
        if trio.current_time() >= next_pass:
            await mirror.sweep(take=not once or mirror.passes == 0)
            next_pass = trio.current_time() + interval
        else:
            await mirror.deliver_due()
        if once and not mirror.pending:
            return
        await trio.sleep_until(min(next_pass, mirror.next_due()))


async def _hurry_when_cancelled(mirror: Mirror) -> None:
    try:
        await trio.sleep_forever()
    finally:
        mirror.hurry()


async def run_until_signal(
    src: Path, dst: Path, faults: Faults, interval: float, once: bool, out: Out
) -> signal.Signals | None:
    """`run_mirror` until it returns (with `once`) or SIGINT or SIGTERM stops it cleanly: the
    signal that did, or None. Must run in the main thread."""
    stopped_by: signal.Signals | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def mirror_then_stop() -> None:
                await run_mirror(src, dst, faults, interval, once, out)
                nursery.cancel_scope.cancel()

            nursery.start_soon(mirror_then_stop)
            async for signum in signals:
                stopped_by = signal.Signals(signum)
                nursery.cancel_scope.cancel()
                break
    return stopped_by
