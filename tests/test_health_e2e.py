"""``GET /mesh/health`` of a running peer: open to all, ``200`` while it can take
requests, ``503`` naming the cause while its outbox cannot be written, ``200`` again once
it can."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import trio

from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster


async def health_until(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """The health answer once it has `status` (the outbox is tried each heartbeat)."""
    while (reply := await client.get("/mesh/health")).status_code != status:  # noqa: ASYNC110 (another process)
        await trio.sleep(0.05)
    return reply


async def test_health_follows_the_outbox(tmp_path: Path, ports: Ports) -> None:
    token_sha256 = hashlib.sha256(b"ops-token").hexdigest()
    callers = {"ops": {"token_sha256": token_sha256, "admin": True}}
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox="a2b", inbox="b2a", callers=callers),
            "bravo": peer(ports.bravo, ["alpha"], outbox="b2a", inbox="a2b"),
        },
        defaults={"heartbeat": "200ms"},
    )
    keygen(roster)
    outbox = tmp_path / "a2b"
    with trio.fail_after(30):
        async with (
            mesh_up(roster) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}") as client,
        ):
            await mesh.wait_for("alpha: first heard from bravo")
            healthy = await health_until(client, 200)  # no credentials needed
            assert healthy.json() == {"ok": True, "reasons": [], "peers": {"bravo": "alive"}}
            assert (await client.get("/mesh/status")).status_code == 401  # the rest is not open
            outbox.rename(tmp_path / "a2b.away")
            outbox.write_text("not a folder")  # no file can be written into it now
            sick = await health_until(client, 503)
            [reason] = sick.json()["reasons"]
            assert reason.startswith("the outbox cannot be written: "), reason
            assert str(tmp_path) not in sick.text  # no path told to strangers
            outbox.unlink()
            (tmp_path / "a2b.away").rename(outbox)
            await health_until(client, 200)
