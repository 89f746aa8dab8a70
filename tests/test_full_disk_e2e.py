"""A full disk, for real: alpha's state, then its outbox, on a small tmpfs that the test
fills. While full, new requests get `503` problem+json naming what is full and the peer
stays up; once space is freed, traffic resumes by itself, and every request accepted
before completes exactly once.

Mounting a tmpfs needs root (CI runs as root); elsewhere these tests are skipped."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from mesh.http.asgi import lifespan, read_body
from mesh.state.database import Database
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, served, until, write_roster

SIZE = 24 << 20  # bytes of the tmpfs
ACCEPTED_BEFORE = 20  # requests accepted before the disk fills, held by the upstream


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    """A tmpfs of `SIZE` bytes mounted at `where` (mode 0700) for the block; skips the
    test when it cannot be mounted (not root, no mount allowed)."""
    where.mkdir(parents=True, mode=0o700)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """A file in `folder` taking every byte left on its filesystem (grown again to take
    what was freed since, when called again)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = 1 << 16
        while block:
            try:
                os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                block //= 2  # then the last few bytes, in smaller pieces
    finally:
        os.close(fd)
    return filler


class HeldUpstream:
    """An upstream that answers once `release` is set, counting each request by path; its
    answer is the path, padded to `answer_bytes`."""

    def __init__(self, answer_bytes: int = 0) -> None:
        self.release = trio.Event()
        self.ran: Counter[str] = Counter()
        self.answer_bytes = answer_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await read_body(receive, 1 << 20)
        self.ran[scope["path"]] += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        body = scope["path"].encode()
        await send({"type": "http.response.body", "body": body.ljust(self.answer_bytes, b".")})


def roster_for(tmp_path: Path, ports: Ports) -> Path:
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox="a2b", inbox="b2a"),
            "bravo": peer(
                ports.bravo,
                ["alpha"],
                outbox="b2a",
                inbox="a2b",
                upstream=f"http://127.0.0.1:{ports.upstream}",
            ),
        },
        defaults={"heartbeat": "200ms", "resend_after": "1s"},
    )
    keygen(roster)
    return roster


async def exercise(full: Path, ports: Ports, mesh: Any, what: str) -> None:
    """Requests accepted, the filesystem of `full` filled, new requests refused `503`
    naming `what` (those that slipped in are `202`), space freed, traffic again, and
    every accepted request answered once."""
    upstream = HeldUpstream()
    answers: dict[int, httpx.Response] = {}
    base = f"http://127.0.0.1:{ports.alpha}"
    async with (
        served(upstream, ports.upstream),
        httpx.AsyncClient(base_url=base, timeout=120) as client,
        trio.open_nursery() as nursery,
    ):
        await mesh.wait_for("alpha: first heard from bravo")

        async def call(n: int) -> None:
            answers[n] = await client.post(f"/bravo/r/{n}", content=b"x" * 100)

        for n in range(ACCEPTED_BEFORE):
            nursery.start_soon(call, n)
        await until(lambda: len(upstream.ran) == ACCEPTED_BEFORE)
        filler = fill(full)
        refused, slipped_in = await _refused_while_full(client, full)
        assert refused["title"] in ("disk full", "pipe not writable"), refused
        assert refused["detail"] == f"no space left where the {what} is", refused
        for n in range(3):  # refused as long as it is full, and logged once a minute
            again = await client.post(f"/bravo/again/{n}", content=b"y")
            assert again.status_code == 503
        await mesh.wait_for(f"alpha: refusing requests: no space left where the {what} is")
        assert len(mesh.matching("alpha: refusing requests")) == 1
        health = await client.get("/mesh/health")
        assert health.status_code == 503 and what in health.text
        upstream.release.set()
        await trio.sleep(1.0)  # answers come back meanwhile: none may be lost
        assert mesh.process.returncode is None  # up all along
        filler.unlink()
        later = await _accepted_again(client)
        assert later.status_code == 200 and later.content == b"/r/later"
        for location in slipped_in:  # accepted while full: they go once space is back
            reply = await client.get(location, headers={"prefer": "wait=60"})
            assert reply.status_code == 200, reply.text
    statuses = {n: answer.status_code for n, answer in answers.items()}
    assert statuses == dict.fromkeys(range(ACCEPTED_BEFORE), 200)
    assert all(answers[n].content == f"/r/{n}".encode() for n in answers)
    assert set(upstream.ran.values()) == {1}  # each ran once
    assert mesh.matching("Traceback") == []


async def _refused_while_full(
    client: httpx.AsyncClient, full: Path
) -> tuple[dict[str, Any], list[str]]:
    """The problem a new request gets while the disk of `full` is full (kept so: what
    is freed, such as a heartbeat superseded or a file the far side took, is taken
    again), and the status URLs of those accepted before one was refused (SQLite may
    have room it reserved; a full pipe is found when a file cannot be written)."""
    accepted = []
    for n in range(200):
        await trio.to_thread.run_sync(fill, full)
        path, prefer = f"/bravo/full/{n}", {"prefer": "respond-async"}
        reply = await client.post(path, content=b"y" * 100, headers=prefer)
        if reply.status_code == 503:
            assert reply.headers["content-type"] == "application/problem+json"
            return dict(reply.json()), accepted
        assert reply.status_code == 202, reply.text
        accepted.append(reply.headers["location"])
    raise AssertionError("no 503 while the disk is full")


