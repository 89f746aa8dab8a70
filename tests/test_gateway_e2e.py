"""HTTP through `mesh up` processes to a real upstream HTTP server on loopback."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
import watchfiles
from hypercorn.config import Config
from hypercorn.trio import serve

from mesh.http.asgi import lifespan, read_body
from tests.helpers.ports import Ports
from tests.helpers.processes import (
    MeshProcess,
    PeerProcess,
    keygen,
    mesh_up,
    mirror,
    peer,
    write_roster,
)
from tests.helpers.raw_upstream import read_head


class Upstream:
    """A small ASGI service: echoes requests, answers chosen statuses, counts POSTs."""

    def __init__(self) -> None:
        self.posts: Counter[str] = Counter()
        self.header_names: list[bytes] = []  # of the last request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 30)
        self.header_names = [name for name, _ in scope["headers"]]
        path = scope["path"]
        if scope["method"] == "POST" and path == "/count":
            self.posts[body.decode()] += 1
        status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
        if path.startswith(("/big/", "/gzip")):
            await self.special(scope, send)
            return
        headers = [
            (b"x-echo-method", scope["method"].encode()),
            (b"x-echo-query", scope["query_string"]),
            (b"content-type", b"application/octet-stream"),
        ]
        headers += [(b"x-got-" + n, v) for n, v in scope["headers"] if n.startswith(b"x-")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def special(scope: dict[str, Any], send: Any) -> None:
        """``/big/N``: N bytes (HEAD: only their length); ``/gzip``: a gzip-encoded body."""
        if scope["path"] == "/gzip":
            body = gzip.compress(b"squeezed " * 1000)
            headers = [(b"content-encoding", b"gzip"), (b"content-type", b"text/plain")]
        else:
            body = bytes(range(256)) * (int(scope["path"].rsplit("/", 1)[1]) // 256)
            headers = [(b"content-type", b"application/octet-stream")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


@asynccontextmanager
async def upstream_served(port: int) -> AsyncIterator[Upstream]:
    app = Upstream()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        yield app
        nursery.cancel_scope.cancel()


def roster(tmp_path: Path, ports: Ports) -> Path:
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(
                ports.alpha,
                ["bravo"],
                body_limit="4MiB",
                callbacks=[f"http://127.0.0.1:{ports.receiver}/*"],
            ),
            "bravo": peer(
                ports.bravo,
                ["alpha"],
                upstream=f"http://127.0.0.1:{ports.upstream}",
                body_limit="4MiB",
            ),
            "carol": peer(ports.carol, []),
        },
        defaults={"heartbeat": "1s", "linger": "2ms"},
    )
    keygen(path)
    return path


@asynccontextmanager
async def gateway(
    tmp_path: Path, ports: Ports
) -> AsyncIterator[tuple[Upstream, httpx.AsyncClient]]:
    async with upstream_served(ports.upstream) as app, mesh_up(roster(tmp_path, ports)) as mesh:
        await ready(mesh)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=30) as c:
            yield app, c
        assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text


async def ready(mesh: MeshProcess) -> None:
    for name in ("alpha", "bravo", "carol"):
        await mesh.wait_for(f"{name}: HTTP ingress")


async def test_answers_match_a_direct_call_byte_for_byte(tmp_path: Path, ports: Ports) -> None:
    body = os.urandom(1 << 20) + b"\xff\xfe not utf-8"
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            direct = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.upstream}")
            for method, path, content in [
                ("GET", "/things?x=1&y=%C3%A9", b""),
                ("POST", "/upload", body),
                ("PUT", "/things/1", b'{"a": 1}'),
                ("DELETE", "/things/1", b""),
                ("GET", "/status/404", b""),
                ("POST", "/status/418", b"teapot"),
                ("GET", "/status/500", b""),
            ]:
                headers = {"x-trace": "abc", "connection": "keep-alive"}
                via = await client.request(
                    method, "/bravo" + path, content=content, headers=headers
                )
                plain = await direct.request(method, path, content=content, headers=headers)
                assert via.status_code == plain.status_code, path
                assert via.content == plain.content, path
                for name in ("x-echo-method", "x-echo-query", "x-got-x-trace", "content-type"):
                    assert via.headers.get(name) == plain.headers.get(name), (path, name)
                assert len(via.headers["mesh-request-id"]) == 32
            await direct.aclose()


async def test_no_header_is_added_that_the_caller_did_not_send(
    tmp_path: Path, ports: Ports
) -> None:
    """A bare request reaches the upstream with no Accept, Accept-Encoding or User-Agent
    of mesh's own (a caller that did not ask for gzip must not get it)."""
    with trio.fail_after(30):
        async with gateway(tmp_path, ports) as (app, _):
            stream = await trio.open_tcp_stream("127.0.0.1", ports.alpha)
            await stream.send_all(b"GET /bravo/bare HTTP/1.1\r\nHost: alpha\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += await stream.receive_some()
            await stream.aclose()
            assert reply.startswith(b"HTTP/1.1 200")
            names = set(app.header_names)
            assert {b"host", b"via"} <= names  # and hop-by-hop ones (connection)
            assert not names & {b"accept", b"accept-encoding", b"user-agent"}


async def test_respond_async_then_poll(tmp_path: Path, ports: Ports) -> None:
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            reply = await client.post(
                "/bravo/echo", content=b"later", headers={"prefer": "respond-async"}
            )
            assert reply.status_code == 202 and reply.headers["retry-after"]
            location = reply.headers["location"]
            for _ in range(200):
                answer = await client.get(location)
                if answer.status_code != 202:
                    break
                await trio.sleep(0.05)  # what a polling client does
            assert answer.status_code == 200 and answer.content == b"later"
            status = (await client.get(location.removesuffix("/response"))).json()
            states = [e["state"] for e in status["events"]]
            assert states == ["stored", "sent", "delivered", "forwarded", "responded", "completed"]


async def test_errors_are_problems_and_nothing_is_half_stored(tmp_path: Path, ports: Ports) -> None:
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            for path, status in [("/nobody/x", 404), ("/carol/x", 403)]:
                reply = await client.get(path)
                assert reply.status_code == status
                assert reply.headers["content-type"] == "application/problem+json"
            reply = await client.post("/bravo/big", content=b"x" * (5 << 20))
            assert reply.status_code == 413
            status = (await client.get("/mesh/status")).json()
            assert status["links"]["bravo"]["sent"] == 0


async def files_made(folder: Path, action: Callable[[], Awaitable[None]]) -> list[str]:
    """The names of files made or removed in `folder` while `action` ran: inotify sees
    even a file that came and went. Marker files make sure the watcher is ready before
    `action` and has seen everything after it."""
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        marks = trio.open_memory_channel[str](10)

        async def watch() -> None:
            async for changes in watchfiles.awatch(folder, debounce=10, step=5):
                for _, name in changes:
                    seen.append(Path(name).name)
                    if Path(name).name.startswith("mark-"):
                        await marks[0].send(Path(name).name)

        nursery.start_soon(watch)
        for mark in ("mark-before", "mark-after"):
            if mark == "mark-after":
                await action()
            while True:
                (folder / mark).touch()
                with trio.move_on_after(0.5):
                    if await marks[1].receive() == mark:
                        break
        nursery.cancel_scope.cancel()
    for mark in ("mark-before", "mark-after"):
        os.unlink(folder / mark)
    return [name for name in seen if not name.startswith("mark-")]


async def test_a_body_declared_over_the_limit_is_refused_without_touching_the_disk(
    tmp_path: Path, ports: Ports
) -> None:
    """A body whose Content-Length is over alpha's body_limit is answered 413 without a
    byte of it written (else any client could make a peer write body_limit bytes per
    request): alpha's body folder sees no file come and go."""
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):

            async def post() -> None:
                reply = await client.post("/bravo/big", content=b"x" * (5 << 20))
                assert reply.status_code == 413

            assert await files_made(tmp_path / "state" / "alpha" / "bodies", post) == []


