"""Requests through the mesh beside direct calls to the same upstream, same load, one run.

    python bench/throughput.py [--client wrk|httpx] [--seconds 10] [--requests 4000]
                               [--concurrency 64] [--body 1024] [--linger 5ms ...]

The load comes from `wrk` (a C load generator, installed from Debian when missing, for
`--seconds`) or from httpx in this process (`--requests`; it caps the direct figure at
high concurrency). `--concurrency 1` measures light load: what the mesh adds to each call.

Starts a small echo upstream (hypercorn, its own process), then sends the same POSTs
directly and through a two-peer mesh (each peer its own `mesh up` process, as at two
sites; one shared folder on local disk) once per `--linger` setting, and prints
requests/s, p50 and p99 latency side by side, and how many files each peer wrote per
1,000 requests; the first `--linger` once more with alpha holding callers and each call
carrying a token (what authentication costs). `linger` is how long a
small message waits for others to share its file: fewer files, each paying its fsyncs
and signature once for many messages, against a little latency.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from ports import free_ports  # bench/ is on the path when run as a script
from wrk import Measured, ensure_wrk, wrk

from mesh.http.asgi import lifespan, read_body

UPSTREAM, ALPHA, BRAVO = free_ports(3)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = await read_body(receive, 1 << 30)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def roster(folder: Path, linger: str, token: str | None = None) -> Path:
    def peer(port: int, other: str, **extra: str) -> dict[str, Any]:
        return {
            "listen": f"127.0.0.1:{port}",
            "outbox": "pipe",
            "inbox": "pipe",
            "talks_to": [other],
            **extra,
        }

    doc = {
        "defaults": {"heartbeat": "2s", "linger": linger},
        "peers": {
            "alpha": peer(ALPHA, "bravo", **callers(token)),
            "bravo": peer(BRAVO, "alpha", upstream=f"http://127.0.0.1:{UPSTREAM}"),
        },
    }
    path = folder / "roster.yaml"
    path.write_text(yaml.safe_dump(doc))
    mesh = str(Path(sys.executable).with_name("mesh"))
    subprocess.run([mesh, "keygen", str(path)], check=True, capture_output=True)
    return path


def callers(token: str | None) -> dict[str, Any]:
    """alpha's `callers` when calls carry `token`: one admin caller holding it."""
    if token is None:
        return {}
    digest = hashlib.sha256(token.encode()).hexdigest()
    return {"callers": {"bench": {"token_sha256": digest, "admin": True}}}


def credentials(token: str | None) -> dict[str, str]:
    return {} if token is None else {"proxy-authorization": f"Bearer {token}"}


async def load(
    url: str,
    requests: int,
    concurrency: int,
    body: bytes,
    before: Callable[[], Awaitable[None]] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[float], float]:
    """Latencies of `requests` POSTs to `url`, `concurrency` at a time, and the seconds
    they took. Each caller has its own client and connection (one pool shared by all
    costs httpx time quadratic in the callers waiting for a connection, which would make
    the harness the bottleneck) and first makes one untimed request, so connections are
    open as a long-running client's are (64 opened at once take seconds); then `before`
    runs, then the timed requests."""
    latencies: list[float] = []
    todo = iter(range(requests))
    warm, go = trio.Semaphore(0), trio.Event()

    async def caller() -> None:
        async with httpx.AsyncClient(timeout=120, headers=headers) as client:
            reply = await client.post(url, content=body)
            assert reply.status_code == 200 and reply.content == body, reply.status_code
            warm.release()
            await go.wait()
            for _ in todo:
                started = time.perf_counter()
                reply = await client.post(url, content=body)
                assert reply.status_code == 200 and reply.content == body, reply.status_code
                latencies.append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
        for _ in range(concurrency):
            await warm.acquire()
        if before is not None:
            await before()
        began = time.perf_counter()
        go.set()
    return latencies, time.perf_counter() - began


def measured(latencies: list[float], seconds: float) -> Measured:
    ordered = sorted(latencies)
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000
    return Measured(len(ordered), len(ordered) / seconds, statistics.median(ordered) * 1000, p99)


def row(label: str, found: Measured, direct: Measured | None = None) -> str:
    """A line of the table; with `direct`, what the mesh adds and its share of direct."""
    line = f"{label:<14}{found.per_second:>8.0f}{found.p50:>10.1f}{found.p99:>10.1f}"
    if direct is not None:
        added = f"{found.p50 - direct.p50:>+10.1f}{found.p99 - direct.p99:>+10.1f}"
        line += f"{added}{found.per_second / direct.per_second:>9.2f}"
    return line + (f"  ({found.errors} errors)" if found.errors else "")


Load = Callable[[str, dict[str, str], Callable[[], Awaitable[None]] | None], Awaitable[Measured]]


def httpx_load(requests: int, concurrency: int, body: bytes) -> Load:
    async def run(
        url: str, headers: dict[str, str], before: Callable[[], Awaitable[None]] | None
    ) -> Measured:
        return measured(*await load(url, requests, concurrency, body, before, headers))

    return run


