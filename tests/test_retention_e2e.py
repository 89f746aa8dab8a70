"""Retention end to end: 5,000 requests through two `mesh up` processes with
``retention: 2s``. Once they are done, the sweep leaves no finished request, execution,
callback post or body file on either side; and a second copy of each of alpha's files,
delivered by `mesh mirror` after the records of its requests were swept, runs nothing
upstream (exactly once rests on the links' received-state, not on the records)."""

from __future__ import annotations

import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh.http.asgi import lifespan, read_body
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_command, mesh_up, peer, served, until, write_roster

REQUESTS = 5000
BIG = {7, 2500, 4999}  # requests whose bodies (and responses) cross in body files
BIG_SIZE = (1 << 20) + 512 * 1024
CALLBACK_EVERY = 10  # every tenth request has a callback
MIRROR_DELAY = "4s"  # each file, and its second copy after it: past retention and a sweep


class Upstream:
    """An echo upstream that counts each request it runs, by its number."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 30)
        self.ran[scope["path"]] += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


class Receiver:
    """A callback receiver counting the callbacks it got."""

    def __init__(self) -> None:
        self.got = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await read_body(receive, 1 << 30)
        self.got += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class MirrorLines:
    """A `mesh mirror` whose stdout lines (one per fault) are collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def pump(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            *complete, pending = (pending + chunk).split(b"\n")
            self.lines.extend(line.decode() for line in complete)

    def named(self, fault: str) -> set[str]:
        """The message files (not heartbeats) that met `fault` so far."""
        words = (line.split() for line in self.lines)
        return {w[1] for w in words if len(w) > 1 and w[0] == fault and w[1].endswith(".msg.mesh")}


@asynccontextmanager
async def mirror_lines(src: Path, dst: Path, *args: str) -> AsyncIterator[MirrorLines]:
    process = await trio.lowlevel.open_process(
        mesh_command("mirror", str(src), str(dst), *args), stdout=subprocess.PIPE
    )
    mirror = MirrorLines(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mirror.pump)
        try:
            yield mirror
        finally:
            process.kill()
            await process.wait()


def rows(state: Path, query: str) -> int:
    """The count `query` gives on a peer's state database (read only, while it runs)."""
    sql = sqlite3.connect(f"file:{state / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return int(sql.execute(query).fetchone()[0])
    finally:
        sql.close()


async def send_all(client: httpx.AsyncClient, alpha: int, callbacks: str) -> list[str]:
    """Send the requests, 64 at a time, each answered `202` at once; their status URLs."""
    statuses: list[str] = []
    limit = trio.CapacityLimiter(64)

    async def one(n: int) -> None:
        async with limit:
            headers = {"prefer": "respond-async"}
            if n % CALLBACK_EVERY == 0 or n in BIG:
                headers["mesh-callback"] = f"{callbacks}/done/{n}"
            body = b"x" * (BIG_SIZE if n in BIG else 256)
            url = f"http://127.0.0.1:{alpha}/bravo/r/{n}"
            reply = await client.post(url, content=body, headers=headers)
            assert reply.status_code == 202, reply.text
            statuses.append(reply.headers["location"].removesuffix("/response"))

    async with trio.open_nursery() as nursery:
        for n in range(REQUESTS):
            nursery.start_soon(one, n)
    return statuses


async def test_retention_sweeps_everything_and_a_late_duplicate_runs_nothing(
    tmp_path: Path, ports: Ports
) -> None:
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(
                ports.alpha, ["bravo"], outbox="a-out", inbox="b2a", callbacks=[ports.callbacks]
            ),
            "bravo": peer(
                ports.bravo,
                ["alpha"],
                outbox="b2a",
                inbox="a2b",
                upstream=f"http://127.0.0.1:{ports.upstream}",
            ),
        },
        defaults={"heartbeat": "500ms", "retention": "2s", "resend_after": "60s"},
    )
    keygen(roster)
    (tmp_path / "a-out").mkdir()
    alpha_state, bravo_state = tmp_path / "state" / "alpha", tmp_path / "state" / "bravo"
    upstream, receiver = Upstream(), Receiver()
    mirror_args = ("--duplicate", "1", "--delay", MIRROR_DELAY)
    with trio.fail_after(240):
        async with (
            served(upstream, ports.upstream),
            served(receiver, ports.receiver),
            mirror_lines(tmp_path / "a-out", tmp_path / "a2b", *mirror_args) as mirror,
            mesh_up(roster) as mesh,
            httpx.AsyncClient(timeout=60) as client,
        ):
            await mesh.wait_for("alpha: HTTP ingress")
            await mesh.wait_for("bravo: HTTP ingress")
            statuses = await send_all(client, ports.alpha, ports.callbacks)
            last = f"http://127.0.0.1:{ports.alpha}{statuses[-1]}"
            assert (await client.get(last)).status_code == 200  # kept while retention lasts
            expected_callbacks = len({*range(0, REQUESTS, CALLBACK_EVERY), *BIG})
            await until(lambda: receiver.got >= expected_callbacks)
            await until(lambda: len(upstream.ran) == REQUESTS)
            # Everything ended: the sweep leaves nothing of it on either side
            await until(lambda: rows(alpha_state, "SELECT count(*) FROM requests") == 0)
            await until(lambda: rows(bravo_state, "SELECT count(*) FROM executions") == 0)
            swept_at = set(mirror.named("duplicate"))
            assert rows(alpha_state, "SELECT count(*) FROM posts") == 0
            assert (await client.get(last)).status_code == 404  # past retention
            assert (await client.get(f"{last}/response")).status_code == 404
            await until(lambda: not any((alpha_state / "bodies").iterdir()))
            await until(lambda: not any((bravo_state / "bodies").iterdir()))
            # Second copies of every request file come; those after the sweep run nothing
            await until(lambda: mirror.named("duplicate") >= mirror.named("delay"))
            late = mirror.named("duplicate") - swept_at
            await until(lambda: not any(name in late for name in _names(tmp_path / "a2b")))
            assert late, "no second copy came after the sweep: the test proved nothing"
            assert upstream.ran == Counter({f"/r/{n}": 1 for n in range(REQUESTS)})
            assert rows(bravo_state, "SELECT count(*) FROM executions") == 0
            assert mesh.matching("Traceback") == []


def _names(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}
