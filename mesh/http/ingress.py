"""A peer's HTTP ingress (ASGI, served by hypercorn's trio worker at the peer's `listen`).

Routes so far:
- ``GET /mesh/status``: this peer's status as JSON (what `mesh status` shows).
- ``POST /mesh/messages/{peer}``: send the body to `peer` as an opaque message; ``202``
  with its id once it is durable.
- ``GET /mesh/messages?after=N&epoch=E&wait=S``: messages delivered here with an id above
  `N`, oldest first, waiting up to `S` seconds (at most 30) for one. Asking with `after=N`
  consumes every message up to `N`: a client that crashes before it asks again gets the
  same messages again, so none is lost and none is skipped. Ids count within this peer's
  epoch (given in every reply): a cursor from another epoch (the peer's state was
  created anew) consumes nothing and reads from the start.

Errors are ``application/problem+json``. The body limit is enforced while reading
(hypercorn sets none for ASGI apps).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import logging
import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..config.roster import Address
from ..errors import ConfigError, leaves
from ..pipe.bodies import Bodies, Body, BodyTooLarge
from ..pipe.links import BodyStream
from ..state.store import Inbound
from ..wire.messages import Datagram, Kind, unpack_envelope
from .gateway import (
    RequestRecord,
    declared_length,
    end_to_end,
    new_id,
    receive_body,
    stream_for,
)

if TYPE_CHECKING:
    from ..peer import Peer

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_WAIT = 30.0
KEEP_ALIVE = 75.0  # seconds an idle caller's connection is kept (as nginx does)


async def serve_at(nursery: trio.Nursery, app: Any, address: Address, what: str) -> None:
    """Serve ASGI `app` at `address` in `nursery`, returning once it listens; ConfigError
    naming `what` (``alpha.listen``, ``--echo``) when the address cannot be had."""
    config = HypercornConfig()
    config.bind = [str(address)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    config.graceful_timeout = 2.0
    # Keep an idle caller's connection longer than clients keep theirs (httpx, Node: 5 s),
    # so a caller never sends a request on a connection we are just closing.
    config.keep_alive_timeout = KEEP_ALIVE
    config.include_server_header = False  # answers carry the upstream's, not ours
    config.include_date_header = False
    try:
        await nursery.start(partial(serve, app, config, mode="asgi"))
    except* OSError as group:  # raised inside hypercorn's nurseries
        reasons = "; ".join(str(e.strerror or e) for e in leaves(group))
        raise ConfigError(f"{what}: cannot listen on {address}: {reasons}") from None


class HTTPProblem(Exception):
    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.body_read = False  # the request body was read to its end


async def respond_json(send: Send, status: int, body: Any, content_type: str = "") -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", (content_type or "application/json").encode()),
        (b"content-length", str(len(data)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge ASGI lifespan events (hypercorn waits for them) until shutdown."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it comes; a client that goes away midway is a 400."""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise HTTPProblem(400, "client went away")
        yield event.get("body", b"")
        if not event.get("more_body", False):
            return


async def discard_body(receive: Receive, bound: float = math.inf) -> bool:
    """Read what is left of a refused body, up to `bound` bytes, and drop it; whether it
    all came. Before the answer, so a client still sending gets it rather than a closed
    connection; after it, because hypercorn queues body chunks for the app, and a
    connection whose queue is full is never closed."""
    dropped = 0
    while dropped <= bound:
        event = await receive()
        if event["type"] == "http.disconnect" or not event.get("more_body", False):
            return True
        dropped += len(event.get("body", b""))
    return False


