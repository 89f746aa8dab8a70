"""Requests through the mesh beside direct calls to the same upstream, same load, one run.

    python bench/throughput.py [--requests 2000] [--concurrency 64] [--body 1024]

Starts a small echo upstream (hypercorn, its own process) and a two-peer mesh (`mesh up`
in a subprocess, one shared folder on local disk), then sends the same POSTs directly and
through the mesh, and prints requests/s, p50 and p99 latency side by side, and how many
files the mesh wrote per 1,000 requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

from mesh.ingress import lifespan, read_body

UPSTREAM, ALPHA = 18390, 18391


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = await read_body(receive, 1 << 30)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def roster(folder: Path) -> Path:
    def peer(port: int, other: str, **extra: str) -> dict[str, Any]:
        return {
            "listen": f"127.0.0.1:{port}",
            "outbox": "pipe",
            "inbox": "pipe",
            "talks_to": [other],
            **extra,
        }

    doc = {
        "defaults": {"heartbeat": "2s", "linger": "5ms"},
        "peers": {
            "alpha": peer(ALPHA, "bravo"),
            "bravo": peer(ALPHA + 1, "alpha", upstream=f"http://127.0.0.1:{UPSTREAM}"),
        },
    }
    path = folder / "roster.yaml"
    path.write_text(yaml.safe_dump(doc))
    mesh = str(Path(sys.executable).with_name("mesh"))
    subprocess.run([mesh, "keygen", str(path)], check=True, capture_output=True)
    return path


async def load(url: str, requests: int, concurrency: int, body: bytes) -> list[float]:
    """Latencies of `requests` POSTs to `url`, `concurrency` at a time."""
    latencies: list[float] = []
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def caller() -> None:
            for _ in todo:
                started = time.perf_counter()
                reply = await client.post(url, content=body)
                assert reply.status_code == 200 and reply.content == body
                latencies.append(time.perf_counter() - started)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller)
    return latencies


def row(label: str, latencies: list[float], seconds: float) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    return f"{label:<10}{len(ordered) / seconds:>12.0f}{p50:>12.1f}{p99:>12.1f}"


async def main(requests: int, concurrency: int, size: int) -> None:
    body = b"x" * size
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        path = roster(Path(tmp))
        upstream = await trio.lowlevel.open_process(
            [str(bin_dir / "hypercorn"), "--bind", f"127.0.0.1:{UPSTREAM}", "throughput:echo"],
            cwd=Path(__file__).parent,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: its worker process ends with it
        )
        peers = await trio.lowlevel.open_process(
            [str(bin_dir / "mesh"), "up", str(path)], stderr=subprocess.DEVNULL
        )
        try:
            await trio.sleep(2)  # let the upstream and the peers start
            results = []
            for label, url in [
                ("direct", f"http://127.0.0.1:{UPSTREAM}/echo"),
                ("mesh", f"http://127.0.0.1:{ALPHA}/bravo/echo"),
            ]:
                started = time.perf_counter()
                latencies = await load(url, requests, concurrency, body)
                results.append(row(label, latencies, time.perf_counter() - started))
            async with httpx.AsyncClient() as client:
                status = (await client.get(f"http://127.0.0.1:{ALPHA}/mesh/status")).json()
        finally:
            peers.terminate()
            await peers.wait()
            os.killpg(upstream.pid, signal.SIGTERM)  # hypercorn and its worker
            await upstream.wait()
    files = status["links"]["bravo"]["files"]
    print(f"{requests} POSTs of {size} bytes, {concurrency} concurrent callers")
    print(f"{'':<10}{'req/s':>12}{'p50 ms':>12}{'p99 ms':>12}")
    print("\n".join(results))
    print(f"alpha wrote {files} files to bravo: {files * 1000 / requests:.0f} per 1,000 requests")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--body", type=int, default=1024)
    args = parser.parse_args()
    trio.run(main, args.requests, args.concurrency, args.body)