async def test_a_response_declared_over_the_limit_is_refused_without_touching_the_disk(
    tmp_path: Path, ports: Ports
) -> None:
    """The same for an upstream's response: over bravo's body_limit, it is a 502 and
    not a byte of it is kept at bravo, nor any of it sent."""
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):

            async def get() -> None:
                reply = await client.get("/bravo/big/5000000")
                assert reply.status_code == 502, reply.text
                assert "body_limit" in reply.json()["title"]

            assert await files_made(tmp_path / "state" / "bravo" / "bodies", get) == []


async def test_each_post_is_executed_exactly_once(tmp_path: Path, ports: Ports) -> None:
    with trio.fail_after(90):
        async with gateway(tmp_path, ports) as (app, client):

            async def post(i: int) -> None:
                reply = await client.post("/bravo/count", content=str(i).encode())
                assert reply.status_code == 200

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(post, i)
    assert app.posts == Counter({str(i): 1 for i in range(200)})


async def test_the_forward_proxy_form_is_the_same_call(tmp_path: Path, ports: Ports) -> None:
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, _client):
            proxy = f"http://127.0.0.1:{ports.alpha}"
            async with httpx.AsyncClient(proxy=proxy, timeout=30) as client:
                reply = await client.post("http://bravo/echo?q=1", content=b"via proxy")
            assert reply.status_code == 200 and reply.content == b"via proxy"
            assert reply.headers["x-echo-query"] == "q=1"
            if shutil.which("curl"):
                curl = await trio.run_process(
                    [
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-x",
                        proxy,
                        "http://bravo:80/status/418",
                    ],
                    capture_stdout=True,
                )
                assert curl.stdout == b"418"


