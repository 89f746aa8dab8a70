"""A big body up and a big body down through the mesh, beside `cp` of the same bytes.

    python bench/bigbody.py [--size 1GiB] [--fragment-size 256MiB] [--truncate 0.2]
                            [--logs DIR]

Starts an upstream (hypercorn, its own process) that reads a request body and answers its
SHA-256, or answers N bytes of a fixed pattern; and two peers, each its own `mesh up`
process, so each one's peak memory can be read. Without `--truncate` the peers share one
folder; with it, each has its own outbox and inbox, and two `mesh mirror --truncate P`
copy between them. Prints MB/s of `cp` of a file of that size on the same disk, of the
same client straight to the same upstream (the harness's own ceiling), of the upload and
of the download through the mesh (each checked by digest; the upload again chunked, its
size not said, as `curl -T -` sends it), each peer's peak resident
memory, how many bytes each peer wrote to disk per byte of body (the sender writes each
once in its spool and once in a pipe file; the receiver links raw fragments where they
arrived, so writes none), and how fast alpha alone takes a body and makes it durable (the
sender's stage, a bound on the rest). The upload declares its length, as `curl -T` does,
so it leaves while it arrives. With `--truncate`, it also prints the most bytes each
outbox held at once (what the mirror had yet to take). `--logs DIR` keeps each process's
log there (`alpha.log`, `bravo.log`, `upstream.log`, `mirror-alpha-out.log`, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from ports import free_ports  # bench/ is on the path when run as a script
from throughput import started

from mesh.config.units import format_size, parse_size
from mesh.http.asgi import body_chunks, lifespan

UPSTREAM, ALPHA, BRAVO = free_ports(3)
# 16 MiB of seeded random bytes, repeated: incompressible (zstd's window is smaller).
BLOCK = random.Random(0).randbytes(16 << 20)
CHUNK = 1 << 20


def pieces(size: int) -> Iterator[bytes]:
    """`size` bytes of the pattern, a MiB at a time."""
    for start in range(0, size, CHUNK):
        at = start % len(BLOCK)
        yield BLOCK[at : at + min(CHUNK, size - start)]


def pattern(size: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces(size):
            yield piece

    return chunks()


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pieces(size):
        digest.update(piece)
    return digest.hexdigest()


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``POST``: the body's SHA-256; ``GET /bytes/N``: N bytes of the pattern."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["method"] == "GET":
        size = int(scope["path"].rsplit("/", 1)[1])
        headers = [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in pattern(size):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    digest = hashlib.sha256()
    async for chunk in body_chunks(receive):
        digest.update(chunk)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": digest.hexdigest().encode()})


def roster(folder: Path, fragment_size: str, split: bool, size: int) -> Path:
    def peer(port: int, me: str, other: str, **extra: str) -> dict[str, Any]:
        boxes = {"outbox": f"{me}-out", "inbox": f"{me}-in"} if split else {}
        return {
            "listen": f"127.0.0.1:{port}",
            "outbox": "pipe",
            "inbox": "pipe",
            "talks_to": [other],
            **boxes,
            **extra,
        }

    limit = format_size(size + (1 << 20))
    doc = {
        "defaults": {
            "heartbeat": "1s",
            "resend_after": "10s",
            "settle": "500ms",
            "fragment_size": fragment_size,
            "body_limit": limit,
            "request_deadline": "2h",
            "upstream_timeout": "10m",
        },
        "peers": {
            "alpha": peer(ALPHA, "alpha", "bravo"),
            "bravo": peer(BRAVO, "bravo", "alpha", upstream=f"http://127.0.0.1:{UPSTREAM}"),
        },
    }
    path = folder / "roster.yaml"
    path.write_text(yaml.safe_dump(doc))
    for name in ("pipe", "alpha-out", "alpha-in", "bravo-out", "bravo-in"):
        (folder / name).mkdir()
    mesh = str(Path(sys.executable).with_name("mesh"))
    subprocess.run([mesh, "keygen", str(path)], check=True, capture_output=True)
    return path


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def written(pid: int) -> int:
    """Bytes process `pid` has had written to storage so far (its `write_bytes`)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


async def sample_backlog(folders: list[Path], peaks: dict[str, int]) -> None:
    """Record in `peaks` the most bytes each of `folders` held at once, every 0.2 s."""
    while True:
        for folder in folders:
            held = 0
            with os.scandir(folder) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        held += entry.stat(follow_symlinks=False).st_size
            peaks[folder.name] = max(peaks.get(folder.name, 0), held)
        await trio.sleep(0.2)


