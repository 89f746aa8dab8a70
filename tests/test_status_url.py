"""The status URL of a request answered later (``GET /mesh/requests/{id}/response``):
``202`` while the answer is pending, at once by default; with ``Prefer: wait=N`` (RFC
7240) the answer as soon as it comes within N seconds. Peers in this process, real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.test_forwarder import Upstream, mesh

PACE = 3.0  # seconds the upstream takes to answer


async def test_prefer_wait_holds_the_status_url_until_the_answer_comes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"later", delay=PACE)) as peers:
            base = f"http://{peers['alpha'].settings.listen}"
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as client:
                accepted = await client.post(
                    "/bravo/x", content=b"1", headers={"prefer": "respond-async"}
                )
                assert accepted.status_code == 202
                location = accepted.headers["location"]
                assert (await client.get(location)).status_code == 202  # at once
                started = trio.current_time()
                pending = await client.get(location, headers={"prefer": "wait=0.3"})
                assert pending.status_code == 202 and "retry-after" in pending.headers
                assert trio.current_time() - started >= 0.3  # it waited
                answer = await client.get(location, headers={"prefer": "wait=20"})
                assert answer.status_code == 200 and answer.content == b"later"
                bad = await client.get(location, headers={"prefer": "wait=soon"})
                assert bad.status_code == 400
