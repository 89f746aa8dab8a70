"""Constant load through the mesh for a long while, watching each peer for leaks.

    python bench/soak.py [--minutes 30] [--rate 100] [--retention 30s] [--sample 10]
                         [--body 1024] [--concurrency 64]

Starts the echo upstream of `throughput.py` (hypercorn, its own process) and two peers,
each its own `mesh up` process with `retention` set short (one shared folder on local
disk as the pipe), then POSTs `--body` bytes through alpha to bravo's upstream at a fixed
`--rate` (open loop: request i is due at start + i/rate, whatever became of the earlier
ones; at most `--concurrency` at once, and one that could not start on time counts as
late). Every `--sample` seconds it prints a row: requests/s answered, errors, late starts,
p99 latency, the files in the pipe, and per peer its resident memory, open files, the
bytes in its state folder (database, -wal, bodies), of its -wal alone, and its database's
pages and free pages. At the end (or on Ctrl-C) it fits a line through the samples after
the first retention period (and at least the first minute) and prints, per peer, each
figure's slope per 10 minutes and its growth first to last, with verdicts against the
soak's targets: state under 1 MB per 10 minutes (fitted through each minute's lowest
sample, as the -wal swings by tens of MB between checkpoints), memory under 10 MiB of
growth first to last, open files flat (at most +5 along the fitted line).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from ports import free_ports  # bench/ is on the path when run as a script
from prometheus_client.parser import text_string_to_metric_families
from throughput import started

from mesh.config.units import parse_duration

PEERS = ("alpha", "bravo")
LATE = 0.1  # seconds after its due time a request may start and still be on time
MiB, MB = 1 << 20, 1_000_000  # MB as the target says it
STATE_PER_10_MIN, RSS_GROWTH, FDS_DRIFT = 1 * MB, 10 * MiB, 5  # the soak's targets


@dataclass
class Tally:
    """Requests finished since the last sample."""

    ok: int = 0
    errors: int = 0
    late: int = 0
    latencies: list[float] = field(default_factory=list)

    def take(self) -> Tally:
        """This tally's counts, leaving it at zero."""
        taken = Tally(self.ok, self.errors, self.late, self.latencies)
        self.ok, self.errors, self.late, self.latencies = 0, 0, 0, []
        return taken


@dataclass(frozen=True)
class Gauge:
    """One peer at one moment."""

    rss: int  # bytes
    fds: int
    state: int  # bytes under state/<peer>/
    wal: int  # bytes of those in state.sqlite-wal
    pages: int  # -1 when unreadable
    free: int


@dataclass(frozen=True)
class Sample:
    """The requests since the sample before, and each peer, `at` seconds into the load."""

    at: float
    seconds: float  # since the sample before
    ok: int
    errors: int
    late: int
    p99: float  # seconds; 0 without requests
    pipe_files: int
    peers: dict[str, Gauge]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def roster(folder: Path, ports: dict[str, int], upstream: int, retention: str) -> Path:
    """A two-peer roster in `folder`, sharing `folder`/pipe, keys made."""

    def peer(name: str, other: str, **extra: str) -> dict[str, Any]:
        return {
            "listen": f"127.0.0.1:{ports[name]}",
            "outbox": "pipe",
            "inbox": "pipe",
            "talks_to": [other],
            "retention": retention,
            **extra,
        }

    doc = {
        "defaults": {"heartbeat": "2s"},
        "peers": {
            "alpha": peer("alpha", "bravo"),
            "bravo": peer("bravo", "alpha", upstream=f"http://127.0.0.1:{upstream}"),
        },
    }
    path = folder / "roster.yaml"
    path.write_text(yaml.safe_dump(doc))
    mesh = str(Path(sys.executable).with_name("mesh"))
    subprocess.run([mesh, "keygen", str(path)], check=True, capture_output=True)
    return path