def copy_rates(folder: Path, size: int, runs: int = 3) -> list[float]:
    """MB/s of `cp` of a `size`-byte file to another on the same disk (both fsync'd),
    `runs` times, sorted (it varies a lot from run to run on a VM's disk)."""
    source, target = folder / "cp-source", folder / "cp-target"
    with open(source, "wb") as out:
        for piece in pieces(size):
            out.write(piece)
        os.fsync(out.fileno())
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(["cp", str(source), str(target)], check=True)
        subprocess.run(["sync", str(target)], check=True)
        rates.append(size / (time.perf_counter() - began) / 1e6)
        target.unlink()
    source.unlink()
    return sorted(rates)


async def transfer(
    size: int, base: str = f"http://127.0.0.1:{ALPHA}/bravo"
) -> tuple[float, float, float, float]:
    """MB/s of `size` bytes up (POST, checked by the upstream's digest) and down (GET,
    checked by digest) through alpha (or straight to `base`), the seconds from the
    download's request to its first byte, and MB/s up again, chunked (no length said)."""
    wait = {"mesh-timeout": "3600"}
    async with httpx.AsyncClient(timeout=3600) as client:
        declared = {**wait, "content-length": str(size)}  # as `curl -T file` would say
        up = await upload(client, f"{base}/sink", size, declared)
        chunked = await upload(client, f"{base}/sink", size, wait)  # as `curl -T -` would
        began = time.perf_counter()
        digest, got, first = hashlib.sha256(), 0, 0.0
        async with client.stream("GET", f"{base}/bytes/{size}", headers=wait) as down:
            assert down.status_code == 200
            async for chunk in down.aiter_raw():
                first = first or time.perf_counter() - began
                digest.update(chunk)
                got += len(chunk)
        seconds = time.perf_counter() - began
        assert got == size and digest.hexdigest() == pattern_digest(size), "download changed"
    return up, size / seconds / 1e6, first, chunked


async def upload(client: httpx.AsyncClient, url: str, size: int, headers: dict[str, str]) -> float:
    """MB/s of a POST of `size` bytes of the pattern to `url`, checked by its digest."""
    began = time.perf_counter()
    reply = await client.post(url, content=pattern(size), headers=headers)
    seconds = time.perf_counter() - began
    assert reply.status_code == 200, (reply.status_code, reply.headers, reply.text[:300])
    assert reply.text == pattern_digest(size), "the upload arrived changed"
    return size / seconds / 1e6


async def stored(size: int) -> float:
    """MB/s at which alpha takes a body and makes it durable: a POST answered ``202`` once
    stored (``Prefer: respond-async``), its far side still to come. The sender's stage
    alone: the mesh cannot carry a body faster than this."""
    headers = {"content-length": str(size), "prefer": "respond-async"}
    async with httpx.AsyncClient(timeout=3600) as client:
        began = time.perf_counter()
        url = f"http://127.0.0.1:{ALPHA}/bravo/sink"
        reply = await client.post(url, content=pattern(size), headers=headers)
        seconds = time.perf_counter() - began
    assert reply.status_code == 202, reply.text[:300]
    return size / seconds / 1e6


def log_file(logs: Path | None, name: str) -> int:
    """A descriptor of `logs`/`name`.log to write, or DEVNULL without `logs`."""
    if logs is None:
        return subprocess.DEVNULL
    return os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


async def launch(
    folder: Path, roster_path: Path, truncate: float | None, logs: Path | None
) -> tuple[list[trio.Process], dict[str, trio.Process]]:
    """The upstream, both peers and (with `truncate`) the two mirrors; their stderr to
    `logs`/<name>.log, or dropped."""
    bin_dir = Path(sys.executable).parent
    processes: list[trio.Process] = []

    async def launch_one(name: str, command: list[str], **options: Any) -> trio.Process:
        log = log_file(logs, name)
        process = await trio.lowlevel.open_process(
            command, stderr=log, stdout=log, start_new_session=True, **options
        )
        if log != subprocess.DEVNULL:
            os.close(log)  # the child has its own
        processes.append(process)
        return process

    upstream = [str(bin_dir / "hypercorn"), "-k", "trio", "--bind", f"127.0.0.1:{UPSTREAM}"]
    await launch_one("upstream", [*upstream, "bigbody:upstream"], cwd=Path(__file__).parent)
    peers = {}
    for name in ("alpha", "bravo"):
        command = [str(bin_dir / "mesh"), "up", str(roster_path), "--peer", name]
        peers[name] = await launch_one(name, command)
    if truncate is not None:
        for src, dst, seed in (("alpha-out", "bravo-in", 1), ("bravo-out", "alpha-in", 2)):
            fault = ["--truncate", str(truncate), "--seed", str(seed)]
            command = [str(bin_dir / "mesh"), "mirror", str(folder / src), str(folder / dst)]
            await launch_one(f"mirror-{src}", [*command, *fault])
    return processes, peers


