"""A peer's HTTP ingress (ASGI, served by hypercorn's trio worker at the peer's `listen`).

Routes:
- ``ANY /{peer}/{path}?{query}``, or ``ANY http://{peer}/{path}`` with the peer as an HTTP
  proxy: the call, carried to `peer`'s upstream; the caller waits for the answer (up to
  `Mesh-Timeout`, then ``202`` and a status URL), or gets ``202`` at once with
  `Mesh-Callback` or ``Prefer: respond-async``.
- ``GET /mesh/requests/{id}`` and ``GET /mesh/requests/{id}/response``.
- ``GET /mesh/status``: this peer's status as JSON (what `mesh status` shows).
- ``POST /mesh/messages/{peer}`` and ``GET /mesh/messages``: opaque messages (`mailbox`).
- ``GET /mesh/events`` (WebSocket): each request event of this peer, live.

Errors are ``application/problem+json`` (`problems`). A 2xx/202 is given only for what is
already durable.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ..config.roster import PeerSettings
from ..pipe.bodies import Bodies, Body, BodyTooLarge
from ..pipe.sending import Sending, receive_body, stream_for
from ..pipe.streams import BodyStream
from ..state.durable import Durability
from ..state.requests import RequestRecord
from .asgi import (
    Receive,
    Scope,
    Send,
    body_chunks,
    discard_body,
    lifespan,
    read_body,
    respond_json,
    too_large,
)
from .headers import declared_length, end_to_end
from .mailbox import DATAGRAM_LIMIT, Mailbox
from .problems import LOWER_ERRORS, PROBLEM_JSON, HTTPProblem, answered_as
from .requests import Requests, new_id

MAX_WAIT = 30.0  # seconds GET /mesh/messages may wait for a message
DEFAULT_WAIT, MAX_WAIT_CALL = 30.0, 3600.0  # seconds a caller waits for its answer


@dataclass(frozen=True)
class Services:
    """What the ingress uses of its peer, and nothing more."""

    settings: PeerSettings  # the peer's own: name, talks_to, limits, callbacks
    peers: Collection[str]  # every peer of the roster
    requests: Requests
    mailbox: Mailbox
    sending: Sending  # for bodies that leave while they arrive
    bodies: Bodies
    durable: Durability
    pipe_error: Callable[[], str | None]  # why the outbox cannot be written, if it cannot
    status: Callable[[], dict[str, Any]]


class Ingress:
    """The ASGI application of one peer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

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
            await respond_json(send, problem.status, problem.as_json(), PROBLEM_JSON.decode())
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
        with self.services.requests.events.subscribe() as events:
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
            await respond_json(send, 200, self.services.status())
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
        pipe_error = self.services.pipe_error()
        if pipe_error is not None:
            raise HTTPProblem(503, "pipe not writable", pipe_error)
        body, stream = await self._receive_body(remote, headers, receive)
        try:
            with answered_as("cannot store the request"):
                request_id = await self.services.requests.submit(
                    remote,
                    scope["method"],
                    target,
                    end_to_end(scope["headers"]),
                    body,
                    self.settings.request_deadline,
                    callback,
                    events_url,
                    stream,
                )
        except HTTPProblem:
            await self._drop(body, stream)
            raise
        if callback or b"respond-async" in headers.get(b"prefer", b""):
            await self._accepted(send, request_id)
            return
        # No need to wait for the disk to wait for the answer: the request leaves in a
        # file, and the links make it durable before they write one.
        record = await self.services.requests.wait(request_id, _timeout(headers))
        if record is None or not record.done:
            await self._accepted(send, request_id)
        else:
            await respond_with(send, record, self.services.bodies)

    async def _receive_body(
        self, remote: str, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[Body, BodyStream | None]:
        """The request body, spooled to a file when big (and then sent to `remote` as it
        arrives, when its length was declared); 413 past the body limit, at once (without
        keeping any of it) when its declared length is."""
        limit = self.settings.body_limit
        length = declared_length(headers.get(b"content-length"))
        if length is not None and length > limit:  # refused before a byte is kept
            raise await too_large(receive, limit)
        stream = stream_for(self.services.sending, remote, new_id(), length, limit)
        chunks = body_chunks(receive)
        try:
            with answered_as("cannot store the request"):
                body = await receive_body(
                    self.services.bodies, self.services.sending, chunks, limit, stream
                )
        except BodyTooLarge:
            raise await too_large(receive, limit) from None
        return body, stream

    async def _drop(self, body: Body, stream: BodyStream | None) -> None:
        """Let go of the body of a request that could not be stored."""
        if stream is not None and stream.opened:  # its fragments went: let the far side know
            with contextlib.suppress(*LOWER_ERRORS):  # else start-up does
                self.services.sending.abandon(stream)
        elif body.file is not None:
            await trio.to_thread.run_sync(self.services.bodies.remove, [body.file])

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
            and any(fnmatch.fnmatchcase(url, p) for p in self.settings.callbacks)
        )
        if not allowed:
            header = name.decode().title()
            detail = f"{url!r} matches none of {self.settings.name}'s callbacks patterns"
            raise HTTPProblem(403, f"{header} URL not allowed", detail)
        return url

    async def _request_status(self, request_id: str, response: bool, send: Send) -> None:
        record = self.services.requests.get(request_id)
        if record is None:
            raise HTTPProblem(404, "unknown request", f"no request {request_id!r} here")
        if not response:
            await respond_json(send, 200, record.as_json())
        elif record.done:
            await respond_with(send, record, self.services.bodies)
        else:
            await self._accepted(send, request_id)

    async def _accepted(self, send: Send, request_id: str) -> None:
        """`accepted`, once what the 202 promises (the request is stored) is on disk."""
        await self.services.durable.synced()
        await accepted(send, request_id)

    async def _post(self, remote: str, receive: Receive, send: Send) -> None:
        """``POST /mesh/messages/{peer}``: the body to `peer` as an opaque message."""
        self._check_remote(remote)
        body = await read_body(receive, min(self.settings.body_limit, DATAGRAM_LIMIT))
        await respond_json(send, 202, await self.services.mailbox.post(remote, body))

    def _check_remote(self, remote: str) -> None:
        if remote not in self.services.peers:
            raise HTTPProblem(404, "unknown peer", f"no peer {remote!r} in the roster")
        if remote not in self.settings.talks_to:
            detail = f"{self.settings.name} does not talk to {remote}"
            raise HTTPProblem(403, "peer not whitelisted", detail)

    async def _fetch(self, scope: Scope, send: Send) -> None:
        """``GET /mesh/messages?after=N&epoch=E&wait=S&limit=L`` (see `mailbox`)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            after = int(query.get("after", ["0"])[0])
            wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), MAX_WAIT)
            limit = min(max(int(query.get("limit", ["100"])[0]), 1), 1000)
        except ValueError:
            raise HTTPProblem(400, "bad query", "after, wait and limit are numbers") from None
        if not math.isfinite(wait):
            raise HTTPProblem(400, "bad query", "wait must be finite")
        epoch = query.get("epoch", [None])[0]
        await respond_json(send, 200, await self.services.mailbox.fetch(after, epoch, wait, limit))


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
