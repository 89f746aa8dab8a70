"""Resource bounds, tried against `mesh up` with few file descriptors: a crowd of
connections that never finish a request does not take the peer down, and once they go
it answers again."""

from __future__ import annotations

import resource
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_gateway_e2e import upstream_served

OPEN_FILES = 1024  # the peer keeps 256 of them: 384 connections of 2 files at once
CROWD = 1010  # connections that never finish their request


async def test_half_open_connections_past_the_file_limit_leave_the_peer_up(
    tmp_path: Path, ports: Ports
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < CROWD + 100:
        pytest.skip(f"this test opens {CROWD} connections; its hard file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, CROWD + 100), hard))
    upstream = f"http://127.0.0.1:{ports.upstream}"
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=upstream),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms"},
    )
    keygen(roster)
    base = f"http://127.0.0.1:{ports.alpha}"
    with trio.fail_after(90):
        async with (
            upstream_served(ports.upstream),
            mesh_up(roster, "bravo") as bravo,
            mesh_up(roster, "alpha", open_files=OPEN_FILES) as alpha,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            crowd, waits = [], 0
            while len(crowd) < CROWD and waits < 3:  # until connecting keeps waiting
                with trio.move_on_after(0.5) as waited:
                    stream = await trio.open_tcp_stream("127.0.0.1", ports.alpha)
                    await stream.send_all(b"POST /bravo/x HTTP/1.1\r\nHost: localhost\r\n")
                    crowd.append(stream)  # the head never ends
                waits = waits + 1 if waited.cancelled_caught else 0
            assert len(crowd) > 384  # the peer took what it may, the kernel queued more
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                with trio.move_on_after(1):  # waits in the backlog while the crowd is there
                    await client.get("/bravo/during")
                assert alpha.process.returncode is None
                for stream in crowd:
                    await stream.aclose()
                reply = await client.post("/bravo/after", content=b"hello")
                assert reply.status_code == 200 and reply.content == b"hello"
            assert await alpha.stop() == 130
        assert "Traceback" not in alpha.text