async def _accepted_again(client: httpx.AsyncClient) -> httpx.Response:
    while True:
        reply = await client.post("/bravo/r/later", content=b"z")
        if reply.status_code != 503:
            return reply
        await trio.sleep(0.1)


async def test_a_full_state_disk(tmp_path: Path, ports: Ports) -> None:
    roster = roster_for(tmp_path, ports)
    with tmpfs(tmp_path / "state" / "alpha") as state, trio.fail_after(120):
        async with mesh_up(roster) as mesh:
            await exercise(state, ports, mesh, "state")


async def test_a_full_pipe(tmp_path: Path, ports: Ports) -> None:
    roster = roster_for(tmp_path, ports)
    with tmpfs(tmp_path / "a2b") as pipe, trio.fail_after(120):
        async with mesh_up(roster) as mesh:
            await exercise(pipe, ports, mesh, "pipe")


async def test_a_full_state_disk_on_the_far_side(tmp_path: Path, ports: Ports) -> None:
    """Requests reach bravo while it cannot store them: they wait in the pipe (the files
    stay in its inbox) and run, once each, when space is back."""
    roster = roster_for(tmp_path, ports)
    upstream = HeldUpstream()
    upstream.release.set()
    answers: list[httpx.Response] = []
    base = f"http://127.0.0.1:{ports.alpha}"
    with tmpfs(tmp_path / "state" / "bravo") as state, trio.fail_after(120):
        async with (
            mesh_up(roster) as mesh,
            served(upstream, ports.upstream),
            httpx.AsyncClient(base_url=base, timeout=120) as client,
            trio.open_nursery() as nursery,
        ):
            await mesh.wait_for("alpha: first heard from bravo")
            filler = fill(state)

            async def call(n: int) -> None:
                answers.append(await client.post(f"/bravo/r/{n}", content=b"x"))

            for n in range(ACCEPTED_BEFORE):
                nursery.start_soon(call, n)
            await mesh.wait_for("bravo: cannot take")
            assert not upstream.ran and mesh.process.returncode is None
            filler.unlink()
    assert [a.status_code for a in answers] == [200] * ACCEPTED_BEFORE
    assert upstream.ran == Counter({f"/r/{n}": 1 for n in range(ACCEPTED_BEFORE)})
    assert mesh.matching("Traceback") == []


def test_a_commit_the_disk_refuses_runs_none_of_its_hooks(tmp_path: Path) -> None:
    """SQLite rolls back a COMMIT it cannot write: what was to run after it never runs,
    not even at the next commit (it once did, in whichever task committed next)."""
    with tmpfs(tmp_path / "state") as state:
        database = Database(state)
        filler = fill(state)
        ran: list[str] = []
        with pytest.raises(sqlite3.OperationalError, match="full"), database.transaction():
            database.connection.execute(
                "INSERT INTO meta (key, value) VALUES ('big', ?)", ("x" * 100_000,)
            )
            database.after_commit(lambda: ran.append("refused"))
        assert not database.connection.in_transaction
        filler.unlink()
        with database.transaction():
            database.after_commit(lambda: ran.append("later"))
        assert ran == ["later"]
        database.close()


async def test_the_far_sides_disk_fills_while_requests_are_with_its_upstream(
    tmp_path: Path, ports: Ports
) -> None:
    """Bravo cannot store its upstream's answers for a while: each waits in place and is
    stored once space is back. None is cut off (a POST cut off there would be a 502 of
    unknown outcome), and none runs twice. The answers (20 of 512 KiB) are more than the
    write-ahead log ever held before: small ones would fit in the blocks it already has,
    and a full disk would never stop them."""
    roster = roster_for(tmp_path, ports)
    upstream = HeldUpstream(answer_bytes=512 << 10)
    answers: list[httpx.Response] = []
    base = f"http://127.0.0.1:{ports.alpha}"
    with tmpfs(tmp_path / "state" / "bravo") as state, trio.fail_after(120):
        async with (
            mesh_up(roster) as mesh,
            served(upstream, ports.upstream),
            httpx.AsyncClient(base_url=base, timeout=120) as client,
            trio.open_nursery() as nursery,
        ):
            await mesh.wait_for("alpha: first heard from bravo")

            async def call(n: int) -> None:
                answers.append(await client.post(f"/bravo/r/{n}", content=b"x"))

            for n in range(ACCEPTED_BEFORE):
                nursery.start_soon(call, n)
            await until(lambda: len(upstream.ran) == ACCEPTED_BEFORE)
            filler = fill(state)
            upstream.release.set()
            await mesh.wait_for("bravo: cannot store a request's step yet")
            filler.unlink()
    assert [a.status_code for a in answers] == [200] * ACCEPTED_BEFORE, [a.text for a in answers]
    assert upstream.ran == Counter({f"/r/{n}": 1 for n in range(ACCEPTED_BEFORE)})
    assert mesh.matching("Traceback") == []
