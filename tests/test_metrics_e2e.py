"""``GET /metrics`` of a running peer, parsed with prometheus_client's own parser: for
admin callers only when the peer has callers; its counters rise with traffic through it,
the round trips are observed, and a junk file in the inbox raises its reason's count."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_gateway_e2e import upstream_served

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OPS = {"Authorization": "Bearer ops-token"}  # an admin caller's
BILLING = {"Proxy-Authorization": "Bearer billing-token"}  # a caller's, not an admin's


def parsed(text: str) -> Samples:
    """Each sample's value by its name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when it is not there)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    reply = await client.get("/metrics", headers=OPS)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=")
    return parsed(reply.text)


async def scrape_until(client: httpx.AsyncClient, holds: Callable[[Samples], bool]) -> Samples:
    """The metrics once `holds` is true of them (the caller bounds the wait)."""
    while not holds(samples := await scrape(client)):  # noqa: ASYNC110 (another process)
        await trio.sleep(0.05)
    return samples


def roster(tmp_path: Path, ports: Ports) -> Path:
    callers = {
        "ops": {"token_sha256": hashlib.sha256(b"ops-token").hexdigest(), "admin": True},
        "billing": {"token_sha256": hashlib.sha256(b"billing-token").hexdigest()},
    }
    upstream = f"http://127.0.0.1:{ports.upstream}"
    return write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox="a2b", inbox="b2a", callers=callers),
            "bravo": peer(ports.bravo, ["alpha"], outbox="b2a", inbox="a2b", upstream=upstream),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms", "settle": "200ms"},
    )


def drop_junk(inbox: Path) -> None:
    """A file named like bravo's to alpha, but not a mesh file, put in place at once."""
    name = f"bravo.alpha.{2**60:016x}-0badf00d.msg.mesh"
    (inbox / f".{name}").write_bytes(b"junk" * 100)
    os.rename(inbox / f".{name}", inbox / name)


async def test_metrics_follow_the_traffic(tmp_path: Path, ports: Ports) -> None:
    path = roster(tmp_path, ports)
    keygen(path)
    with trio.fail_after(40):
        async with (
            upstream_served(ports.upstream),
            mesh_up(path) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=10) as alpha,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.bravo}") as bravo,
        ):
            await mesh.wait_for("alpha: first heard from bravo")
            refused = await alpha.get("/metrics")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert (await alpha.get("/metrics", headers=BILLING)).status_code == 403
            assert (await bravo.get("/metrics")).status_code == 200  # no callers: open
            hosted = {"Host": "bravo.localhost", **BILLING}  # the host form: bravo's upstream's
            assert (await alpha.get("/metrics", headers=hosted)).headers["x-echo-method"] == "GET"
            before = await scrape(alpha)
            for n in range(3):
                reply = await alpha.post("/bravo/echo", content=b"x" * n, headers=BILLING)
                assert reply.status_code == 200
            assert (await alpha.get("/bravo/status/418", headers=BILLING)).status_code == 418
            after = await scrape_until(
                alpha, lambda m: at(m, "mesh_link_messages_acked_total", remote="bravo") >= 4
            )
            check_traffic(before, after)
            drop_junk(tmp_path / "b2a")
            junk = await scrape_until(
                alpha, lambda m: at(m, "mesh_pipe_files_quarantined_total", reason="bad-magic") > 0
            )
            assert at(junk, "mesh_pipe_files_quarantined_total", reason="bad-magic") == 1
            assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text


def check_traffic(before: Samples, after: Samples) -> None:
    """What four calls to bravo did to alpha's metrics."""

    def rose(name: str, by: float = 1, **labels: str) -> bool:
        return at(after, name, **labels) - at(before, name, **labels) >= by

    assert rose("mesh_link_messages_sent_total", 4, remote="bravo")
    assert rose("mesh_pipe_files_written_total", remote="bravo")
    assert rose("mesh_pipe_bytes_written_total", 100, remote="bravo")
    assert rose("mesh_pipe_files_read_total", remote="bravo")
    assert rose("mesh_pipe_bytes_read_total", 100, remote="bravo")
    assert rose("mesh_requests_total", 3, status="200")
    assert rose("mesh_requests_total", 1, status="418")
    assert rose("mesh_round_trip_seconds_count", 4, remote="bravo")
    assert at(after, "mesh_round_trip_seconds_sum", remote="bravo") > 0
    assert rose("mesh_call_wait_seconds_count", 4)
    assert rose("mesh_store_commit_seconds_count", 4)
    assert at(after, "mesh_store_fsync_seconds_count") > 0
    assert at(after, "mesh_link_messages_waiting", remote="bravo") >= 0
    assert at(after, "mesh_remote_alive", remote="bravo") == 1
    assert 0 <= at(after, "mesh_remote_last_heard_age_seconds", remote="bravo") < 30
    assert at(after, "mesh_free_bytes", place="state") > 0
    assert at(after, "mesh_free_bytes", place="outbox") > 0
    assert ("mesh_requests_in_flight", (("state", "stored"),)) in after
    assert ("mesh_transfers", (("direction", "sending"),)) in after