def wrk_load(seconds: float, concurrency: int, body: bytes) -> Load:
    """`wrk` for `seconds`, after a second of it to open the connections."""

    async def run(
        url: str, headers: dict[str, str], before: Callable[[], Awaitable[None]] | None
    ) -> Measured:
        await wrk(url, 1, concurrency, body, headers)
        if before is not None:
            await before()
        return await wrk(url, seconds, concurrency, body, headers)

    return run


async def started(url: str, bound: float = 20.0, token: str | None = None) -> None:
    """Return once `url` answers (a server just launched), failing after `bound` seconds."""
    async with httpx.AsyncClient(headers=credentials(token)) as client:
        with trio.fail_after(bound):
            while True:
                try:
                    await client.get(url)
                    return
                except httpx.TransportError:
                    await trio.sleep(0.05)


async def through_mesh(
    folder: Path, linger: str, run_load: Load, token: str | None
) -> tuple[Measured, list[int]]:
    """The mesh's figures with `linger` (calls carrying `token` when given), and the
    files each peer wrote to the other meanwhile."""
    path = roster(folder, linger, token)
    mesh = str(Path(sys.executable).with_name("mesh"))
    peers = [
        await trio.lowlevel.open_process(
            [mesh, "up", str(path), "--peer", name], stderr=subprocess.DEVNULL
        )
        for name in ("alpha", "bravo")
    ]
    try:
        await started(f"http://127.0.0.1:{BRAVO}/mesh/status")
        await started(f"http://127.0.0.1:{ALPHA}/mesh/status", token=token)
        if any(process.returncode is not None for process in peers):
            raise SystemExit("a peer exited at start: is another one using its port?")
        async with httpx.AsyncClient(headers=credentials(token)) as client:

            async def files() -> list[int]:
                """Files each peer wrote to the other so far."""
                written = []
                for port, other in ((ALPHA, "bravo"), (BRAVO, "alpha")):
                    status = (await client.get(f"http://127.0.0.1:{port}/mesh/status")).json()
                    written.append(status["links"][other]["files"])
                return written

            warm: list[int] = []

            async def count_from_here() -> None:
                warm.extend(await files())

            url = f"http://127.0.0.1:{ALPHA}/bravo/echo"
            found = await run_load(url, credentials(token), count_from_here)
            written = [after - before for after, before in zip(await files(), warm, strict=True)]
    finally:
        for process in peers:
            process.terminate()
            await process.wait()
    return found, written


async def main(run_load: Load, lingers: list[str], heading: str) -> None:
    bin_dir = Path(sys.executable).parent
    upstream = await trio.lowlevel.open_process(
        # the trio worker: `read_body` is mesh's, written for trio
        [
            str(bin_dir / "hypercorn"),
            "-k",
            "trio",
            "-b",
            f"127.0.0.1:{UPSTREAM}",
            "throughput:echo",
        ],
        cwd=Path(__file__).parent,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: its worker process ends with it
    )
    rows, notes = [], []
    try:
        await started(f"http://127.0.0.1:{UPSTREAM}/echo")
        direct = await run_load(f"http://127.0.0.1:{UPSTREAM}/echo", {}, None)
        rows.append(row("direct", direct))
        runs = [(linger, None) for linger in lingers] + [(lingers[0], secrets.token_urlsafe(32))]
        for linger, token in runs:
            label = f"mesh {linger}{' token' if token else ''}"
            with tempfile.TemporaryDirectory() as tmp:
                found, (to_bravo, to_alpha) = await through_mesh(Path(tmp), linger, run_load, token)
            rows.append(row(label, found, direct))
            per = 1000 / max(found.requests, 1)
            notes.append(
                f"{label}: files per 1,000 requests: {to_bravo * per:.0f} alpha"
                f" to bravo, {to_alpha * per:.0f} bravo to alpha"
            )
    finally:
        os.killpg(upstream.pid, signal.SIGTERM)  # hypercorn and its worker
        await upstream.wait()
    print(heading)
    print(
        f"{'':<14}{'req/s':>8}{'p50 ms':>10}{'p99 ms':>10}{'+p50':>10}{'+p99':>10}{'x direct':>9}"
    )
    print("\n".join(rows))
    print("\n".join(notes))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client", choices=("wrk", "httpx"), default="wrk")
    parser.add_argument("--seconds", type=float, default=10, help="of load, with wrk")
    parser.add_argument("--requests", type=int, default=4000, help="with httpx")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--linger", action="append", help="repeatable; default 5ms")
    args = parser.parse_args()
    body = b"x" * args.body
    if args.client == "wrk":
        ensure_wrk()
        run_load = wrk_load(args.seconds, args.concurrency, body)
        amount = f"{args.seconds:g} s of wrk"
    else:
        run_load = httpx_load(args.requests, args.concurrency, body)
        amount = f"{args.requests} requests (httpx)"
    heading = f"{amount}: POSTs of {args.body} bytes, {args.concurrency} concurrent callers"
    trio.run(main, run_load, args.linger or ["5ms"], heading)
