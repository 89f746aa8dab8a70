"""Callbacks are durable across a kill -9 of the caller's peer.

Real `mesh up` processes (alpha and bravo, each its own process so alpha can be killed
alone), one shared folder, real HTTP over loopback: an upstream behind bravo that counts
what it executes, and a callback receiver that alpha's roster allows.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh.http.asgi import lifespan, read_body
from mesh.http.problems import HTTPProblem
from tests.helpers.ports import Ports
from tests.helpers.processes import MeshProcess, keygen, mesh_up, peer, served, write_roster

STATUSES = (200, 201, 404, 500)  # the upstream's answers: a callback carries any of them
BIG = 3 << 19  # 1.5 MiB: over bodies.INLINE, so spooled and posted from its body file
SEED = int(os.environ.get("MESH_CALLBACKS_SEED", "20240611"))  # to try others


class Upstream:
    """Bravo's upstream: echoes the body of ``POST /run/{i}`` with status
    ``STATUSES[i % 4]`` and header ``x-run: i``, counting executions by `i`."""

    def __init__(self) -> None:
        self.runs: Counter[int] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 30)
        run = int(scope["path"].rsplit("/", 1)[1])
        self.runs[run] += 1
        headers = [(b"x-run", str(run).encode()), (b"content-type", b"application/octet-stream")]
        status = STATUSES[run % len(STATUSES)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Delivery:
    path: str
    request_id: str
    status: str
    run: str
    body: bytes


class Receiver:
    """The callback receiver: answers 503 (counting refusals by request id) until
    `accepting`, then 200, recording each delivery. With `hold_at` set, the reply to the
    delivery that makes `hold_at` distinct requests delivered is held until `release`:
    whoever posted it is then mid-POST."""

    def __init__(self) -> None:
        self.accepting = False
        self.refused: Counter[str] = Counter()
        self.cut = 0  # posts whose body never came whole
        self.got: list[Delivery] = []
        self.hold_at: int | None = None
        self.held: str | None = None
        self.holding, self.release = trio.Event(), trio.Event()
        self._changed = trio.Event()

    @property
    def delivered(self) -> set[str]:
        return {d.request_id for d in self.got}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        try:
            body = await read_body(receive, 1 << 30)
        except HTTPProblem:  # the poster was killed mid-upload: nothing was delivered
            self.cut += 1
            return
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]}
        request_id = headers.get("mesh-request-id", "")
        if not self.accepting:
            self.refused[request_id] += 1
            status = 503
        else:
            status = 200
            self.got.append(
                Delivery(
                    scope["path"],
                    request_id,
                    headers.get("mesh-status", ""),
                    headers.get("x-run", ""),
                    body,
                )
            )
            due = self.hold_at is not None and len(self.delivered) >= self.hold_at
            if due and self.held is None:
                self.held = request_id
                self.holding.set()
                self._notify()
                await self.release.wait()  # the poster is killed meanwhile
        self._notify()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


def roster(tmp_path: Path, ports: Ports) -> Path:
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], callbacks=[f"{ports.callbacks}/*"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={"heartbeat": "1s", "linger": "2ms"},
    )
    keygen(path)
    return path


def body_of(run: int) -> bytes:
    """Run `run`'s body: distinct, not UTF-8; runs 0, 1 (phase 1) and 25, 35, 45, 55
    (phase 2) are big: spooled, they cross as fragments and are posted from a file."""
    head = f"run {run} \xff".encode("latin-1")
    return head + os.urandom(BIG if run < 2 or run % 10 == 5 else 64)


BODIES = {run: body_of(run) for run in range(60)}


async def call_back(alpha: int, runs: Iterable[int], url: Callable[[int], str]) -> dict[str, int]:
    """Send each run to bravo through alpha (on port `alpha`) with a `Mesh-Callback`: each
    is a 202 at once. The run of each request id."""
    ids: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{alpha}", timeout=10) as client:
        for run in runs:
            reply = await client.post(
                f"/bravo/run/{run}", content=BODIES[run], headers={"mesh-callback": url(run)}
            )
            assert reply.status_code == 202, reply.text
            ids[reply.headers["mesh-request-id"]] = run
    return ids


async def states(alpha: int, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``GET /mesh/requests/{id}`` of each of `ids` at alpha (on port `alpha`)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{alpha}", timeout=10) as client:
        return {i: (await client.get(f"/mesh/requests/{i}")).json() for i in ids}


async def posts_left(state: Path) -> int:
    """How many callback/event POSTs alpha still has queued (read-only, while it runs)."""

    def count() -> int:
        uri = f"file:{state / 'state.sqlite'}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            return int(db.execute("SELECT count(*) FROM posts").fetchone()[0])

    return await trio.to_thread.run_sync(count)


async def test_callbacks_survive_kill_9_of_the_callers_peer(tmp_path: Path, ports: Ports) -> None:
    path = roster(tmp_path, ports)
    upstream, receiver = Upstream(), Receiver()
    rng = random.Random(SEED)
    lanes = 4
    procs: dict[str, MeshProcess] = {}  # bravo, and each run of alpha
    kills: list[str] = []  # what each kill interrupted, for the report
    step = "starting"  # where the test is, should it time out

    async def start(label: str, stack: AsyncExitStack) -> MeshProcess:
        """`mesh up --peer P` (P the first word of `label`) until `stack` closes."""
        name = label.split()[0]
        running = await stack.enter_async_context(mesh_up(path, name))
        procs[label] = running
        await running.wait_for(f"{name}: HTTP ingress")
        return running

    async def kill(alpha: MeshProcess) -> None:
        alpha.process.kill()
        await alpha.process.wait()
        refused = sum(receiver.refused.values())
        kills.append(f"{len(receiver.delivered)} delivered/{refused} refused")

    try:
        with trio.fail_after(55):
            async with (
                served(upstream, ports.upstream),
                served(receiver, ports.receiver),
                AsyncExitStack() as outer,
            ):
                bravo = await start("bravo", outer)

                # Phase 1: the receiver refuses; alpha stores every response, queues each
                # callback, fails to post it, and is killed -9 while they are still failing.
                async with AsyncExitStack() as stack:
                    alpha = await start("alpha 1", stack)
                    step = "phase 1: sending"
                    first = await call_back(
                        ports.alpha, range(20), lambda run: f"{ports.callbacks}/cb/{run}"
                    )
                    step = "phase 1: waiting for every callback to be refused"
                    await receiver.until(lambda: all(receiver.refused[i] for i in first))
                    assert {s["state"] for s in (await states(ports.alpha, first)).values()} == {
                        "completed"
                    }
                    await kill(alpha)
                assert not receiver.got

                # The receiver takes callbacks now; a new alpha on the same state posts them.
                receiver.accepting = True
                async with AsyncExitStack() as stack:
                    alpha = await start("alpha 2", stack)
                    step = "phase 1: waiting for every callback after the restart"
                    await receiver.until(lambda: receiver.delivered >= first.keys())
                    phase_one = Counter(d.request_id for d in receiver.got)

                    # Phase 2: callbacks flowing (four URLs, in order per URL); alpha is
                    # killed -9 mid-POST, at a seeded random count of delivered callbacks.
                    receiver.hold_at = len(receiver.delivered) + rng.randint(1, 25)
                    step = "phase 2: sending"
                    second = await call_back(
                        ports.alpha,
                        range(20, 60),
                        lambda run: f"{ports.callbacks}/lane/{run % lanes}",
                    )
                    step = f"phase 2: waiting for delivery {receiver.hold_at}, to hold it"
                    await receiver.holding.wait()
                    await kill(alpha)
                    receiver.release.set()

                # Killed -9 again at another seeded random count, while callbacks flow.
                async with AsyncExitStack() as stack:
                    alpha = await start("alpha 3", stack)
                    again = min(len(receiver.delivered) + rng.randint(1, 15), 60)
                    step = f"phase 2: waiting for delivery {again}, to kill alpha again"
                    await receiver.until(lambda: len(receiver.delivered) >= again)
                    await kill(alpha)

                async with AsyncExitStack() as stack:
                    alpha = await start("alpha 4", stack)
                    everything = first.keys() | second.keys()
                    step = "phase 2: waiting for every callback after the restarts"
                    await receiver.until(lambda: receiver.delivered >= everything)
                    # The last post is deleted just after its 200; that is in alpha's
                    # database, with nothing to wait on here but a poll.
                    step = "waiting for alpha's posts table to be empty"
                    while await posts_left(tmp_path / "state" / "alpha"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    final = await states(ports.alpha, everything)
                    step = "stopping"
                    assert await alpha.stop() == 130
                assert await bravo.stop() == 130
    except trio.TooSlowError:
        raise AssertionError(stuck(step, receiver, upstream, procs)) from None

    calls = {**first, **second}
    assert upstream.runs == Counter(range(60)), "each request executed exactly once"
    assert receiver.delivered == calls.keys(), "a callback for every request, and no other"
    assert {s["state"] for s in final.values()} == {"completed"}
    for delivery in receiver.got:
        run = calls[delivery.request_id]
        assert delivery.body == BODIES[run], run
        assert delivery.status == str(STATUSES[run % len(STATUSES)]), run
        assert delivery.run == str(run)
        assert delivery.path == (f"/cb/{run}" if run < 20 else f"/lane/{run % lanes}")
    assert max(phase_one.values()) == 1, "refused posts are no deliveries: none is repeated"
    times = Counter(d.request_id for d in receiver.got)
    duplicates = sum(n - 1 for n in times.values())
    # At-least-once only through a kill mid-POST: each URL has one post out at a time, so
    # each of the two kills while callbacks flowed can repeat at most one post per lane.
    assert duplicates <= 2 * lanes, times
    assert receiver.held is not None and times[receiver.held] >= 2, "the held POST is resent"
    for lane in range(lanes):  # in order per URL: first deliveries in completion order
        order = list(dict.fromkeys(d.request_id for d in receiver.got if d.path == f"/lane/{lane}"))
        completed = [completed_at(final[i]) for i in order]
        assert completed == sorted(completed), lane
    for name, running in procs.items():
        assert "Traceback" not in running.text, name
    print(
        f"\nseed {SEED}: alpha killed -9 at {'; '.join(kills)}; {duplicates} duplicate"
        f" callbacks of {len(calls)} ({len(receiver.got)} deliveries, {receiver.cut} cut off)"
    )


def completed_at(state: dict[str, Any]) -> float:
    return float(next(e["at"] for e in state["events"] if e["state"] == "completed"))


def stuck(step: str, receiver: Receiver, upstream: Upstream, procs: dict[str, MeshProcess]) -> str:
    """What the test knew when it timed out, and the end of each process's log."""
    lines = [
        f"timed out at: {step}",
        f"receiver: {len(receiver.delivered)} requests delivered ({len(receiver.got)} posts),"
        f" {sum(receiver.refused.values())} refused, {receiver.cut} cut off",
        f"upstream: {sum(upstream.runs.values())} executions of {len(upstream.runs)} runs",
    ]
    for name, running in procs.items():
        lines += [f"--- {name} (exit {running.process.returncode})", *running.lines[-40:]]
    return "\n".join(lines)


async def test_a_callback_url_that_hangs_holds_back_only_its_own_posts(
    tmp_path: Path, ports: Ports
) -> None:
    path = roster(tmp_path, ports)
    upstream, receiver = Upstream(), Receiver()
    receiver.accepting, receiver.hold_at = True, 1  # the first callback's reply never comes
    with trio.fail_after(20):  # under httpx's 30 s read timeout
        async with (
            served(upstream, ports.upstream),
            served(receiver, ports.receiver),
            mesh_up(path, "alpha") as alpha,
            mesh_up(path, "bravo") as bravo,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            await call_back(ports.alpha, [2], lambda run: f"{ports.callbacks}/cb/slow")
            await receiver.holding.wait()
            await call_back(ports.alpha, [3], lambda run: f"{ports.callbacks}/cb/fast")
            await receiver.until(lambda: any(d.path == "/cb/fast" for d in receiver.got))
            receiver.release.set()
            assert await alpha.stop() == 130