async def too_large(receive: Receive, limit: int) -> HTTPProblem:
    """The 413 for a body over `limit`, once the rest of it (if not too much) was read."""
    problem = HTTPProblem(413, "body over the limit", f"the limit is {limit} bytes")
    problem.body_read = await discard_body(receive, DISCARD_BEFORE_ANSWER)
    return problem


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body in memory, refusing (413) one over `limit` before reading it all."""
    chunks, size = [], 0
    async for chunk in body_chunks(receive):
        size += len(chunk)
        if size > limit:
            raise await too_large(receive, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class Ingress:
    """The ASGI application of one peer."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except HTTPProblem as problem:
            body = {"type": "about:blank", "title": problem.title, "status": problem.status}
            if problem.detail:
                body["detail"] = problem.detail
            await respond_json(send, problem.status, body, "application/problem+json")
            if problem.status == 413 and not problem.body_read:
                await discard_body(receive)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /mesh/events``: each request event of this peer, as JSON text, live."""
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] != "/mesh/events":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        with self.peer.requests.events.subscribe() as events:
            async with trio.open_nursery() as nursery:

                async def until_closed() -> None:
                    while (await receive())["type"] != "websocket.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_closed)
                async for event in events:
                    await send({"type": "websocket.send", "text": json.dumps(event.as_json())})

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        parts = path.strip("/").split("/")
        if path == "/mesh/status" and method == "GET":
            await respond_json(send, 200, self.peer.status(running=True))
        elif path == "/mesh/messages" and method == "GET":
            await self._fetch(scope, send)
        elif len(parts) == 3 and parts[:2] == ["mesh", "messages"] and method == "POST":
            await self._post(parts[2], receive, send)
        elif len(parts) in (3, 4) and parts[:2] == ["mesh", "requests"] and method == "GET":
            await self._request_status(parts[2], parts[3:] == ["response"], send)
        elif path.startswith(("http://", "https://")):  # sent to us as an HTTP proxy
            remote, target = _proxied(scope.get("raw_path") or path.encode())
            await self._call(remote, target, scope, receive, send)
        elif parts[0] != "mesh" and parts[0]:
            raw_path: bytes = scope.get("raw_path") or path.encode()
            target = raw_path[len(parts[0]) + 1 :].decode("latin-1") or "/"
            await self._call(parts[0], target, scope, receive, send)
        else:
            raise HTTPProblem(404, "not found", f"no route for {method} {path}")

    async def _call(
        self, remote: str, target: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """``ANY /{peer}/{path}?{query}`` (or its proxy form): to `peer`'s upstream."""
        self._check_remote(remote)
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = {name.lower(): value for name, value in scope["headers"]}
        callback = self._allowed(headers, b"mesh-callback")
        events_url = self._allowed(headers, b"mesh-events")
        if self.peer.links.pipe_error is not None:
            raise HTTPProblem(503, "pipe not writable", self.peer.links.pipe_error)
        body, stream = await self._receive_body(remote, headers, receive)
        try:
            request_id = await self.peer.requests.submit(
                remote,
                scope["method"],
                target,
                end_to_end(scope["headers"]),
                body,
                self.peer.settings.request_deadline,
                callback,
                events_url,
                stream,
            )
        except (OSError, sqlite3.Error) as exc:
            await self._drop(body, stream)
            raise HTTPProblem(503, "cannot store the request", str(exc)) from None
        if callback or b"respond-async" in headers.get(b"prefer", b""):
            await self._accepted(send, request_id)
            return
        # No need to wait for the disk to wait for the answer: the request leaves in a
        # file, and the links make it durable before they write one.
        record = await self.peer.requests.wait(request_id, _timeout(headers))
        if record is None or not record.done:
            await self._accepted(send, request_id)
        else:
            await respond_with(send, record, self.peer.bodies)

    async def _receive_body(
        self, remote: str, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[Body, BodyStream | None]:
        """The request body, spooled to a file when big (and then sent to `remote` as it
        arrives, when its length was declared); 413 past the body limit, at once (without
        keeping any of it) when its declared length is."""
        limit = self.peer.settings.body_limit
        length = declared_length(headers.get(b"content-length"))
        if length is not None and length > limit:  # refused before a byte is kept
            raise await too_large(receive, limit)
        stream = stream_for(self.peer.links, remote, new_id(), length, limit)
        try:
            body = await receive_body(
                self.peer.bodies, self.peer.links, body_chunks(receive), limit, stream
            )
        except BodyTooLarge:
            raise await too_large(receive, limit) from None
        except OSError as exc:
            raise HTTPProblem(503, "cannot store the request", str(exc)) from None
        return body, stream

    async def _drop(self, body: Body, stream: BodyStream | None) -> None:
        """Let go of the body of a request that could not be stored."""
        if stream is not None and stream.opened:  # its fragments went: let the far side know
            with contextlib.suppress(OSError, sqlite3.Error):  # else start-up does
                self.peer.links.abandon(stream)
        elif body.file is not None:
            await trio.to_thread.run_sync(self.peer.bodies.remove, [body.file])

    def _allowed(self, headers: dict[bytes, bytes], name: bytes) -> str | None:
        """The URL in header `name`, if the roster's `callbacks` patterns allow it (403
        otherwise: mesh never posts to a URL the roster did not allow)."""
        raw = headers.get(name)
        if raw is None:
            return None
        url = raw.decode("latin-1").strip()
        parsed = urlsplit(url)
        allowed = (
            parsed.scheme in ("http", "https")
            and bool(parsed.hostname)
            and any(fnmatch.fnmatchcase(url, p) for p in self.peer.settings.callbacks)
        )
        if not allowed:
            header = name.decode().title()
            detail = f"{url!r} matches none of {self.peer.name}'s callbacks patterns"
            raise HTTPProblem(403, f"{header} URL not allowed", detail)
        return url

    async def _request_status(self, request_id: str, response: bool, send: Send) -> None:
        record = self.peer.requests.get(request_id)
        if record is None:
            raise HTTPProblem(404, "unknown request", f"no request {request_id!r} here")
        if not response:
            await respond_json(send, 200, record.as_json())
        elif record.done:
            await respond_with(send, record, self.peer.bodies)
        else:
            await self._accepted(send, request_id)

    async def _accepted(self, send: Send, request_id: str) -> None:
        """`accepted`, once what the 202 promises (the request is stored) is on disk."""
        await self.peer.links.durable.synced()
        await accepted(send, request_id)

    async def _post(self, remote: str, receive: Receive, send: Send) -> None:
        self._check_remote(remote)
        body = await read_body(receive, min(self.peer.settings.body_limit, DATAGRAM_LIMIT))
        message = Datagram(uuid.uuid4().hex, body)
        try:
            message_id = await self.peer.links.send(remote, message)
            await self.peer.links.durable.synced()  # a 202 promises it is on disk
        except (OSError, sqlite3.Error) as exc:
            raise HTTPProblem(503, "cannot store the message", str(exc)) from None
        reply = {"id": message.id, "to": remote, "seq": message_id.seq}
        await respond_json(send, 202, reply)

    def _check_remote(self, remote: str) -> None:
        if remote not in self.peer.roster.peers:
            raise HTTPProblem(404, "unknown peer", f"no peer {remote!r} in the roster")
        if remote not in self.peer.settings.talks_to:
            detail = f"{self.peer.name} does not talk to {remote}"
            raise HTTPProblem(403, "peer not whitelisted", detail)

    async def _fetch(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            after = int(query.get("after", ["0"])[0])
            wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), MAX_WAIT)
            limit = min(max(int(query.get("limit", ["100"])[0]), 1), 1000)
        except ValueError:
            raise HTTPProblem(400, "bad query", "after, wait and limit are numbers") from None
        if not math.isfinite(wait):
            raise HTTPProblem(400, "bad query", "wait must be finite")
        store = self.peer.store
        if query.get("epoch", [store.epoch])[0] != store.epoch:
            after = 0  # a cursor into a state that is gone
        store.consume_upto(after, Kind.DATAGRAM)
        items = store.inbound(after, limit, Kind.DATAGRAM)
        with trio.move_on_after(wait):
            while not items:
                await self.peer.links.delivered()
                items = store.inbound(after, limit, Kind.DATAGRAM)
        if items:  # handed out only once on disk: a power cut must not deliver them again
            await self.peer.links.durable.synced()
        reply = {"epoch": store.epoch, "messages": [_datagram_json(i) for i in items]}
        await respond_json(send, 200, reply)


