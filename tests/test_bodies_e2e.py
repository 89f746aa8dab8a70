"""Bodies of tens of MiB through `mesh up` processes and faulty mirrors: byte-identical,
in fragments, with each peer's memory bounded."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from mesh.ingress import body_chunks, lifespan
from tests.processes import MeshProcess, keygen, mesh_up, peer, write_roster
from tests.test_reliable_e2e import mirror

ALPHA, BRAVO, UPSTREAM, RECEIVER = 18401, 18402, 18490, 18491
MiB = 1 << 20


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body (``/echo``) or answers N seeded random bytes (``/big/N``)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = b"".join([chunk async for chunk in body_chunks(receive)])
    if scope["path"].startswith("/big/"):
        body = pseudo_random(int(scope["path"].rsplit("/", 1)[1]), 7)
    headers = [(b"content-type", b"application/octet-stream"), (b"x-sha", _sha(body).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Receiver:
    """Takes callback POSTs."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b"".join([chunk async for chunk in body_chunks(receive)])
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.got.append((headers, body))
        self.arrived.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def served(app: Any, port: int) -> AsyncIterator[None]:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, app, config))
        yield
        nursery.cancel_scope.cancel()


def peak_rss(process: MeshProcess) -> int:
    """The process's peak resident memory so far, in bytes."""
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def roster(tmp_path: Path) -> Path:
    callbacks = [f"http://127.0.0.1:{RECEIVER}/*"]
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ALPHA, ["bravo"], outbox="a-out", inbox="a-in", callbacks=callbacks),
            "bravo": peer(
                BRAVO,
                ["alpha"],
                outbox="b-out",
                inbox="b-in",
                upstream=f"http://127.0.0.1:{UPSTREAM}",
            ),
        },
        defaults={
            "heartbeat": "1s",
            "resend_after": "4s",
            "settle": "300ms",
            "fragment_size": "8MiB",
            "body_limit": "256MiB",
        },
    )
    keygen(path)
    for folder in ("a-out", "b-out", "a-in", "b-in"):
        (tmp_path / folder).mkdir()
    return path


async def test_bodies_of_tens_of_mib_cross_whole_through_truncating_mirrors(
    tmp_path: Path,
) -> None:
    """40 MiB up and back, 48 MB down, and a 24 MiB callback, through mirrors that cut
    30% of the files: byte-identical, each peer's peak memory far below the bodies."""
    path = roster(tmp_path)
    faults = ["--truncate", "0.3", "--duplicate", "0.05", "--reorder"]
    receiver = Receiver()
    with trio.fail_after(240):
        async with (
            served(upstream, UPSTREAM),
            served(receiver, RECEIVER),
            mesh_up(path, "alpha") as alpha,
            mesh_up(path, "bravo") as bravo,
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--seed", "5", *faults),
            mirror(tmp_path / "b-out", tmp_path / "a-in", "--seed", "6", *faults),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ALPHA}", timeout=200) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            await bravo.wait_for("bravo: HTTP ingress")
            baseline = max(peak_rss(alpha), peak_rss(bravo))
            wait = {"mesh-timeout": "200"}

            sent = os.urandom(40 * MiB)
            reply = await client.post("/bravo/echo", content=sent, headers=wait)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-sha"] == _sha(sent) == _sha(reply.content)
            assert reply.headers["content-length"] == str(len(sent))
            del sent, reply

            reply = await client.get(f"/bravo/big/{48_000_000}", headers=wait)
            assert reply.status_code == 200
            assert _sha(reply.content) == _sha(pseudo_random(48_000_000, 7))
            request_id = reply.headers["mesh-request-id"]
            again = await client.get(f"/mesh/requests/{request_id}/response")
            assert again.content == reply.content
            del again, reply

            reply = await client.get(
                f"/bravo/big/{24 * MiB}",
                headers={"mesh-callback": f"http://127.0.0.1:{RECEIVER}/done"},
            )
            assert reply.status_code == 202
            await receiver.arrived.wait()
            headers, body = receiver.got[0]
            assert headers["mesh-status"] == "200" and headers["x-sha"] == _sha(body)
            assert body == pseudo_random(24 * MiB, 7)

            grew = max(peak_rss(alpha), peak_rss(bravo)) - baseline
            print(f"peak memory grew by {grew / MiB:.0f} MiB")
            assert grew < 64 * MiB, f"peak memory grew by {grew / MiB:.0f} MiB"
            resends = (await client.get("/mesh/status")).json()["links"]["bravo"]["resends"]
            assert resends > 0  # the mirrors did cut fragments, and they were sent again
            await _until_no_body_files(tmp_path / "state", ["alpha", "bravo"])
            assert await alpha.stop() == 130 and await bravo.stop() == 130
    assert "Traceback" not in alpha.text + bravo.text


async def _until_no_body_files(state: Path, peers: list[str]) -> None:
    """Fragments sent are acknowledged, so alpha's outgoing body files go, and bravo's
    request bodies go once answered; what is left are the responses alpha keeps."""
    while True:
        left = [p.name for name in peers for p in (state / name / "bodies").iterdir()]
        if all(name.startswith("in-bravo-") for name in left):
            return
        await trio.sleep(0.2)
