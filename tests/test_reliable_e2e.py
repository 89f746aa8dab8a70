"""Reliable links between real `mesh up` processes: faulty mirrors, crashes, lost state."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.processes import mesh_command, mesh_up, run_mesh, write_roster

FAULTS = [
    "--truncate",
    "0.1",
    "--corrupt",
    "0.02",
    "--drop",
    "0.05",
    "--duplicate",
    "0.05",
    "--reorder",
    "--slow-write",
]
FAST = {"heartbeat": "1s", "resend_after": "4s", "settle": "300ms", "linger": "100ms"}


def two_peers(tmp_path: Path, ports: tuple[int, int], split: bool) -> Path:
    def peer(port: int, me: str, other: str) -> dict[str, object]:
        out, inbox = (f"{me}-out", f"{me}-in") if split else ("pipe", "pipe")
        return {"listen": f"127.0.0.1:{port}", "outbox": out, "inbox": inbox, "talks_to": [other]}

    roster = write_roster(
        tmp_path,
        {"alpha": peer(ports[0], "alpha", "bravo"), "bravo": peer(ports[1], "bravo", "alpha")},
        defaults=FAST,
    )
    assert run_mesh("keygen", str(roster)).returncode == 0
    return roster


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


async def post(client: httpx.AsyncClient, port: int, to: str, body: bytes) -> str | None:
    """The mesh id of the message once accepted; None if the peer could not be reached
    (then nobody knows whether it was stored)."""
    try:
        reply = await client.post(f"http://127.0.0.1:{port}/mesh/messages/{to}", content=body)
    except httpx.TransportError:
        return None
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


class Collector:
    """Fetches what a peer delivers, in order, resuming after connection failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bodies: list[bytes] = []
        self.ids: list[str] = []
        self.after = 0
        self._grew = trio.Event()

    async def run(self, client: httpx.AsyncClient) -> None:
        url = f"http://127.0.0.1:{self.port}/mesh/messages"
        while True:
            try:
                reply = await client.get(url, params={"after": self.after, "wait": 2})
            except httpx.TransportError:
                await trio.sleep(0.1)  # the peer is down: ask again shortly
                continue
            for item in reply.json()["messages"]:
                self.after = item["id"]
                self.ids.append(item["message_id"])
                self.bodies.append(base64.b64decode(item["body_base64"]))
            self._grew.set()
            self._grew = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(set(self.bodies)) < count:
            await self._grew.wait()


async def send_many(
    client: httpx.AsyncClient,
    port: int,
    to: str,
    bodies: list[bytes],
    accepted: dict[bytes, str],
    workers: int = 16,
) -> None:
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            body = queue.pop()
            message_id = await post(client, port, to, body)
            if message_id is None:
                queue.insert(0, body)  # try again later
                await trio.sleep(0.05)
            else:
                accepted[body] = message_id

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


async def test_a_thousand_messages_each_way_through_faulty_mirrors(tmp_path: Path) -> None:
    roster = two_peers(tmp_path, (18201, 18202), split=True)
    for folder in ("alpha-out", "bravo-out"):
        (tmp_path / folder).mkdir()
    count = 1000
    bodies = {
        name: [f"{name}-{i}".encode() + os.urandom(40) for i in range(count)]
        for name in ("alpha", "bravo")
    }
    accepted: dict[str, dict[bytes, str]] = {"alpha": {}, "bravo": {}}
    at_alpha, at_bravo = Collector(18201), Collector(18202)
    with trio.fail_after(240):
        async with (
            mesh_up(roster, "alpha") as alpha,
            mesh_up(roster, "bravo") as bravo,
            mirror(tmp_path / "alpha-out", tmp_path / "bravo-in", "--seed", "1", *FAULTS),
            mirror(tmp_path / "bravo-out", tmp_path / "alpha-in", "--seed", "2", *FAULTS),
            httpx.AsyncClient(timeout=30) as client,
            trio.open_nursery() as nursery,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            started = trio.current_time()
            nursery.start_soon(at_alpha.run, client)
            nursery.start_soon(at_bravo.run, client)
            async with trio.open_nursery() as senders:
                senders.start_soon(
                    send_many, client, 18201, "bravo", bodies["alpha"], accepted["alpha"]
                )
                senders.start_soon(
                    send_many, client, 18202, "alpha", bodies["bravo"], accepted["bravo"]
                )
            accepted_at = trio.current_time()
            await at_bravo.wait_for(count)
            await at_alpha.wait_for(count)
            print(f"\naccepted after {accepted_at - started:.1f}s, "
                  f"delivered after {trio.current_time() - started:.1f}s")
            for port in (18201, 18202):
                status = (await client.get(f"http://127.0.0.1:{port}/mesh/status")).json()
                print(status["peer"], status["links"])
            nursery.cancel_scope.cancel()
    for collector, sender in ((at_bravo, "alpha"), (at_alpha, "bravo")):
        assert Counter(collector.bodies).most_common(1)[0][1] == 1, "delivered twice"
        assert set(collector.bodies) == set(bodies[sender])
        assert sorted(collector.ids) == sorted(accepted[sender].values())
    assert "Traceback" not in alpha.text + bravo.text
    lost = alpha.matching("lost .* frames") + bravo.matching("lost .* frames")
    quarantined = list((tmp_path / "state").glob("*/quarantine/*.reason"))
    print(f"\n{len(lost)} files arrived cut, {len(quarantined)} quarantined")
    assert lost, "the mirrors' truncation never showed"
