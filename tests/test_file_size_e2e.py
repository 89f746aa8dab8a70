"""A pipe that cuts big files: the link learns a file size the pipe carries whole, and a
1 GiB body still crosses, byte-identical (`mesh mirror --truncate-above`)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh.cli.status import collect
from mesh.config.roster import load_roster
from mesh.http.asgi import body_chunks, lifespan
from tests.helpers.ports import Ports
from tests.helpers.processes import mesh_up, mirror, served
from tests.test_bodies_e2e import roster as bodies_roster

MiB = 1 << 20
BODY = 1 << 30


async def digest(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the SHA-256 of the body it got, and its length."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    sha, length = hashlib.sha256(), 0
    async for chunk in body_chunks(receive):
        sha.update(chunk)
        length += len(chunk)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{length} {sha.hexdigest()}".encode()})


async def chunks(body: bytes) -> AsyncIterator[bytes]:
    """`body` in pieces of 1 MiB, sent chunked (no length declared)."""
    view = memoryview(body)
    for start in range(0, len(body), MiB):
        yield bytes(view[start : start + MiB])


def roster(tmp_path: Path, ports: Ports) -> Path:
    """The body tests' roster, with files as big as a link allows to begin with."""
    return bodies_roster(
        tmp_path, ports, heartbeat="500ms", fragment_size="256MiB", body_limit="2GiB"
    )


async def test_a_gib_crosses_a_pipe_that_cuts_files_of_64_mib_and_the_size_is_learned(
    tmp_path: Path, ports: Ports
) -> None:
    path = roster(tmp_path, ports)
    body = os.urandom(BODY)
    expected = f"{BODY} {hashlib.sha256(body).hexdigest()}"
    with trio.fail_after(300):
        async with (
            served(digest, ports.upstream),
            mesh_up(path, "alpha") as alpha,
            mesh_up(path, "bravo") as bravo,
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--truncate-above", "64MiB", "0.9"),
            mirror(tmp_path / "b-out", tmp_path / "a-in"),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=280) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            # chunked: the body leaves once whole, in files as big as the link allows
            reply = await client.post(
                "/bravo/digest", content=chunks(body), headers={"mesh-timeout": "280"}
            )
            assert reply.status_code == 200, reply.text
            assert reply.text == expected
            del body
            link = collect(load_roster(path), now=time.time())["peers"]["alpha"]["links"]
            assert link["bravo"]["file_size"] < 64 * MiB, link
    assert alpha.matching("Traceback") == [] and bravo.matching("Traceback") == []
