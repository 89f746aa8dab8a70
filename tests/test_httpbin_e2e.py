"""Through 3 peers to httpbin, an upstream nobody here wrote, served as its own process."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.helpers.ports import free_ports
from tests.helpers.processes import keygen, mesh_up, peer, stop_group, write_roster


@asynccontextmanager
async def httpbin(port: int) -> AsyncIterator[str]:
    hypercorn = Path(sys.executable).with_name("hypercorn")
    process = await trio.lowlevel.open_process(
        [str(hypercorn), "--bind", f"127.0.0.1:{port}", "httpbin:app"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stop_group ends the worker too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    await client.get(url + "/status/200")
                    break
                except httpx.TransportError:
                    await trio.sleep(0.05)  # still starting
        yield url
    finally:
        await stop_group(process)


def three_peers(tmp_path: Path, ports: tuple[int, int, int], upstream: str) -> Path:
    """alpha, bravo and carol on `ports`; bravo in front of `upstream`."""
    alpha, bravo, carol = ports
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha, ["bravo", "carol"]),
            "bravo": peer(bravo, ["alpha"], upstream=upstream),
            "carol": peer(carol, ["alpha"]),
        },
        defaults={"heartbeat": "1s", "linger": "2ms"},
    )
    keygen(path)
    return path


async def test_httpbin_answers_the_same_direct_and_through_the_mesh(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    httpbin_port, alpha, bravo, carol = free_ports(4)
    with trio.fail_after(90):
        async with (
            httpbin(httpbin_port) as url,
            mesh_up(three_peers(tmp_path, (alpha, bravo, carol), url)) as mesh,
        ):
            for name in ("alpha", "bravo", "carol"):
                await mesh.wait_for(f"{name}: HTTP ingress")
            async with (
                httpx.AsyncClient(base_url=url, timeout=30) as direct,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{alpha}/bravo", timeout=30) as via,
            ):

                async def both(method: str, path: str, **kw: object) -> tuple[httpx.Response, ...]:
                    a = await direct.request(method, path, **kw)  # type: ignore[arg-type]
                    b = await via.request(method, path, **kw)  # type: ignore[arg-type]
                    assert a.status_code == b.status_code, path
                    assert a.headers.get("content-type") == b.headers.get("content-type"), path
                    return a, b

                # Byte for byte where the answer does not echo the request's headers.
                for method, path in [
                    ("GET", "/bytes/65536?seed=7"),
                    ("GET", "/status/404"),
                    ("GET", "/status/418"),
                    ("GET", "/status/500"),
                    ("GET", "/encoding/utf8"),
                    ("GET", "/base64/w6nDqMOn"),
                    ("HEAD", "/bytes/1000?seed=1"),
                    ("DELETE", "/status/204"),
                ]:
                    a, b = await both(method, path)
                    assert a.content == b.content, path
                    assert a.headers.get("content-length") == b.headers.get("content-length")
                # Echoing endpoints: what they echo of the request must be the same.
                a, b = await both("GET", "/get?x=1&y=%C3%A9")
                assert a.json()["args"] == b.json()["args"] == {"x": "1", "y": "é"}
                a, b = await both("POST", "/post", json={"order": 1, "items": ["ä", 2]})
                assert a.json()["json"] == b.json()["json"] == {"order": 1, "items": ["ä", 2]}
                a, b = await both("PUT", "/put", content=b"\xff\xfe\x00 not utf-8")
                assert a.json()["data"] == b.json()["data"]
                a, b = await both("POST", "/anything", content=big)  # several MiB back
                data = b.json()["data"]
                assert data == a.json()["data"]
                assert base64.b64decode(data.split(",", 1)[1]) == big
                a, b = await both("GET", "/gzip")
                assert b.headers["content-encoding"] == "gzip" and b.json()["gzipped"]
            assert await mesh.stop() == 130