async def test_killing_the_far_peer_mid_burst_executes_no_post_twice(
    tmp_path: Path, ports: Ports
) -> None:

    path = roster(tmp_path, ports)
    alpha = PeerProcess(path, "alpha", tmp_path / "alpha.log")
    bravo = PeerProcess(path, "bravo", tmp_path / "bravo.log")
    answers: dict[str, tuple[int, str | None]] = {}
    try:
        with trio.fail_after(120):
            async with (
                upstream_served(ports.upstream) as app,
                httpx.AsyncClient(timeout=90) as client,
            ):
                await alpha.start()
                await bravo.start()
                await alpha.ready(client, ports.alpha)
                await bravo.ready(client, ports.bravo)

                async def post(i: int) -> None:
                    reply = await client.post(
                        f"http://127.0.0.1:{ports.alpha}/bravo/count",
                        content=str(i).encode(),
                        headers={"mesh-timeout": "80"},
                    )
                    answers[str(i)] = (reply.status_code, reply.headers.get("mesh-outcome"))

                async with trio.open_nursery() as nursery:
                    for i in range(300):
                        nursery.start_soon(post, i)
                    await trio.sleep(0.3)  # the burst is under way
                    await bravo.kill()
                    await bravo.start()
                await alpha.ready(client, ports.alpha)
                await bravo.ready(client, ports.bravo)
            assert await alpha.stop() == 130
            assert await bravo.stop() == 130
    finally:
        alpha.kill_if_running()
        bravo.kill_if_running()
    assert len(answers) == 300, "every request is answered"
    assert max(app.posts.values()) == 1, "a POST was executed twice"
    for body, (status, outcome) in answers.items():
        if status == 200:
            assert app.posts[body] == 1
        else:
            assert (status, outcome) == (502, "unknown"), (body, status)
    logs = (tmp_path / "alpha.log").read_text() + (tmp_path / "bravo.log").read_text()
    assert "Traceback" not in logs
    print(f"\n{sum(s == 502 for s, _ in answers.values())} of 300 answered 'outcome unknown'")


