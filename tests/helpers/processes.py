"""Running the real `mesh` command as a subprocess, and waiting on what it logs; serving
an ASGI app (an upstream, a callback receiver) on loopback for a test."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from hypercorn.config import Config
from hypercorn.trio import serve

MESH = Path(sys.executable).with_name("mesh")


def mesh_command(*args: str) -> list[str]:
    """The installed `mesh` script when there is one, else `python -m mesh`."""
    if MESH.exists():
        return [str(MESH), *args]
    return [sys.executable, "-m", "mesh", *args]


def write_roster(
    folder: Path, peers: dict[str, dict[str, Any]], defaults: dict[str, Any] | None = None
) -> Path:
    """A roster file in `folder` (paths in it are relative to `folder`)."""
    doc: dict[str, Any] = {"defaults": defaults or {"heartbeat": "100ms"}, "peers": peers}
    path = folder / "roster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def peer(
    port: int,
    talks_to: list[str],
    outbox: str = "pipe",
    inbox: str | None = None,
    **settings: object,
) -> dict[str, object]:
    """A peer's roster settings, listening on loopback `port` (`inbox` is `outbox` unless
    given), plus any other `settings`."""
    return {
        "listen": f"127.0.0.1:{port}",
        "outbox": outbox,
        "inbox": inbox or outbox,
        "talks_to": talks_to,
        **settings,
    }


def keygen(roster: Path) -> None:
    """`mesh keygen ROSTER`, which must succeed."""
    result = run_mesh("keygen", str(roster))
    assert result.returncode == 0, result.stderr


def run_mesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mesh_command(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


async def until(condition: Callable[[], bool], every: float = 0.05) -> None:
    """Return once `condition()` holds: it reads what another process changes (its files,
    its database), which no event tells this one of. Bound it with `trio.fail_after`."""
    while not condition():  # noqa: ASYNC110 (another process)
        await trio.sleep(every)


class MeshProcess:
    """A running `mesh` command whose stderr lines are collected as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._grew = trio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        async for chunk in self.process.stderr:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._grew.set()
            self._grew = trio.Event()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self._grew.set()

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]

    async def wait_for(self, pattern: str, bound: float = 20) -> str:
        """The first line matching `pattern`, waiting up to `bound` seconds for it."""
        with trio.fail_after(bound):
            while True:
                found = self.matching(pattern)
                if found:
                    return found[0]
                if self.process.returncode is not None and self._grew.is_set():
                    raise AssertionError(f"mesh exited before {pattern!r}:\n{self.text}")
                await self._grew.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def stop(self, signum: int = signal.SIGINT, bound: float = 15) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        with trio.fail_after(bound):
            return await self.process.wait()


@asynccontextmanager
async def mesh_up(
    roster: Path, *peers: str, extra: tuple[str, ...] = (), open_files: int | None = None
) -> AsyncIterator[MeshProcess]:
    """`mesh up ROSTER [--peer P]... EXTRA` for the block's duration; killed if still running.
    With `open_files`, the process may open no more files than that (soft and hard)."""
    args = ["up", str(roster), *extra]
    for peer in peers:
        args += ["--peer", peer]

    def limited() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    process = await trio.lowlevel.open_process(
        mesh_command(*args),
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limited,
    )
    running = MeshProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.pump)
        try:
            yield running
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(10):
                await process.wait()


@asynccontextmanager
async def served(app: Any, port: int, host: str = "127.0.0.1") -> AsyncIterator[None]:
    """ASGI `app` served by hypercorn on `host` (loopback) `port` for the block's duration."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, app, config))
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def mirror(src: Path, dst: Path, *args: str) -> AsyncIterator[trio.Process]:
    """`mesh mirror SRC DST ARGS` for the duration of the block (SRC must exist)."""
    process = await trio.lowlevel.open_process(
        mesh_command("mirror", str(src), str(dst), *args), stdout=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


class PeerProcess:
    """One `mesh up --peer NAME` that a test may kill -9 and start again."""

    def __init__(self, roster: Path, name: str, log: Path) -> None:
        self.roster, self.name, self.log = roster, name, log
        self.process: trio.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                mesh_command("up", str(self.roster), "--peer", self.name), stderr=log
            )
        self.starts += 1

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def ready(self, client: httpx.AsyncClient, port: int) -> None:
        """Return once the peer answers on its ingress (bounded by the caller)."""
        for _ in range(1000):
            try:
                await client.get(f"http://127.0.0.1:{port}/mesh/status")
                return
            except httpx.TransportError:
                await trio.sleep(0.05)  # still starting

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            return await self.process.wait()


async def stop_group(process: trio.Process) -> None:
    """End `process` and whatever it started, its process group (SIGTERM, then SIGKILL):
    it must have been started with ``start_new_session=True``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with trio.move_on_after(5):
            await process.wait()
            return