DATAGRAM_LIMIT = 4 << 20  # bytes: a datagram travels whole, in one frame
DISCARD_BEFORE_ANSWER = 64 << 20  # bytes of a refused body read (and dropped) before a 413
DEFAULT_WAIT, MAX_WAIT_CALL = 30.0, 3600.0


def _proxied(raw_path: bytes) -> tuple[str, str]:
    """(peer, target) of an absolute-form request ``http://peer[:port]/path``."""
    rest = raw_path.decode("latin-1").split("://", 1)[1]
    authority, slash, path = rest.partition("/")
    host = authority.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    return host, slash + path if slash else "/"


def _timeout(headers: dict[bytes, bytes]) -> float:
    """Seconds to wait for the answer: `Mesh-Timeout`, or 30; bad values are a 400."""
    raw = headers.get(b"mesh-timeout")
    if raw is None:
        return DEFAULT_WAIT
    try:
        seconds = float(raw)
    except ValueError:
        raise HTTPProblem(400, "bad Mesh-Timeout", "give seconds, e.g. 30") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise HTTPProblem(400, "bad Mesh-Timeout", "give seconds, e.g. 30")
    return min(seconds, MAX_WAIT_CALL)


async def accepted(send: Send, request_id: str) -> None:
    """202: the request is durable; its answer will be at the Location."""
    body = json.dumps({"id": request_id, "status": f"/mesh/requests/{request_id}"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"location", f"/mesh/requests/{request_id}/response".encode()),
        (b"retry-after", b"1"),
        (b"mesh-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_with(send: Send, record: RequestRecord, bodies: Bodies) -> None:
    """The upstream's answer as it gave it, with `Mesh-Request-Id` (a HEAD answer keeps
    the upstream's Content-Length); a spooled body is streamed from its file."""
    assert record.status is not None
    headers = [*record.headers, (b"mesh-request-id", record.id.encode())]
    size = len(record.body)
    if record.body_file is not None:
        size = (await trio.Path(bodies.path(record.body_file)).stat()).st_size
    if not any(name == b"content-length" for name, _ in record.headers):
        headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": record.status, "headers": headers})
    if record.body_file is None:
        await send({"type": "http.response.body", "body": record.body})
        return
    async for chunk in bodies.chunks(record.body_file):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def _datagram_json(item: Inbound) -> dict[str, Any]:
    envelope = unpack_envelope(item.payload, len(item.payload))
    assert isinstance(envelope.message, Datagram)
    return {
        "id": item.id,
        "from": item.remote,
        "seq": item.seq,
        "message_id": envelope.message.id,
        "body_base64": base64.b64encode(envelope.message.body).decode(),
        "received": item.received,
    }
