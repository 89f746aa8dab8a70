"""Who may call and what may be called, tried against `mesh up` on loopback with real
clients (httpx, curl): alpha has callers, bravo serves alpha only some of its upstream."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from mesh.http.asgi import lifespan, read_body
from mesh.http.callbacks import Signed, verify
from tests.helpers.ports import Ports
from tests.helpers.processes import (
    MeshProcess,
    keygen,
    mesh_up,
    peer,
    run_mesh,
    served,
    write_roster,
)

CALLERS = ("billing", "reader", "ops")


class Upstream:
    """Counts every call it gets and keeps the headers of each."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 20)
        self.calls.append((scope["method"], scope["path"], list(scope["headers"])))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"upstream:" + body})


@dataclass
class Receiver:
    """A callback receiver: every POST it got, with its headers."""

    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)
    redirect_to: str = ""  # where ``/redirect`` sends a caller

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 20)
        headers = {n.decode(): v.decode() for n, v in scope["headers"]}
        self.got.append((scope["path"], headers, body))
        self.arrived.set()
        if scope["path"] == "/redirect":
            location = [(b"location", self.redirect_to.encode())]
            await send({"type": "http.response.start", "status": 307, "headers": location})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Secured:
    mesh: MeshProcess
    upstream: Upstream
    receiver: Receiver
    tokens: dict[str, str]
    ports: Ports
    state: Path

    @property
    def alpha(self) -> str:
        return f"http://127.0.0.1:{self.ports.alpha}"

    def bearer(self, caller: str, header: str = "proxy-authorization") -> dict[str, str]:
        return {header: f"Bearer {self.tokens[caller]}"}


def _roster(tmp_path: Path, ports: Ports, tokens: dict[str, str]) -> Path:
    def digest(name: str) -> str:
        return hashlib.sha256(tokens[name].encode()).hexdigest()

    callers = {
        "billing": {
            "token_sha256": digest("billing"),
            "may_call": ["bravo/orders/*", "GET bravo/*"],
        },
        "reader": {"token_sha256": digest("reader"), "may_call": ["GET *"]},
        "ops": {"token_sha256": digest("ops"), "admin": True},
    }
    alpha = peer(
        ports.alpha, ["bravo", "carol"], callers=callers, callbacks=[f"{ports.callbacks}/*"]
    )
    serves = {"alpha": ["GET /*", "POST /orders/*"]}
    upstream = f"http://127.0.0.1:{ports.upstream}"
    path = write_roster(
        tmp_path,
        {
            "alpha": alpha,
            "bravo": peer(ports.bravo, ["alpha"], upstream=upstream, serves=serves),
            "carol": peer(ports.carol, ["alpha"], upstream=upstream),
        },
        defaults={"heartbeat": "1s", "linger": "2ms"},
    )
    keygen(path)
    return path


@asynccontextmanager
async def secured(tmp_path: Path, ports: Ports) -> AsyncIterator[Secured]:
    tokens = {name: secrets.token_urlsafe(32) for name in CALLERS}
    upstream, receiver = Upstream(), Receiver()
    roster = _roster(tmp_path, ports, tokens)
    async with (
        served(upstream, ports.upstream),
        served(receiver, ports.receiver),
        mesh_up(roster) as mesh,
    ):
        for name in ("alpha", "bravo", "carol"):
            await mesh.wait_for(f"{name}: HTTP ingress")
        yield Secured(mesh, upstream, receiver, tokens, ports, tmp_path / "state")
        assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text
    _no_token_kept(mesh.text, tmp_path / "state", tokens)


def _no_token_kept(log: str, state: Path, tokens: dict[str, str]) -> None:
    """No token in any log line, nor in any file of the state (the database included)."""
    for token in tokens.values():
        assert token not in log
        for file in state.rglob("*"):
            if file.is_file():
                assert token.encode() not in file.read_bytes(), file