class Receiver:
    """Takes callback and event POSTs; refuses the first `fail` of them with a 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.grew = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive, 1 << 30)
        status = 200
        if self.fail > 0:
            self.fail, status = self.fail - 1, 500
        else:
            headers = {n.decode(): v.decode() for n, v in scope["headers"]}
            self.got.append((scope["path"], headers, body))
            self.grew.set()
            self.grew = trio.Event()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def wait_for(self, count: int) -> None:
        while len(self.got) < count:
            await self.grew.wait()


async def test_callbacks_and_events_are_posted_and_retried(tmp_path: Path, ports: Ports) -> None:
    receiver = Receiver(fail=2)
    config = Config()
    config.bind = [f"127.0.0.1:{ports.receiver}"]
    config.accesslog = None
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, receiver, config))  # type: ignore[arg-type]
            async with gateway(tmp_path, ports) as (_, client):
                reply = await client.post(
                    "/bravo/echo",
                    content=b"call me back",
                    headers={
                        "mesh-callback": f"http://127.0.0.1:{ports.receiver}/cb",
                        "mesh-events": f"http://127.0.0.1:{ports.receiver}/ev",
                    },
                )
                assert reply.status_code == 202
                request_id = reply.headers["mesh-request-id"]
                await receiver.wait_for(7)
                refused = await client.get(
                    "/bravo/x", headers={"mesh-callback": "http://10.0.0.1/steal"}
                )
                assert refused.status_code == 403
                assert refused.headers["content-type"] == "application/problem+json"
            nursery.cancel_scope.cancel()
    events = [json.loads(b)["state"] for p, _, b in receiver.got if p == "/ev"]
    assert events == ["stored", "sent", "delivered", "forwarded", "responded", "completed"]
    [(_, headers, body)] = [g for g in receiver.got if g[0] == "/cb"]
    assert body == b"call me back" and headers["mesh-request-id"] == request_id
    assert headers["mesh-status"] == "200" and headers["x-echo-method"] == "POST"


async def test_the_events_websocket_shows_every_step_in_order(tmp_path: Path, ports: Ports) -> None:
    from trio_websocket import open_websocket_url

    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            url = f"ws://127.0.0.1:{ports.alpha}/mesh/events"
            async with open_websocket_url(url) as socket:
                reply = await client.post("/bravo/echo", content=b"watch me")
                assert reply.status_code == 200
                request_id = reply.headers["mesh-request-id"]
                states = []
                while states[-1:] != ["completed"]:
                    event = json.loads(await socket.get_message())
                    assert event["request_id"] == request_id
                    states.append(event["state"])
            status = (await client.get(f"/mesh/requests/{request_id}")).json()
    expected = ["stored", "sent", "delivered", "forwarded", "responded", "completed"]
    assert states == expected
    assert [e["state"] for e in status["events"]] == expected


async def test_head_gzip_and_big_responses_come_through_as_given(
    tmp_path: Path, ports: Ports
) -> None:
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            direct = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.upstream}")
            for method, path in [
                ("HEAD", "/big/3000000"),
                ("GET", "/gzip"),
                ("GET", "/big/3000000"),
            ]:
                via = await client.request(method, "/bravo" + path)
                plain = await direct.request(method, path)
                assert via.status_code == plain.status_code == 200, path
                assert via.content == plain.content, path
                for name in ("content-length", "content-encoding", "content-type"):
                    assert via.headers.get(name) == plain.headers.get(name), (path, name)
            await direct.aclose()


async def test_a_pipe_that_cannot_be_written_is_a_503_until_it_can(
    tmp_path: Path, ports: Ports
) -> None:
    pipe_dir, moved = tmp_path / "pipe", tmp_path / "pipe.away"
    with trio.fail_after(60):
        async with gateway(tmp_path, ports) as (_, client):
            await trio.to_thread.run_sync(pipe_dir.rename, moved)
            await trio.to_thread.run_sync(pipe_dir.write_text, "not a folder")
            first = await client.post(
                "/bravo/echo", content=b"waits", headers={"prefer": "respond-async"}
            )
            assert first.status_code == 202  # durable; only writing it out fails
            for _ in range(200):
                status = (await client.get("/mesh/status")).json()
                if status["pipe_error"]:
                    break
                await trio.sleep(0.05)  # until the writer has tried and failed
            assert status["pipe_error"] and status["requests"] == {"stored": 1}
            refused = await client.post("/bravo/echo", content=b"refused")
            assert refused.status_code == 503
            assert refused.headers["content-type"] == "application/problem+json"
            assert (await client.get("/mesh/status")).json()["requests"] == {"stored": 1}
            await trio.to_thread.run_sync(pipe_dir.unlink)
            await trio.to_thread.run_sync(moved.rename, pipe_dir)
            location = first.headers["location"]
            for _ in range(400):
                answer = await client.get(location)
                if answer.status_code == 200:
                    break
                await trio.sleep(0.05)  # a polling client
            assert answer.content == b"waits"


async def test_500_posts_through_faulty_mirrors_run_exactly_once(
    tmp_path: Path, ports: Ports
) -> None:
    faults = [
        "--truncate",
        "0.1",
        "--drop",
        "0.05",
        "--duplicate",
        "0.05",
        "--reorder",
        "--slow-write",
    ]
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox="a-out", inbox="a-in"),
            "bravo": peer(
                ports.bravo,
                ["alpha"],
                outbox="b-out",
                inbox="b-in",
                upstream=f"http://127.0.0.1:{ports.upstream}",
            ),
        },
        defaults={"heartbeat": "1s", "resend_after": "4s", "settle": "300ms", "linger": "100ms"},
    )
    keygen(path)
    for folder in ("a-out", "b-out", "a-in", "b-in"):
        (tmp_path / folder).mkdir()
    answers: Counter[int] = Counter()
    with trio.fail_after(240):
        async with (
            upstream_served(ports.upstream) as app,
            mesh_up(path) as mesh,
            mirror(tmp_path / "a-out", tmp_path / "b-in", "--seed", "3", *faults),
            mirror(tmp_path / "b-out", tmp_path / "a-in", "--seed", "4", *faults),
            httpx.AsyncClient(timeout=200) as client,
        ):
            await mesh.wait_for("alpha: HTTP ingress")
            await mesh.wait_for("bravo: HTTP ingress")
            queue = list(range(500))

            async def caller() -> None:
                while queue:
                    i = queue.pop()
                    reply = await client.post(
                        f"http://127.0.0.1:{ports.alpha}/bravo/count",
                        content=str(i).encode(),
                        headers={"mesh-timeout": "180"},
                    )
                    answers[reply.status_code] += 1
                    assert reply.status_code == 200 and reply.content == str(i).encode()

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(caller)
    assert answers == Counter({200: 500})
    assert app.posts == Counter({str(i): 1 for i in range(500)})


async def test_mesh_up_can_serve_an_echo_service_to_call(tmp_path: Path, ports: Ports) -> None:
    path = roster(tmp_path, ports)
    with trio.fail_after(30):
        async with mesh_up(path, extra=("--echo", f"127.0.0.1:{ports.upstream}")) as mesh:
            await mesh.wait_for("echo service on")
            await mesh.wait_for("alpha: HTTP ingress")
            async with httpx.AsyncClient() as client:
                reply = await client.post(
                    f"http://127.0.0.1:{ports.alpha}/bravo/hello?x=1", content=b"\xff binary"
                )
            assert await mesh.stop() == 130
    echoed = reply.json()
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("POST", "/hello", "x=1")
    assert echoed["body"] == {"base64": "/yBiaW5hcnk="}
    assert any(h.startswith("via: 1.1 mesh-bravo") for h in echoed["headers"])


class Dropper:
    """A raw TCP upstream that hangs up on the first `drops` requests without answering,
    then answers ``200 ok``; it counts the requests it saw, by method."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.seen: Counter[str] = Counter()

    async def handle(self, stream: trio.SocketStream) -> None:
        data = await read_head(stream)
        if data is None:
            return
        self.seen[data.split(b" ", 1)[0].decode()] += 1
        if self.drops > 0:
            self.drops -= 1
        else:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
        await stream.aclose()


