"""Load from `wrk`, a C load generator (so the client does not cap the direct figure):
POSTs of a fixed body over `connections` keep-alive connections for some seconds.
Installed from Debian when missing and running as root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Measured:
    """One load run: requests answered, their rate, latency percentiles (ms), errors."""

    requests: int
    per_second: float
    p50: float
    p99: float
    errors: int = 0


def ensure_wrk() -> str:
    """The path of `wrk`, installed with apt-get when missing (as root); SystemExit if
    it cannot be had."""
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("this bench needs wrk: apt-get install wrk")
    return found


async def wrk(
    url: str, seconds: float, connections: int, body: bytes, headers: dict[str, str]
) -> Measured:
    """`wrk` POSTing `body` to `url` with `headers` over `connections` for `seconds`."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = string.rep('x', {len(body)})",
        *(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()),
    ]
    assert body == b"x" * len(body), "wrk sends a body of x's"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text("\n".join(lines) + "\n")
        threads = min(2, connections)
        command = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s"]
        done = await trio.run_process(
            [*command, "--latency", "-s", str(script), url], capture_stdout=True
        )
    return parse(done.stdout.decode())


def parse(report: str) -> Measured:
    """What `wrk --latency` printed."""
    requests = int(_find(r"(\d+) requests in", report))
    per_second = float(_find(r"Requests/sec:\s*([\d.]+)", report))
    errors = int(_find(r"Non-2xx or 3xx responses:\s*(\d+)", report, "0"))
    for kind in ("connect", "read", "write", "timeout"):
        errors += int(_find(rf"Socket errors:.*?{kind} (\d+)", report, "0"))
    return Measured(requests, per_second, _latency("50", report), _latency("99", report), errors)


def _latency(percent: str, report: str) -> float:
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percent}% latency in wrk's report:\n{report}")
    return float(match[1]) * UNITS[match[2]]


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match is not None:
        return match[1]
    if default is None:
        raise ValueError(f"{pattern!r} not in wrk's report:\n{text}")
    return default
