"""Reliable links between real `mesh up` processes: faulty mirrors, crashes, lost state."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import httpx
import trio

from tests.helpers.ports import free_ports
from tests.helpers.processes import (
    PeerProcess,
    keygen,
    mesh_up,
    mirror,
    peer,
    write_roster,
)

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
    def folders(me: str) -> dict[str, str]:
        return {"outbox": f"{me}-out", "inbox": f"{me}-in"} if split else {}

    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports[0], ["bravo"], **folders("alpha")),
            "bravo": peer(ports[1], ["alpha"], **folders("bravo")),
        },
        defaults=FAST,
    )
    keygen(roster)
    return roster


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
        self.epoch = ""
        self._grew = trio.Event()

    async def run(self, client: httpx.AsyncClient) -> None:
        url = f"http://127.0.0.1:{self.port}/mesh/messages"
        while True:
            try:
                params = {"after": self.after, "epoch": self.epoch, "wait": 2}
                reply = await client.get(url, params=params)
            except httpx.TransportError:
                await trio.sleep(0.1)  # the peer is down: ask again shortly
                continue
            answer = reply.json()
            if answer["epoch"] != self.epoch:
                self.epoch, self.after = answer["epoch"], 0
            for item in answer["messages"]:
                self.after = item["id"]
                self.ids.append(item["message_id"])
                self.bodies.append(base64.b64decode(item["body_base64"]))
            if answer["messages"]:  # handled: consume them (a crash before reads them again)
                with contextlib.suppress(httpx.TransportError):
                    ack = {"upto": self.after, "epoch": self.epoch}
                    await client.post(f"{url}/ack", json=ack)
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
    alpha_port, bravo_port = free_ports(2)
    roster = two_peers(tmp_path, (alpha_port, bravo_port), split=True)
    for folder in ("alpha-out", "bravo-out"):
        (tmp_path / folder).mkdir()
    count = 1000
    bodies = {
        name: [f"{name}-{i}".encode() + os.urandom(40) for i in range(count)]
        for name in ("alpha", "bravo")
    }
    accepted: dict[str, dict[bytes, str]] = {"alpha": {}, "bravo": {}}
    at_alpha, at_bravo = Collector(alpha_port), Collector(bravo_port)
    # Bounded loosely: a resend waits twice the measured round trip (times a backoff up
    # to 8), and the slow-writing mirrors, taking files one at a time with pauses, make
    # that round trip seconds long on a busy machine (37 to 170 s seen on the same code).
    with trio.fail_after(420):
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
                    send_many, client, alpha_port, "bravo", bodies["alpha"], accepted["alpha"]
                )
                senders.start_soon(
                    send_many, client, bravo_port, "alpha", bodies["bravo"], accepted["bravo"]
                )
            accepted_at = trio.current_time()
            await at_bravo.wait_for(count)
            await at_alpha.wait_for(count)
            print(
                f"\naccepted after {accepted_at - started:.1f}s, "
                f"delivered after {trio.current_time() - started:.1f}s"
            )
            for port in (alpha_port, bravo_port):
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


async def test_kill_9_at_random_moments_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    alpha_port, bravo_port = free_ports(2)
    roster = two_peers(tmp_path, (alpha_port, bravo_port), split=False)
    count = 1000
    bodies = [f"crash-{i}".encode() for i in range(count)]
    accepted: dict[bytes, str] = {}
    at_bravo = Collector(bravo_port)
    alpha = PeerProcess(roster, "alpha", tmp_path / "alpha.log")
    bravo = PeerProcess(roster, "bravo", tmp_path / "bravo.log")
    rng = random.Random(7)

    async def chaos() -> None:
        victims = [alpha, bravo] * 3  # each killed three times, in a random order
        rng.shuffle(victims)
        for victim in victims:
            await trio.sleep(rng.uniform(0.3, 1.5))  # a random moment, by design
            await victim.kill()
            await trio.sleep(rng.uniform(0.0, 0.5))
            await victim.start()

    try:
        with trio.fail_after(180):
            await alpha.start()
            await bravo.start()
            async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
                nursery.start_soon(at_bravo.run, client)
                nursery.start_soon(_report, at_bravo, accepted)
                async with trio.open_nursery() as senders:
                    senders.start_soon(chaos)
                    senders.start_soon(send_many, client, alpha_port, "bravo", bodies, accepted, 4)
                await at_bravo.wait_for(count)
                await alpha.ready(client, alpha_port)  # a peer just restarted must be up before
                await bravo.ready(client, bravo_port)  # it is asked to stop
                nursery.cancel_scope.cancel()
            assert await alpha.stop() == 130
            assert await bravo.stop() == 130
    finally:
        alpha.kill_if_running()
        bravo.kill_if_running()
    assert alpha.starts == bravo.starts == 4
    assert Counter(at_bravo.ids).most_common(1)[0][1] == 1, "a message was delivered twice"
    assert set(accepted.values()) <= set(at_bravo.ids), "an accepted message was lost"
    # A body may arrive twice only if a POST of it died with its peer (outcome unknown),
    # and the client sent it again; mesh itself never repeats a message.
    repeated = [b for b, n in Counter(at_bravo.bodies).items() if n > 1]
    assert all(accepted[b] in at_bravo.ids for b in repeated)
    assert len(repeated) <= 6
    logs = (tmp_path / "alpha.log").read_text() + (tmp_path / "bravo.log").read_text()
    assert "Traceback" not in logs


async def test_a_wiped_peer_is_noticed_and_traffic_resumes(tmp_path: Path) -> None:
    alpha_port, bravo_port = free_ports(2)
    roster = two_peers(tmp_path, (alpha_port, bravo_port), split=False)
    accepted: dict[str, dict[bytes, str]] = {"alpha": {}, "bravo": {}}
    at_alpha, at_bravo = Collector(alpha_port), Collector(bravo_port)

    def batch(sender: str, tag: str, n: int) -> list[bytes]:
        return [f"{sender}-{tag}-{i}".encode() for i in range(n)]

    with trio.fail_after(120):
        async with (
            mesh_up(roster, "alpha") as alpha,
            httpx.AsyncClient(timeout=30) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(at_alpha.run, client)
            nursery.start_soon(at_bravo.run, client)
            async with mesh_up(roster, "bravo") as bravo:
                await bravo.wait_for("bravo: HTTP ingress")
                await alpha.wait_for("alpha: HTTP ingress")
                await send_many(
                    client, alpha_port, "bravo", batch("alpha", "before", 50), accepted["alpha"]
                )
                await send_many(
                    client, bravo_port, "alpha", batch("bravo", "before", 50), accepted["bravo"]
                )
                await at_bravo.wait_for(50)
                await at_alpha.wait_for(50)
                assert await bravo.stop() == 130
            # bravo's state is lost; alpha keeps its own and queues more for bravo.
            await send_many(
                client, alpha_port, "bravo", batch("alpha", "while-down", 20), accepted["alpha"]
            )
            await trio.to_thread.run_sync(shutil.rmtree, tmp_path / "state" / "bravo")
            async with mesh_up(roster, "bravo") as bravo:
                line = await alpha.wait_for("alpha: bravo has a new epoch")
                assert "its state was created anew" in line
                await bravo.wait_for("bravo: HTTP ingress")
                await send_many(
                    client, bravo_port, "alpha", batch("bravo", "after", 50), accepted["bravo"]
                )
                await send_many(
                    client, alpha_port, "bravo", batch("alpha", "after", 50), accepted["alpha"]
                )
                await at_alpha.wait_for(100)
                await at_bravo.wait_for(120)
                assert await bravo.stop() == 130
            nursery.cancel_scope.cancel()
    # New bravo numbers its messages from 1 again: alpha must not take them for repeats.
    assert set(at_alpha.bodies) == set(accepted["bravo"])
    assert set(at_bravo.bodies) == set(accepted["alpha"])
    assert len(at_alpha.bodies) == 100 and len(at_bravo.bodies) == 120


async def _report(collector: Collector, accepted: dict[bytes, str]) -> None:
    """Progress, printed for a run that hangs (pytest shows it with the failure)."""
    while True:
        await trio.sleep(5)
        print(f"delivered {len(set(collector.bodies))}, accepted {len(accepted)}")