async def test_forwarded_calls_need_known_proxy_credentials(tmp_path: Path, ports: Ports) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh, httpx.AsyncClient(base_url=mesh.alpha) as c:
            none = await c.get("/bravo/orders/1")
            assert none.status_code == 407
            assert none.headers["proxy-authenticate"] == 'Basic realm="mesh"'
            assert none.headers["content-type"] == "application/problem+json"
            assert none.headers["mesh-problem"] == "alpha"  # made by mesh, not an upstream
            assert none.json()["title"] == "proxy credentials needed"
            wrong = await c.get("/bravo/orders/1", headers={"proxy-authorization": "Bearer nope"})
            assert wrong.status_code == 407
            assert wrong.json()["title"] == "unknown proxy credentials"
            tunnel = await c.request("CONNECT", "/bravo:443", headers=mesh.bearer("billing"))
            assert tunnel.status_code == 405 and "http://PEER/path" in tunnel.json()["detail"]
            own_header = await c.get(
                "/bravo/orders/1", headers=mesh.bearer("billing", "authorization")
            )
            assert own_header.status_code == 407  # Authorization is the upstream's, not mesh's
            swapped = _basic("reader", mesh.tokens["billing"])
            assert (await c.get("/bravo/orders/1", headers=swapped)).status_code == 407
            right = await c.get("/bravo/orders/1", headers=mesh.bearer("billing"))
            assert right.status_code == 200 and right.content == b"upstream:"
            basic = await c.get(
                "/bravo/orders/2", headers=_basic("billing", mesh.tokens["billing"])
            )
            assert basic.status_code == 200
        assert [call[:2] for call in mesh.upstream.calls] == [
            ("GET", "/orders/1"),
            ("GET", "/orders/2"),
        ]


def _basic(name: str, token: str) -> dict[str, str]:
    pair = base64.b64encode(f"{name}:{token}".encode()).decode()
    return {"proxy-authorization": f"Basic {pair}"}


async def test_proxy_urls_with_credentials_work_in_curl_and_httpx(
    tmp_path: Path, ports: Ports
) -> None:
    """The forms a user configures: ``curl -x http://NAME:TOKEN@host:port`` and an httpx
    client with that proxy URL; the caller's own Authorization reaches the upstream
    byte for byte, Proxy-Authorization never does."""
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh:
            token = mesh.tokens["billing"]
            proxy = f"http://billing:{token}@127.0.0.1:{ports.alpha}"
            own = "Basic dXNlcjpwYXNz, x-odd  spacing"
            curl = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "-x",
                    proxy,
                    "-H",
                    f"Authorization: {own}",
                    "-d",
                    "hi",
                    "-o",
                    "-",
                    "-w",
                    "%{http_code}",
                    "http://bravo/orders/7",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert curl.stdout == b"upstream:hi200", curl.stderr
            async with httpx.AsyncClient(proxy=proxy) as client:
                reply = await client.get("http://bravo/orders/8", headers={"authorization": own})
            assert reply.status_code == 200
            refused = await trio.run_process(
                [
                    "curl",
                    "-sS",
                    "-x",
                    f"http://127.0.0.1:{ports.alpha}",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://bravo/orders/9",
                ],
                capture_stdout=True,
                check=False,
            )
            assert refused.stdout == b"407"
        for _, _, headers in mesh.upstream.calls:
            assert (b"authorization", own.encode()) in headers
            assert b"proxy-authorization" not in dict(headers)
        assert len(mesh.upstream.calls) == 2


