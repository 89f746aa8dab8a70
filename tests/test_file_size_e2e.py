"""A pipe that cuts big files: the link learns a file size the pipe carries whole, and a
1 GiB body still crosses, byte-identical (`mesh mirror --truncate-above`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import trio

from mesh.http.asgi import body_chunks, lifespan
from mesh.pipe.bodies import Bodies, Body
from tests.helpers.ports import Ports
from tests.helpers.processes import mirror
from tests.test_bodies_e2e import roster as bodies_roster
from tests.test_forwarder import started

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


def roster(tmp_path: Path, ports: Ports) -> Path:
    """The body tests' roster, with files as big as a link allows to begin with."""
    return bodies_roster(
        tmp_path, ports, heartbeat="500ms", fragment_size="256MiB", body_limit="2GiB"
    )


async def test_a_gib_crosses_a_pipe_that_cuts_files_of_64_mib_and_the_size_is_learned(
    tmp_path: Path, ports: Ports
) -> None:
    """A 1 GiB body sent whole (in files as big as the link allows, 256 MiB: a body
    that arrives streams out in smaller pieces, but one sent whole, or a backlog after
    an outage, fills them) through a mirror that cuts 90% of files of 64 MiB or more:
    it crosses byte-identical, and alpha's link learns a file size under 64 MiB. The
    peers run in this process (the body is handed to alpha's requests whole), the
    mirrors as processes of their own."""
    path = roster(tmp_path, ports)
    with trio.fail_after(300):
        async with (
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--truncate-above", "64MiB", "0.9"),
            mirror(tmp_path / "b-out", tmp_path / "a-in"),
            started(path, digest, ports.upstream) as peers,
        ):
            alpha = peers["alpha"]
            body, expected = await trio.to_thread.run_sync(_body_file, alpha.bodies)
            request_id = await alpha.requests.submit("bravo", "POST", "/digest", (), body, 280)
            record = await alpha.requests.wait(request_id, 280)
            assert record is not None and record.status == 200, record
            assert record.body == expected.encode()
            learned = alpha.links.status()["bravo"]
            assert learned["file_size"] < 64 * MiB and learned["resends"] > 0, learned


def _body_file(bodies: Bodies) -> tuple[Body, str]:
    """A body file of `BODY` random bytes among `bodies`, and what `digest` answers for
    it. Blocking."""
    name, fd = bodies.create()
    sha = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for _ in range(BODY // (16 * MiB)):
            piece = os.urandom(16 * MiB)
            sha.update(piece)
            out.write(piece)
    return Body(b"", name, BODY), f"{BODY} {sha.hexdigest()}"
