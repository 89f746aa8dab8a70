"""`mesh up --log-format json`: every line a JSON object with its peer and event, and an
access line for each request at the caller's peer; text lines that nothing sent from
outside can break or forge."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import trio

from mesh.cli.logs import TextFormatter
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_access_e2e import raw_status
from tests.test_gateway_e2e import upstream_served


def _two_peers(tmp_path: Path, ports: Ports) -> Path:
    """A roster of alpha and bravo (bravo's upstream on `ports.upstream`), keys made."""
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=f"http://127.0.0.1:{ports.upstream}"),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms"},
    )
    keygen(roster)
    return roster


async def test_json_logs(tmp_path: Path, ports: Ports) -> None:
    roster = _two_peers(tmp_path, ports)
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


async def test_text_logs_keep_what_a_stranger_sends_on_its_own_line(
    tmp_path: Path, ports: Ports
) -> None:
    """A path with encoded line breaks and terminal codes stays on its access line, still
    encoded; the userinfo of a proxy-form target (it may hold a token) is not logged."""
    roster = _two_peers(tmp_path, ports)
    forged = "%0d%0a2026-12-03%2008:30:00,000%20WARNING%20alpha:%20forged%1b%5b2J"
    with trio.fail_after(30):
        async with (
            upstream_served(ports.upstream),
            mesh_up(roster) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}") as client,
        ):
            await mesh.wait_for("alpha: first heard from bravo")
            assert (await client.get(f"/bravo/x{forged}")).status_code == 200
            head = b"GET http://billing:SECRET-TOKEN@bravo/y HTTP/1.1\r\nHost: bravo\r\n\r\n"
            assert await raw_status(ports.alpha, head) == 200
            await mesh.wait_for("GET http://bravo/y 200")
            assert await mesh.stop() == 130
    access = [line for line in mesh.lines if "alpha: GET /bravo/x" in line]
    assert len(access) == 1 and forged in access[0], access
    assert not any(line.startswith("2026-12-03 08:30:00") for line in mesh.lines)
    assert not any("\x1b" in line or "SECRET-TOKEN" in line for line in mesh.lines)


def test_a_text_line_escapes_control_characters_but_not_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "mesh.alpha", logging.ERROR, __file__, 1, "%s: %s", ("alpha", "a\r\nb\x1b[2J"), None
        )
        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    first, *traceback = text.splitlines()
    assert first.endswith("alpha: a\\x0d\\x0ab\\x1b[2J")
    assert traceback[0] == "Traceback (most recent call last):" and "ValueError: boom" in text
    assert record.getMessage() == "alpha: a\r\nb\x1b[2J"  # other handlers see it as it was