async def start_upstream(port: int) -> trio.Process:
    """`throughput.py`'s echo, in its own process group (its worker ends with it)."""
    hypercorn = str(Path(sys.executable).with_name("hypercorn"))
    return await trio.lowlevel.open_process(
        [hypercorn, "-k", "trio", "-b", f"127.0.0.1:{port}", "throughput:echo"],
        cwd=Path(__file__).parent,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def start_peers(path: Path, folder: Path) -> dict[str, trio.Process]:
    """Each peer of the roster at `path` as its own `mesh up`, logging to folder/NAME.log.
    Each has its own process group, so Ctrl-C reaches only this script, which stops them."""
    mesh = str(Path(sys.executable).with_name("mesh"))
    peers = {}
    for name in PEERS:
        with (folder / f"{name}.log").open("wb") as log:
            peers[name] = await trio.lowlevel.open_process(
                [mesh, "up", str(path), "--peer", name],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
    return peers


async def stop(process: trio.Process) -> None:
    """SIGTERM to `process`'s group, SIGKILL if it is still there 10 s later."""
    with trio.CancelScope(shield=True):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with trio.move_on_after(10) as waiting:
            await process.wait()
        if waiting.cancelled_caught:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def rss(pid: int) -> int:
    """Resident bytes of process `pid` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def folder_files(folder: Path) -> list[Path]:
    """The files under `folder`, at any depth (those removed meanwhile may be among them)."""
    return [Path(top, name) for top, _, names in os.walk(folder) for name in names]


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder_files(folder):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def db_pages(database: Path) -> tuple[int, int]:
    """Pages and free pages of the SQLite database at `database`, read only, as the peer
    writes it; from the file's size when it cannot be read that way (no free pages: -1)."""
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
            return int(pages), int(free)
        finally:
            connection.close()
    except sqlite3.Error:
        with open(database, "rb") as file:
            header = file.read(100)
        page_size = int.from_bytes(header[16:18]) or 1  # 1 stands for 65536
        return database.stat().st_size // (65536 if page_size == 1 else page_size), -1


def gauge(pid: int, state_dir: Path) -> Gauge:
    pages, free = db_pages(state_dir / "state.sqlite")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    wal = state_dir / "state.sqlite-wal"
    size = wal.stat().st_size if wal.exists() else 0
    return Gauge(rss(pid), fds, folder_bytes(state_dir), size, pages, free)


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    tally: Tally,
    idle: trio.MemorySendChannel[httpx.AsyncClient],
) -> None:
    """One POST with `client`, counted in `tally`; then `client` is idle again."""
    started_at = time.perf_counter()
    try:
        reply = await client.post(url, content=body)
        if reply.status_code == 200 and reply.content == body:
            tally.ok += 1
            tally.latencies.append(time.perf_counter() - started_at)
        else:
            tally.errors += 1
    except httpx.HTTPError:
        tally.errors += 1
    finally:
        idle.send_nowait(client)


@contextlib.asynccontextmanager
async def clients(count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`count` clients, made before the load starts (each takes a few ms: 64 take ~1 s)."""
    async with contextlib.AsyncExitStack() as stack:
        made = [httpx.AsyncClient(timeout=60) for _ in range(count)]
        yield [await stack.enter_async_context(client) for client in made]


async def drive(
    url: str, rate: float, pool: list[httpx.AsyncClient], body: bytes, tally: Tally
) -> None:
    """POST `body` to `url` at `rate` a second until cancelled, at most one per client of
    `pool` at once. Each request in flight has its own client (see `throughput.load`): a
    client is taken from the idle ones when its request is due; when none is, the request
    waits for one and counts as late, as does one the loop itself starts more than LATE
    late."""
    idle, waiting = trio.open_memory_channel[httpx.AsyncClient](len(pool))
    for client in pool:
        idle.send_nowait(client)
    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        for i in itertools.count():
            due = began + i / rate
            await trio.sleep_until(due)
            try:
                client = waiting.receive_nowait()
                if trio.current_time() - due > LATE:
                    tally.late += 1
            except trio.WouldBlock:
                tally.late += 1
                client = await waiting.receive()
            nursery.start_soon(post, client, url, body, tally, idle)


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(int(len(ordered) * 0.99) - 1, 0)] if ordered else 0.0


async def measure(
    at: float, since: float, tally: Tally, peers: dict[str, trio.Process], folder: Path
) -> Sample:
    """A sample `at` seconds into the load, of the requests finished since `since`."""
    done = tally.take()

    def read() -> tuple[int, dict[str, Gauge]]:
        gauges = {name: gauge(peers[name].pid, folder / "state" / name) for name in PEERS}
        return len(folder_files(folder / "pipe")), gauges

    pipe_files, gauges = await trio.to_thread.run_sync(read)
    latency = p99(done.latencies)
    return Sample(at, at - since, done.ok, done.errors, done.late, latency, pipe_files, gauges)


PEER_HEADER = f"{'RSS MiB':>8}{'fds':>5}{'state MB':>9}{'wal MB':>7}{'pages/free':>11} |"
HEADER = (
    f"{'':>28}{'pipe':>6} |" + "".join(f"{name:^40} |" for name in PEERS) + "\n"
    f"{'time':>5}{'req/s':>7}{'err':>5}{'late':>5}{'p99ms':>6}{'files':>6} |" + 2 * PEER_HEADER
)


def line(sample: Sample) -> str:
    head = (
        f"{sample.at:>5.0f}{sample.rate:>7.1f}{sample.errors:>5}{sample.late:>5}"
        f"{sample.p99 * 1000:>6.0f}{sample.pipe_files:>6} |"
    )
    cells = [
        f"{g.rss / MiB:>8.1f}{g.fds:>5}{g.state / MB:>9.2f}{g.wal / MB:>7.2f}"
        f"{f'{g.pages}/{g.free}':>11} |"
        for g in (sample.peers[name] for name in PEERS)
    ]
    return head + "".join(cells)


async def watch(
    peers: dict[str, trio.Process],
    folder: Path,
    options: argparse.Namespace,
    tally: Tally,
    samples: list[Sample],
) -> None:
    """Append to `samples` every `options.sample` seconds from now (the load's start) for
    `options.minutes`, printing each; return early if a peer exits."""
    began = trio.current_time()
    print(HEADER, flush=True)
    for k in range(int(options.minutes * 60 / options.sample) + 1):
        await trio.sleep_until(began + k * options.sample)
        gone = [name for name, process in peers.items() if process.returncode is not None]
        if gone:
            print(f"{', '.join(gone)} exited: stopping", flush=True)
            return
        since = samples[-1].at if samples else 0.0
        try:
            at = trio.current_time() - began
            samples.append(await measure(at, since, tally, peers, folder))
        except FileNotFoundError:  # a peer exited as it was read: seen just above next time
            continue
        print(line(samples[-1]), flush=True)


def tails(folder: Path, names: list[str], count: int = 20) -> None:
    """The last `count` lines each peer in `names` logged."""
    for name in names:
        lines = (folder / f"{name}.log").read_text(errors="replace").splitlines()
        print(f"--- {name} exited; its log ends:", *lines[-count:], sep="\n")


async def soak(folder: Path, options: argparse.Namespace, samples: list[Sample]) -> None:
    """The upstream, the peers and the load, `samples` taken until the time is up; all
    stopped however this ends."""
    upstream_port, *ports = free_ports(3)
    upstream = await start_upstream(upstream_port)
    try:
        named = dict(zip(PEERS, ports, strict=True))
        path = roster(folder, named, upstream_port, options.retention)
        peers = await start_peers(path, folder)
        try:
            await started(f"http://127.0.0.1:{upstream_port}/echo")
            for port in ports:
                await started(f"http://127.0.0.1:{port}/mesh/status")
            tally, body = Tally(), b"x" * options.body
            url = f"http://127.0.0.1:{ports[0]}/bravo/echo"
            async with clients(options.concurrency) as pool, trio.open_nursery() as nursery:
                nursery.start_soon(drive, url, options.rate, pool, body, tally)
                await watch(peers, folder, options, tally, samples)
                nursery.cancel_scope.cancel()
            for name, port in named.items():
                print(await swept(name, port), flush=True)
        finally:
            gone = [name for name, process in peers.items() if process.returncode is not None]
            for process in peers.values():
                await stop(process)
            tails(folder, gone)
    finally:
        await stop(upstream)


async def swept(name: str, port: int) -> str:
    """What retention removed at peer `name` (listening on `port`), and how long its
    batches held the event loop, from its `/metrics`."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    removed: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mesh_retention_removed_total":
                removed[sample.labels["what"]] = sample.value
            elif sample.name == "mesh_retention_batch_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    batches = buckets.get(math.inf, 0.0)
    over = batches - buckets.get(0.01, 0.0)
    under = min((le for le, count in buckets.items() if count == batches), default=math.inf)
    counts = ", ".join(f"{int(count)} {what}" for what, count in sorted(removed.items()))
    return (
        f"{name}: retention removed {counts}; {int(batches)} batches, {int(over)} over 10 ms,"
        f" all within {under * 1000:g} ms"
    )


def fit(points: list[tuple[float, float]]) -> float:
    """The least-squares slope through `points`."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


Trends = dict[str, tuple[float, float]]  # figure: (slope per 10 minutes, first to last)
FIGURES: dict[str, tuple[float, Callable[[Gauge], int]]] = {  # divisor, figure of a gauge
    "state MB": (MB, lambda g: g.state),
    "  floor MB": (MB, lambda g: g.state),  # each minute's lowest: see `floor`
    "  but -wal MB": (MB, lambda g: g.state - g.wal),
    "RSS MiB": (MiB, lambda g: g.rss),
    "open fds": (1, lambda g: g.fds),
    "db pages": (1, lambda g: g.pages),
    "db free pages": (1, lambda g: g.free),
}


def floor(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lowest of `points` in each minute from the first. The -wal grows by tens of MB
    between two checkpoints and is cut back after each, so the whole state folder swings
    by as much from one sample to the next; a leak shows in its floor."""
    lowest: dict[int, tuple[float, float]] = {}
    for x, y in points:
        minute = int((x - points[0][0]) // 60)
        if minute not in lowest or y < lowest[minute][1]:
            lowest[minute] = (x, y)
    last = max(lowest, default=0)
    if last and points[-1][0] - points[0][0] - 60 * last < 30:  # a last minute barely begun
        del lowest[last]  # (one sample is no floor: it may be mid-swing)
    return list(lowest.values())


def trends(window: list[Sample], name: str) -> Trends:
    """Per figure of peer `name` over `window`: slope per 10 minutes and growth first to
    last, in the figure's own units."""
    found = {}
    for figure, (divisor, of) in FIGURES.items():
        points = [(s.at, of(s.peers[name]) / divisor) for s in window]
        if figure == "  floor MB":
            points = floor(points)
        found[figure] = (fit(points) * 600, points[-1][1] - points[0][1])
    return found


def verdicts(name: str, found: Trends, span: float) -> list[str]:
    """Lines saying whether peer `name` met each of the soak's targets over `span` seconds:
    the state folder judged on its floor (see `floor`), open files (which go up and down
    with the connections in use) on the fitted line rather than on two samples."""
    state, _ = found["  floor MB"]
    _, rss = found["RSS MiB"]
    fds = found["open fds"][0] * span / 600
    checks = [
        (state < STATE_PER_10_MIN / MB, f"state floor {state:+.3f} MB per 10 min (< 1 MB)"),
        (rss < RSS_GROWTH / MiB, f"RSS {rss:+.1f} MiB first to last (< 10 MiB)"),
        (fds <= FDS_DRIFT, f"open fds {fds:+.1f} along the fitted line (flat: at most +5)"),
    ]
    return [f"{name}: {'PASS' if ok else 'FAIL'}  {text}" for ok, text in checks]


def trend_table(
    window: list[Sample],
) -> tuple[list[str], dict[str, dict[str, tuple[float, float]]]]:
    """The trends of each peer over `window` as lines of a table, and as figures."""
    found = {name: trends(window, name) for name in PEERS}
    lines = [
        f"{'':<15}" + "".join(f"{name:>24}" for name in PEERS),
        f"{'':<15}" + 2 * f"{'per 10 min':>12}{'first-last':>12}",
    ]
    for figure in FIGURES:
        cells = [f"{found[n][figure][0]:>+12.3f}{found[n][figure][1]:>+12.3f}" for n in PEERS]
        lines.append(f"{figure:<15}" + "".join(cells))
    return lines, found


def summary(samples: list[Sample], options: argparse.Namespace) -> list[str]:
    """The load's totals, then per peer the trends after the first retention period (and
    first minute), and the verdicts."""
    ok = sum(s.ok for s in samples)
    seconds = samples[-1].at if samples else 0.0
    lines = [
        f"{ok} requests answered in {seconds:.0f} s ({ok / max(seconds, 1e-9):.1f}/s"
        f" against {options.rate:g}/s asked), {sum(s.errors for s in samples)} errors,"
        f" {sum(s.late for s in samples)} late"
    ]
    skip = max(parse_duration(options.retention), 60.0)
    window = [s for s in samples if s.at >= skip]
    if len(window) < 2:
        return [*lines, f"too short for a trend: fewer than 2 samples after {skip:g} s"]
    span = window[-1].at - window[0].at
    lines.append(
        f"from {window[0].at:.0f} s to {window[-1].at:.0f} s ({len(window)} samples):"
        " least-squares slope per 10 minutes, and growth first to last"
    )
    table, found = trend_table(window)
    lines += table
    if span < 600:
        lines.append(f"(only {span / 60:.1f} minutes of trend: slopes are rough)")
    return lines + [v for name in PEERS for v in verdicts(name, found[name], span)]


async def interrupt(scope: trio.CancelScope) -> None:
    """On Ctrl-C, cancel `scope` (the soak, which stops what it started)."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            print("\ninterrupted: stopping", flush=True)
            scope.cancel()
            return


async def main(options: argparse.Namespace) -> None:
    samples: list[Sample] = []
    print(
        f"{options.minutes:g} minutes of {options.rate:g} POSTs/s of {options.body} bytes,"
        f" at most {options.concurrency} at once, retention {options.retention},"
        f" sampled every {options.sample:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mesh-soak-") as tmp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt, nursery.cancel_scope)
            await soak(Path(tmp), options, samples)
            nursery.cancel_scope.cancel()
    print("\n".join(summary(samples, options)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=100, help="requests per second")
    parser.add_argument("--retention", default="30s", help="each peer's retention")
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument("--body", type=int, default=1024, help="bytes per request body")
    parser.add_argument("--concurrency", type=int, default=64, help="requests at once, at most")
    args = parser.parse_args()
    parse_duration(args.retention)  # a bad one fails here, not in the roster
    trio.run(main, args)
