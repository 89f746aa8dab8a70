"""The status URL of a request answered later (``GET /mesh/requests/{id}/response``):
``202`` while the answer is pending, at once by default; with ``Prefer: wait=N`` (RFC
7240) or ``Mesh-Timeout: N`` the answer as soon as it comes within N seconds, the
smallest N when several are given, and nothing more for a caller that left. Peers in
this process, real HTTP."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import httpx
import trio

from tests.test_forwarder import Upstream, mesh

PACE = 3.0  # seconds the upstream takes to answer


async def _accepted(client: httpx.AsyncClient) -> str:
    """The status URL of a new request (answered `PACE` seconds on)."""
    accepted = await client.post("/bravo/x", content=b"1", headers={"prefer": "respond-async"})
    assert accepted.status_code == 202
    return str(accepted.headers["location"])


async def test_prefer_wait_holds_the_status_url_until_the_answer_comes(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"later", delay=PACE)) as peers:
            base = f"http://{peers['alpha'].settings.listen}"
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as client:
                location = await _accepted(client)
                assert (await client.get(location)).status_code == 202  # at once
                for asked in ({"prefer": "wait=0.3"}, {"mesh-timeout": "0.3"}):
                    started = trio.current_time()
                    pending = await client.get(location, headers=asked)
                    assert pending.status_code == 202 and "retry-after" in pending.headers
                    assert trio.current_time() - started >= 0.3  # it waited
                twice = [("prefer", "wait=0.2"), ("prefer", "wait=20")]  # the smaller holds
                assert (await client.get(location, headers=twice)).status_code == 202
                answer = await client.get(location, headers={"prefer": "wait=20"})
                assert answer.status_code == 200 and answer.content == b"later"
                bad = await client.get(location, headers={"prefer": "wait=soon"})
                assert bad.status_code == 400


class _Logged(logging.Handler):
    """Sets `seen` once a line containing `text` is logged (from the trio thread)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_a_caller_that_leaves_the_status_url_is_let_go(tmp_path: Path) -> None:
    """The wait ends when its caller hangs up: its handler, and so its access line
    (status 0: none was sent), end at once, not when the answer comes."""
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"later", delay=20)) as peers:
            listen = peers["alpha"].settings.listen
            async with httpx.AsyncClient(base_url=f"http://{listen}", trust_env=False) as client:
                location = await _accepted(client)
            logged, log = _Logged(f"GET {location} 0 "), logging.getLogger("mesh")
            level = log.level
            log.addHandler(logged)
            log.setLevel(logging.INFO)
            try:
                stream = await trio.open_tcp_stream(listen.host, listen.port)
                head = f"GET {location} HTTP/1.1\r\nhost: {listen}\r\nprefer: wait=60\r\n\r\n"
                await stream.send_all(head.encode())
                await stream.aclose()
                with trio.fail_after(5):
                    await logged.seen.wait()
            finally:
                log.removeHandler(logged)
                log.setLevel(level)


async def test_another_callers_status_url_is_not_there_however_long_it_waits(
    tmp_path: Path,
) -> None:
    """Only the request's caller may read it; another gets a 404 at once, waiting or not
    (here, the peer's two tokens: two callers)."""
    tokens = {"one": "t" * 32, "two": "u" * 32}
    digests = {name: hashlib.sha256(token.encode()).hexdigest() for name, token in tokens.items()}
    alpha = {"callers": {name: {"token_sha256": d} for name, d in digests.items()}}
    with trio.fail_after(30):
        async with mesh(tmp_path, Upstream(200, b"later", delay=PACE), alpha=alpha) as peers:
            base = f"http://{peers['alpha'].settings.listen}"
            one, two = ({"proxy-authorization": f"Bearer {tokens[n]}"} for n in ("one", "two"))
            async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as client:
                accepted = await client.post(
                    "/bravo/x", content=b"1", headers={**one, "prefer": "respond-async"}
                )
                location = accepted.headers["location"]
                started = trio.current_time()
                other = await client.get(location, headers={**two, "prefer": "wait=20"})
                assert other.status_code == 404 and trio.current_time() - started < PACE
                mine = await client.get(location, headers={**one, "prefer": "wait=20"})
                assert mine.status_code == 200