async def test_retries_back_off_and_a_post_is_never_sent_twice(
    tmp_path: Path, ports: Ports
) -> None:
    dropper = Dropper(drops=3)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(trio.serve_tcp, dropper.handle, ports.upstream, host="127.0.0.1")
            )
            path = roster(tmp_path, ports)
            async with mesh_up(path) as mesh:
                await ready(mesh)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}") as c:
                    got = await c.get("/bravo/x")  # dropped three times, then answered
                    assert got.status_code == 200 and got.content == b"ok"
                    dropper.drops = 1_000_000
                    posted = await c.post("/bravo/x", content=b"once")
                assert await mesh.stop() == 130
            nursery.cancel_scope.cancel()
    assert dropper.seen["GET"] == 4
    assert posted.status_code == 502 and posted.headers["mesh-outcome"] == "unknown"
    assert dropper.seen["POST"] == 1


async def test_past_its_deadline_a_request_is_a_504_and_a_refusing_upstream_a_502(
    tmp_path: Path, ports: Ports
) -> None:
    """alpha's `request_deadline` bounds a request's life: one that reaches bravo after it
    is never forwarded (504); one whose upstream refuses connections is retried until
    it, then answered 502."""
    nobody_there = f"http://127.0.0.1:{ports.upstream}"  # a free port nobody listens on
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], request_deadline="1500ms"),
            "bravo": peer(ports.bravo, ["alpha"], upstream=nobody_there),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms"},
    )
    keygen(path)
    with trio.fail_after(30):
        async with (
            mesh_up(path, "alpha") as alpha,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=20) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            late = await client.post("/bravo/x", content=b"1", headers={"prefer": "respond-async"})
            assert late.status_code == 202
            await trio.sleep(2.0)  # bravo is down while alpha's 1.5 s deadline passes
            async with mesh_up(path, "bravo") as bravo:
                await bravo.wait_for("bravo: HTTP ingress")
                started = time.monotonic()
                refused = await client.post(
                    "/bravo/x", content=b"2", headers={"mesh-timeout": "20"}
                )
                assert refused.status_code == 502, refused.text
                assert refused.json()["title"].startswith("upstream failed")
                assert 1.0 < time.monotonic() - started < 10  # retried until the deadline
                answer = await client.get(late.headers["location"])  # answered before that
                assert answer.status_code == 504, answer.text
                expired = ("request expired in transit", "the request's deadline passed before")
                assert answer.json()["title"].startswith(expired)  # bravo's word or alpha's