async def test_may_call_allows_and_refuses_by_peer_path_and_method(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh, httpx.AsyncClient(base_url=mesh.alpha) as c:
            billing = mesh.bearer("billing")
            cases = [
                ("POST", "/bravo/orders/1", 200),  # bravo/orders/*
                ("GET", "/bravo/catalog", 200),  # GET bravo/*
                ("POST", "/bravo/catalog", 403),  # by method
                ("PUT", "/bravo/accounts/1", 403),  # by path
                ("GET", "/carol/catalog", 403),  # by peer
                ("POST", "/bravo/orders/../accounts", 403),  # a dot segment matches no path
                ("POST", "/bravo/orders/%2e%2e/accounts", 403),
            ]
            for method, path, status in cases:
                reply = await c.request(method, path, headers=billing)
                assert reply.status_code == status, (method, path, reply.text)
                if status == 403:
                    assert reply.json()["title"] == "not allowed"
            assert (await c.get("/carol/x", headers=mesh.bearer("reader"))).status_code == 200
            assert (await c.get("/nobody/x", headers=billing)).status_code == 403
        assert [(m, p) for m, p, _ in mesh.upstream.calls] == [
            ("POST", "/orders/1"),
            ("GET", "/catalog"),
            ("GET", "/x"),
        ]


async def test_mesh_routes_need_admin_and_requests_their_owner(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh, httpx.AsyncClient(base_url=mesh.alpha) as c:
            for route in ("/mesh/status", "/mesh/messages"):
                none = await c.get(route)
                assert none.status_code == 401, route
                assert none.headers["www-authenticate"] == 'Bearer realm="mesh"'
                assert (
                    await c.get(route, headers=mesh.bearer("billing", "authorization"))
                ).status_code == 403
                assert (
                    await c.get(route, headers=mesh.bearer("ops", "authorization"))
                ).status_code == 200
                assert (await c.get(route, headers=mesh.bearer("ops"))).status_code == 200
            post = await c.post(
                "/mesh/messages/bravo", content=b"x", headers=mesh.bearer("billing")
            )
            assert post.status_code == 403
            made = await c.get(
                "/bravo/orders/5", headers={**mesh.bearer("billing"), "prefer": "respond-async"}
            )
            assert made.status_code == 202
            status = f"/mesh/requests/{made.json()['id']}"
            assert (await c.get(status)).status_code == 401
            for caller, code in (("billing", 200), ("reader", 404), ("ops", 200)):
                for path in (status, status + "/response"):
                    reply = await c.get(path, headers=mesh.bearer(caller, "authorization"))
                    assert reply.status_code in ((200, 202) if code == 200 else (404,)), caller
            other = await c.get("/mesh/requests/" + "0" * 32, headers=mesh.bearer("reader"))
            assert other.status_code == 404  # unknown and another's look the same
            assert (await c.get("/mesh/nothing")).status_code == 401  # no routes for strangers
            await mesh.mesh.wait_for("alpha: GET /mesh/nothing 401")
        for line in ("GET /mesh/status 403", "POST /mesh/messages/bravo 403"):
            assert re.search(f"alpha: {line} [0-9.]+ s by billing", mesh.mesh.text), line
        assert re.search("alpha: GET /mesh/status 200 [0-9.]+ s by ops", mesh.mesh.text)


async def test_the_events_websocket_wants_an_admin_and_its_own_origin(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh:
            url = f"ws://127.0.0.1:{ports.alpha}/mesh/events"
            admin = [("Authorization", f"Bearer {mesh.tokens['ops']}")]
            refusals = [
                ([], 401),
                ([("Authorization", f"Bearer {mesh.tokens['billing']}")], 403),
                ([*admin, ("Origin", "http://evil.example")], 403),
                ([*admin, ("Origin", f"http://127.0.0.1:{ports.bravo}")], 403),
            ]
            for headers, status in refusals:
                with pytest.raises(ConnectionRejected) as rejected:
                    async with open_websocket_url(url, extra_headers=headers):
                        pass
                assert rejected.value.status_code == status, headers
            own = [*admin, ("Origin", f"http://127.0.0.1:{ports.alpha}")]
            async with open_websocket_url(url, extra_headers=own) as socket:
                async with httpx.AsyncClient(base_url=mesh.alpha) as c:
                    headers = {**mesh.bearer("billing"), "prefer": "respond-async"}
                    await c.get("/bravo/orders/3", headers=headers)
                event = json.loads(await socket.get_message())
                assert event["state"] == "stored"


async def test_reading_messages_changes_nothing_and_ack_consumes(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh:
            bravo = f"http://127.0.0.1:{ports.bravo}"  # bravo has no callers: open
            async with httpx.AsyncClient() as c:
                ops = mesh.bearer("ops")
                for body in (b"one", b"two"):
                    sent = await c.post(
                        f"{mesh.alpha}/mesh/messages/bravo", content=body, headers=ops
                    )
                    assert sent.status_code == 202
                first = await _messages(c, bravo, 2)
                ids = [m["id"] for m in first["messages"]]
                again = await c.get(f"{bravo}/mesh/messages", params={"after": ids[-1]})
                assert again.json()["messages"] == []
                assert await _messages(c, bravo, 2) == first  # a GET consumed nothing
                ack = {"upto": ids[0], "epoch": first["epoch"]}
                assert (await c.post(f"{bravo}/mesh/messages/ack", json=ack)).status_code == 200
                left = (await c.get(f"{bravo}/mesh/messages")).json()["messages"]
                assert [m["id"] for m in left] == ids[1:]
                wrong = {"upto": ids[-1], "epoch": "another"}
                reply = await c.post(f"{bravo}/mesh/messages/ack", json=wrong)
                assert reply.json()["consumed"] is False
                bad = await c.post(f"{bravo}/mesh/messages/ack", content=b"{")
                assert bad.status_code == 400
                huge = 10**25  # past the store's integers: a 500 with a traceback, before
                for epoch in (first["epoch"], "another"):
                    over = {"upto": huge, "epoch": epoch}
                    reply = await c.post(f"{bravo}/mesh/messages/ack", json=over)
                    assert reply.status_code == 400, reply.text
                reply = await c.get(f"{bravo}/mesh/messages", params={"after": huge})
                assert reply.status_code == 400 and "after" in reply.json()["detail"]
        assert "Traceback" not in mesh.mesh.text


async def _messages(client: httpx.AsyncClient, base: str, count: int) -> dict[str, Any]:
    while True:
        reply = (await client.get(f"{base}/mesh/messages", params={"wait": 5})).json()
        if len(reply["messages"]) >= count:
            return dict(reply)


async def test_serves_refusal_is_a_403_that_never_reaches_the_upstream(
    tmp_path: Path, ports: Ports
) -> None:
    """billing may call bravo/orders/* with any method, but bravo serves alpha only GET
    and POST there: a DELETE comes back 403 from bravo, the request fails, its callback
    is called with the problem, and `mesh status` counts the refusal."""
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh, httpx.AsyncClient(base_url=mesh.alpha) as c:
            billing = mesh.bearer("billing")
            reply = await c.delete("/bravo/orders/1", headers=billing)
            assert reply.status_code == 403
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.headers["mesh-problem"] == "bravo"
            assert "does not serve DELETE /orders/1 to alpha" in reply.json()["title"]
            record = await c.get(
                f"/mesh/requests/{reply.headers['mesh-request-id']}", headers=billing
            )
            assert record.json()["state"] == "failed"
            callback = {**billing, "mesh-callback": f"{ports.callbacks}/cb"}
            assert (await c.delete("/bravo/orders/2", headers=callback)).status_code == 202
            await mesh.receiver.arrived.wait()
            path, headers, body = mesh.receiver.got[0]
            assert (path, headers["mesh-status"]) == ("/cb", "403")
            assert json.loads(body)["status"] == 403
            signed = Signed(int(time.time()), headers["mesh-request-id"], headers["mesh-status"])
            assert verify(mesh.tokens["billing"], headers["mesh-signature"], body, signed)
            assert not verify(mesh.tokens["ops"], headers["mesh-signature"], body, signed)
            # Counted with the answer, in one commit: so before alpha had the answer.
            status = await c.get(f"http://127.0.0.1:{ports.bravo}/mesh/status")
            assert status.json()["links"]["alpha"]["refused"] == 2
        assert mesh.upstream.calls == []
    shown = run_mesh("status", str(tmp_path / "roster.yaml"), "--json").stdout
    assert json.loads(shown)["peers"]["bravo"]["links"]["alpha"]["refused"] == 2


async def test_callback_urls_that_would_go_elsewhere_are_refused(
    tmp_path: Path, ports: Ports
) -> None:
    """Each bypass of ``callbacks: ["http://127.0.0.1:RECEIVER/*"]`` is a 403 at the
    ingress, before anything is stored; a receiver on 127.0.0.2 is never called."""
    elsewhere, mine = Receiver(), ports.callbacks
    other = f"127.0.0.2:{ports.receiver}"
    attempts = [
        f"http://127.0.0.1:{ports.receiver}@{other}/x",
        f"http://user@{other}/x",
        f"http://127.0.0.1:{ports.receiver}\\@{other}/x",
        f"http://127.0.0.1%40{other}/x",
        f"http://127.0.0.%32:{ports.receiver}/x",
        f"{mine}/x y",
        f"{mine}/x\ty",
        f"http://{other}/x",
        f"ftp://127.0.0.1:{ports.receiver}/x",
    ]
    with trio.fail_after(60):
        async with (
            secured(tmp_path, ports) as mesh,
            httpx.AsyncClient(base_url=mesh.alpha) as c,
            served(elsewhere, ports.receiver, "127.0.0.2"),
        ):
            for url in attempts:
                for header in ("mesh-callback", "mesh-events"):
                    headers = {**mesh.bearer("billing"), header: url}
                    reply = await c.post("/bravo/orders/1", headers=headers)
                    assert reply.status_code == 403, (url, header)
                    assert reply.json()["title"].endswith("URL not allowed")
            mesh.receiver.redirect_to = f"http://{other}/x"
            redirect = {**mesh.bearer("billing"), "mesh-callback": f"{mine}/redirect"}
            assert (await c.post("/bravo/orders/2", headers=redirect)).status_code == 202
            await mesh.receiver.arrived.wait()
        assert mesh.upstream.calls and len(mesh.upstream.calls) == 1
        assert elsewhere.got == []
        assert {path for path, _, _ in mesh.receiver.got} == {"/redirect"}


async def raw_status(port: int, head: bytes) -> int:
    """The status of the answer to a request head sent as it is, byte for byte."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        reply = b""
        while b"\r\n" not in reply:
            chunk = await stream.receive_some()
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


async def test_what_an_attacker_tried_is_refused_before_anything_is_stored(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with secured(tmp_path, ports) as mesh:
            token = mesh.tokens["billing"]
            auth = f"Proxy-Authorization: Bearer {token}\r\n".encode()
            heads = {
                b"GET //bravo/orders/1 HTTP/1.1\r\nHost: a\r\n" + auth: 400,
                b"GET /%62ravo/orders/1 HTTP/1.1\r\nHost: a\r\n" + auth: 400,
                b"GET /bravo%2Forders/1 HTTP/1.1\r\nHost: a\r\n" + auth: 400,
                b"GET http%3A//bravo/orders/1 HTTP/1.1\r\nHost: a\r\n": 400,  # no proxy form
                b"GET /bravo/orders/" + b"a" * 17000 + b" HTTP/1.1\r\nHost: a\r\n" + auth: 414,
                b"GET /bravo/orders/1 HTTP/1.1\r\nHost: a\r\n"
                + auth
                + b"".join(b"x-%d: 1\r\n" % n for n in range(1100)): 431,
                b"GET /bravo/orders/1 HTTP/1.1\r\nHost: a\r\n" + auth + auth: 400,  # twice
                b"GET /bravo/orders/1 HTTP/1.1\r\nHost: a\r\n"
                + auth
                + f"Authorization: Bearer {token}\r\n".encode(): 400,  # would go upstream
                b"GET /x HTTP/1.1\r\nHost: zulu.localhost\r\n": 407,  # no names for strangers
                b"GET /x HTTP/1.1\r\nHost: bravo.localhost\r\n": 407,
                b"GET /x HTTP/1.1\r\nHost: zulu.localhost\r\n" + auth: 403,  # as /zulu/x
            }
            for head, status in heads.items():
                assert await raw_status(ports.alpha, head + b"\r\n") == status, head[:60]
            billing = {"proxy-authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=mesh.alpha) as c:
                for path in ("/bravo/orders/1;.json", "/bravo/orders/x/..;/1"):
                    assert (await c.get(path, headers=billing)).status_code == 403, path
                override = {**billing, "x-http-method-override": "DELETE"}
                assert (await c.get("/bravo/orders/2", headers=override)).status_code == 200
        assert "Traceback" not in mesh.mesh.text
        [(_, path, headers)] = mesh.upstream.calls  # only the last one went
        assert path == "/orders/2" and b"x-http-method-override" not in dict(headers)


async def test_an_open_peer_answers_only_to_its_own_names(tmp_path: Path, ports: Ports) -> None:
    """bravo has no callers: a web page that rebinds its own name to 127.0.0.1 must not
    reach it, over HTTP or the WebSocket."""
    with trio.fail_after(60):
        async with secured(tmp_path, ports):
            bravo = f"http://127.0.0.1:{ports.bravo}"
            async with httpx.AsyncClient() as c:
                for host in ("attacker.example", f"attacker.example:{ports.bravo}"):
                    reply = await c.get(f"{bravo}/mesh/status", headers={"host": host})
                    assert reply.status_code == 421, host
                    assert (
                        await c.get(f"{bravo}/alpha/x", headers={"host": host})
                    ).status_code == 421
                for host in (f"127.0.0.1:{ports.bravo}", "localhost", "bravo.localhost"):
                    reply = await c.get(f"{bravo}/mesh/status", headers={"host": host})
                    assert reply.status_code == 200, host
            rebound = f"attacker.example:{ports.bravo}"
            upgrade = (
                f"GET /mesh/events HTTP/1.1\r\nHost: {rebound}\r\n"
                f"Origin: http://{rebound}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert await raw_status(ports.bravo, upgrade.encode()) == 421
            own = upgrade.replace(rebound, f"127.0.0.1:{ports.bravo}")
            assert await raw_status(ports.bravo, own.encode()) == 101
