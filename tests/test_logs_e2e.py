"""`mesh up --log-format json`: every line a JSON object with its peer and event, and an
access line for each request at the caller's peer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_gateway_e2e import upstream_served


async def test_json_logs(tmp_path: Path, ports: Ports) -> None:
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms"},
    )
    keygen(roster)
    with trio.fail_after(30):
        async with (
            upstream_served(ports.upstream),
            mesh_up(roster, extra=("--log-format", "json")) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}") as client,
        ):
            await mesh.wait_for("alpha: first heard from bravo")
            assert (await client.post("/bravo/x?secret=1", content=b"hi")).status_code == 200
            assert (await client.get("/nobody/x")).status_code == 404
            await mesh.wait_for("GET /nobody/x 404")
            assert await mesh.stop() == 130
    lines = [json.loads(line) for line in mesh.lines if line]
    assert lines and all({"time", "level", "peer", "event", "message"} <= set(e) for e in lines)
    heard = [e for e in lines if e["event"] == "first-heard-from"]
    assert {e["peer"] for e in heard} == {"alpha", "bravo"}
    access = [e for e in lines if e["event"] == "access" and e["peer"] == "alpha"]
    assert [(e["method"], e["path"], e["status"]) for e in access] == [
        ("POST", "/bravo/x", 200),
        ("GET", "/nobody/x", 404),
    ]
    assert all(e["duration"] >= 0 and e["caller"] is None for e in access)
    assert "secret" not in "\n".join(mesh.lines)  # no query in the access lines