async def measure(
    size: int, folder: Path, processes: list[trio.Process], peers: dict[str, trio.Process]
) -> dict[str, Any]:
    """Direct and mesh transfers, each peer's writes and peak memory, alpha's own stage and
    (with split folders) each outbox's peak backlog."""
    await started(f"http://127.0.0.1:{UPSTREAM}/bytes/0")
    await started(f"http://127.0.0.1:{ALPHA}/mesh/status")
    await started(f"http://127.0.0.1:{BRAVO}/mesh/status")
    if any(process.returncode is not None for process in processes):
        raise SystemExit("a process exited at start: is another one using its port?")
    found: dict[str, Any] = {"direct": await transfer(size, f"http://127.0.0.1:{UPSTREAM}")}
    before = {name: written(p.pid) for name, p in peers.items()}
    backlog: dict[str, int] = {}
    outboxes = [folder / "alpha-out", folder / "bravo-out"]
    async with trio.open_nursery() as nursery:
        if len(processes) > 3:  # mirrors: each peer has its own outbox
            nursery.start_soon(sample_backlog, outboxes, backlog)
        found["mesh"] = await transfer(size)
        nursery.cancel_scope.cancel()
    found["backlog"] = backlog
    found["wrote"] = {name: written(p.pid) - before[name] for name, p in peers.items()}
    found["rss"] = {name: peak_rss(p.pid) for name, p in peers.items()}
    found["taken"] = await stored(size)
    return found


async def main(size: int, fragment_size: str, truncate: float | None, logs: Path | None) -> None:
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        folder = Path(tmp)
        rates = copy_rates(folder, size)
        path = roster(folder, fragment_size, truncate is not None, size)
        processes, peers = await launch(folder, path, truncate, logs)
        try:
            found = await measure(size, folder, processes, peers)
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGTERM)
                await process.wait()
            shutil.rmtree(folder / "state", ignore_errors=True)
    faults = f", mirrors truncating {truncate:.0%} of files" if truncate is not None else ""
    print(f"{format_size(size)} body, fragment_size {fragment_size}{faults}")
    report(size, rates, found)


def report(size: int, rates: list[float], found: dict[str, Any]) -> None:
    cp, direct, (up, down, first, chunked) = rates[len(rates) // 2], found["direct"], found["mesh"]
    spread = f"(median of {rates[0]:.0f} to {rates[-1]:.0f})"
    print(f"cp on the same disk   {cp:8.0f} MB/s  {spread}")
    print(f"direct HTTP, no mesh  {direct[0]:8.0f} MB/s up, {direct[1]:.0f} MB/s down")
    print(f"mesh upload (POST)    {up:8.0f} MB/s  ({up / direct[0]:.2f} of direct)")
    print(f"mesh upload, chunked  {chunked:8.0f} MB/s  ({chunked / direct[3]:.2f} of direct)")
    print(f"mesh download (GET)   {down:8.0f} MB/s  ({down / direct[1]:.2f} of direct)")
    print(f"download's first byte {first:8.3f} s     (direct: {direct[2]:.3f} s)")
    taken = found["taken"]
    print(f"alpha stores it (202) {taken:8.0f} MB/s  ({taken / cp:.0%} of cp: the sender's bound)")
    for name, peak in found["rss"].items():
        print(f"peak RSS of {name:<9} {peak / (1 << 20):8.0f} MiB")
    for name, count in found["wrote"].items():
        each = count / (3 * size)
        print(f"{name} wrote to disk  {each:8.2f} bytes per body byte (up twice, down once)")
    for name, held in found["backlog"].items():
        print(f"{name} held at most {held / (1 << 20):8.0f} MiB not yet taken by its mirror")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--fragment-size", default="256MiB")
    parser.add_argument("--truncate", type=float, default=None)
    parser.add_argument("--logs", type=Path, default=None)
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    trio.run(main, parse_size(args.size), args.fragment_size, args.truncate, args.logs)
