"""A peer's HTTP ingress (ASGI, served by hypercorn's trio worker at the peer's `listen`).

Routes:
- a call to `peer`'s upstream, in any of three forms (`admission.route`): the path form
  ``ANY /{peer}/{path}?{query}``, the proxy form ``ANY http://{peer}/{path}``, the host
  form ``Host: {peer}.{host_suffix}``; the caller waits for the answer until its
  request ends (or ``Prefer: wait=N`` / `Mesh-Timeout`, then ``202`` and a status URL),
  or gets ``202`` at once with `Mesh-Callback` or ``Prefer: respond-async``
  (`answering`); the upstream learns how the caller came (`forwarded`).
- ``GET /mesh/requests/{id}`` and ``GET /mesh/requests/{id}/response``.
- ``GET /mesh/status``: this peer's status as JSON (what `mesh status` shows).
- ``GET /mesh/health``: ``200`` or ``503``, whether it can take requests (`health`).
- ``GET /metrics``: this peer's metrics in Prometheus's text format (`metrics`).
- ``POST /mesh/messages/{peer}`` and ``GET /mesh/messages``: opaque messages (`mailbox`).
- ``GET /mesh/events`` (WebSocket): each request event of this peer, live.

Errors are ``application/problem+json`` (`problems`). A 2xx/202 is given only for what is
already durable.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio

from ..config.access import DEFAULT_MAY_CALL
from ..config.roster import PeerSettings
from ..errors import Complaints
from ..pipe.bodies import Bodies
from ..pipe.sending import Sending
from ..state.durable import Durability
from ..state.requests import Asker, RequestRecord
from ..wire.messages import Response
from .admission import PATH, Call, head_fits, host_answered, route, single_headers
from .answering import (
    BodyWatch,
    accepted,
    cancel_when_set,
    closing,
    note_gone,
    respond_with,
    wait_for_answer,
)
from .asgi import (
    Receive,
    Scope,
    Send,
    lifespan,
    linger,
    read_body,
    respond_json,
)
from .auth import Gate, Identity
from .callbacks import checked_url
from .forwarded import View, forwarded
from .headers import OVERRIDES, end_to_end
from .health import Health
from .mailbox import DATAGRAM_LIMIT, Mailbox
from .metrics import Metrics
from .problems import PROBLEM_BY, PROBLEM_JSON, HTTPProblem
from .requests import Requests
from .streaming import Streamer
from .uploads import Taking, Uploads

Headers = Mapping[bytes, bytes]  # a request's, by lowercase name
CALLER = "mesh.caller"  # the scope's key for the caller's name, once known
NOT_CONNECT = (b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE")
MAX_WAIT = 30.0  # seconds GET /mesh/messages may wait for a message


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
    health: Callable[[], Health]
    metrics: Metrics


class Ingress:
    """The ASGI application of one peer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.gate = Gate(services.settings.callers)
        self.log = logging.getLogger(f"mesh.{services.settings.name}")
        self.complaints = Complaints(self.log, services.settings.name)
        requests = services.requests
        self.streamer = Streamer(requests, requests.receiving, services.bodies, self.log)
        limit = services.settings.body_limit
        self.uploads = Uploads(requests, services.sending, services.bodies, limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if _framed_twice(scope["headers"]):  # RFC 9112, 6.1: its connection must end
            send = closing(send)
        started, status = trio.current_time(), [0]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, sending)
        finally:
            took = trio.current_time() - started
            _access(self.log, self.settings.name, scope, status[0], took)
            self.services.metrics.waited(took, call=CALLER in scope)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route an HTTP request; an `HTTPProblem` raised is the answer."""
        try:
            await self._route(scope, receive, send)
        except HTTPProblem as problem:
            if problem.status == 503:  # the store or the pipe cannot take more: say so
                self.complaints.say("refused", "refusing requests: %s", problem.detail)
            headers = (*problem.headers, (PROBLEM_BY, self.settings.name.encode()))
            # What the caller still sends of its body is dropped while the answer goes:
            # hypercorn ends the answer by queueing a disconnect for the app, behind the
            # body it queued, so with its queue full the answer would never end
            async with trio.open_nursery() as draining:
                draining.start_soon(linger, receive)
                await respond_json(
                    send, problem.status, problem.as_json(), PROBLEM_JSON.decode(), headers
                )
                if problem.status != 413 or problem.body_read:  # else dropped a while more
                    draining.cancel_scope.cancel()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /mesh/events``: each request event of this peer, as JSON text, live; for
        admin callers, from no other web page than this peer's own (`Origin`)."""
        if (await receive())["type"] != "websocket.connect":
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        try:
            single_headers(scope["headers"])
            if scope["path"] != "/mesh/events":
                detail = (
                    "WebSockets do not cross the mesh; the only one is this peer's /mesh/events"
                )
                raise HTTPProblem(404, "no such WebSocket", detail)
            host_answered(self.settings, headers)
            _same_origin(headers, scope.get("scheme", "ws"))
            self.gate.admin(self.gate.own_route(headers), "/mesh/events")
        except HTTPProblem as problem:
            await _refuse_websocket(scope, send, problem)
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
        single_headers(scope["headers"])
        headers = {name.lower(): value for name, value in scope["headers"]}
        if method == "CONNECT":
            detail = "address the far service as http://PEER/path (its peer may use TLS to it)"
            raise HTTPProblem(405, "no tunnels", detail, headers=(NOT_CONNECT,))
        call = route(self.settings, scope)
        if call is not None and not (path == "/metrics" and call.form is PATH):  # not a peer's
            await self._call(call, headers, scope, receive, send)
        elif path.startswith("/mesh/") or path in ("/mesh", "/metrics"):
            await self._own_route(method, path.strip("/").split("/"), headers, scope, receive, send)
        else:
            raise HTTPProblem(404, "not found", f"no route for {method} {path}")

    async def _own_route(
        self,
        method: str,
        parts: list[str],
        headers: Headers,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """mesh's own routes: for admin callers, but a caller's own requests; all but
        the health check for known callers only (401, whatever the route)."""
        route = "/" + "/".join(parts)
        if parts == ["mesh", "health"] and method == "GET":  # open to all
            health = self.services.health()
            await respond_json(send, 200 if health.ok else 503, health.as_json())
            return
        identity = self.gate.own_route(headers)
        scope[CALLER] = identity.name  # for the access line, a refusal's too
        admin = partial(self.gate.admin, identity, route)
        if parts == ["mesh", "status"] and method == "GET":
            admin()
            await respond_json(send, 200, self.services.status())
        elif parts == ["metrics"] and method == "GET":
            admin()
            await self.services.metrics.respond(send)
        elif parts == ["mesh", "messages"] and method == "GET":
            admin()
            await self._fetch(scope, send)
        elif parts == ["mesh", "messages", "ack"] and method == "POST":
            admin()
            await self._ack(receive, send)
        elif len(parts) == 3 and parts[:2] == ["mesh", "messages"] and method == "POST":
            admin()
            await self._post(parts[2], receive, send)
        elif (
            parts[:2] == ["mesh", "requests"]
            and parts[3:] in ([], ["response"])
            and (len(parts) > 2 and method == "GET")
        ):
            if parts[3:]:
                wait = wait_for_answer(scope["headers"])  # each Prefer line, as a call's
                await self._response(identity, parts[2], wait, receive, send)
            else:
                await respond_json(send, 200, self._record(identity, parts[2]).as_json())
        else:
            raise HTTPProblem(404, "not found", f"no route for {method} {route}")

    async def _call(
        self, call: Call, headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """``ANY /{peer}/{path}?{query}`` (or its proxy form): to `peer`'s upstream."""
        remote, target, method = call.peer, call.target, scope["method"]
        identity = self.gate.forwarded(headers, method, remote, target)
        scope[CALLER] = identity.name  # for the access line
        self._check_remote(remote)
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        client = (scope.get("client") or (None,))[0]
        # What goes to the far side: the end-to-end headers and how the caller came
        crossing = forwarded(end_to_end(scope["headers"]), _view(call, headers, scope), client)
        if identity.may_call != DEFAULT_MAY_CALL:  # decided by method and path: no overrides
            crossing = tuple((n, v) for n, v in crossing if n not in OVERRIDES)
        head_fits(method, target, crossing)
        asker = _asker(self.settings, identity, headers)
        wait = wait_for_answer(scope["headers"])  # a bad one refused before anything is kept
        pipe_error = self.services.pipe_error()
        if pipe_error is not None:
            raise HTTPProblem(503, "pipe not writable", pipe_error)
        taking = Taking(remote, method, target, crossing, self.settings.request_deadline, asker)
        body = BodyWatch(receive)
        request_id = await self.uploads.take(taking, headers, body)
        if not body.ended:  # answered before its body's end (`Uploads`): the last answer
            send = closing(send)
        base = _own_base(call, scope)
        async with trio.open_nursery() as nursery:
            gone = trio.Event()  # what more of a body answered before its end is dropped
            nursery.start_soon(note_gone, receive, gone)
            if asker.callback or wait == 0:
                await self._accepted(send, request_id, remote, base)
            else:
                await self._answer(request_id, remote, wait, base, send, gone)
            nursery.cancel_scope.cancel()

    async def _answer(
        self, request_id: str, remote: str, wait: float, base: str, send: Send, gone: trio.Event
    ) -> None:
        """The answer to a caller waiting up to `wait` seconds: the response, or a 202;
        nothing once it is `gone` (its request goes on: the status URL will have the
        answer). A spooled response given whole is let go."""
        # No need to wait for the disk to wait for the answer: the request leaves in a
        # file, and the links make it durable before they write one.
        async with trio.open_nursery() as waiting:
            waiting.start_soon(cancel_when_set, gone, waiting.cancel_scope)
            record = await self.services.requests.wait_for_head(request_id, wait)
            waiting.cancel_scope.cancel()
        if gone.is_set():
            return
        if isinstance(record, Response):  # the head of an answer whose body streams
            await self.streamer.answer(send, remote, record, gone)
            return
        if record is None or not record.done:  # only when the caller asked for a limit
            await self._accepted(send, request_id, remote, base)
            return
        whole = await respond_with(send, record, self.services.bodies, gone)
        if whole and record.body_file is not None:  # the one who waited has it: not kept
            self.services.requests.given(record)

    def _record(self, identity: Identity, request_id: str) -> RequestRecord:
        """The record of `request_id`, if `identity` may see it; else a 404."""
        record = self.services.requests.get(request_id)
        if record is None or not identity.owns(record.caller):  # another's: not there
            raise HTTPProblem(404, "unknown request", f"no request {request_id!r} here")
        return record

    async def _response(
        self, identity: Identity, request_id: str, wait: float, receive: Receive, send: Send
    ) -> None:
        """The answer to `request_id` once it ended; with ``Prefer: wait=N`` (or
        `Mesh-Timeout`), once it ends within N seconds, unless the caller leaves first;
        else ``202`` (at once, without: the default of a call, waiting for its deadline,
        is not that of a status URL)."""
        record = self._record(identity, request_id)
        if not record.done and math.isfinite(wait) and wait > 0:
            async with trio.open_nursery() as waiting:
                gone = trio.Event()
                waiting.start_soon(note_gone, receive, gone)
                waiting.start_soon(cancel_when_set, gone, waiting.cancel_scope)
                await self.services.requests.wait(request_id, wait)
                waiting.cancel_scope.cancel()
            if gone.is_set():
                return
            record = self._record(identity, request_id)
        if record.done:
            await respond_with(send, record, self.services.bodies)
        else:
            await self._accepted(send, request_id, record.remote)

    async def _accepted(self, send: Send, request_id: str, remote: str, base: str = "") -> None:
        """`accepted`, once what the 202 promises (the request is stored) is on disk."""
        await self.services.durable.synced()
        await accepted(
            send, request_id, self.services.requests.round_trips.retry_after(remote), base
        )

    async def _post(self, remote: str, receive: Receive, send: Send) -> None:
        """``POST /mesh/messages/{peer}``: the body to `peer` as an opaque message."""
        self._check_remote(remote)
        body = await read_body(receive, min(self.settings.body_limit, DATAGRAM_LIMIT))
        await respond_json(send, 202, await self.services.mailbox.post(remote, body))

    async def _ack(self, receive: Receive, send: Send) -> None:
        """``POST /mesh/messages/ack`` with ``{"upto": N, "epoch": E}``: consume the
        messages up to `N`, handled by the consumer (see `mailbox`)."""
        body = await read_body(receive, 4096)
        try:
            cursor = json.loads(body)
            upto, epoch = cursor["upto"], cursor["epoch"]
        except (ValueError, TypeError, KeyError):
            upto = epoch = None
        if type(upto) is not int or not _storable(upto) or not isinstance(epoch, str):
            detail = 'send JSON {"upto": N, "epoch": E} as GET /mesh/messages gave them'
            raise HTTPProblem(400, "bad acknowledgement", detail)
        await respond_json(send, 200, await self.services.mailbox.ack(upto, epoch))

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
        if not _storable(after):
            raise HTTPProblem(400, "bad query", "after is a message's number, as fetched")
        epoch = query.get("epoch", [None])[0]
        await respond_json(send, 200, await self.services.mailbox.fetch(after, epoch, wait, limit))


def _storable(number: int) -> bool:
    """Whether `number` fits the store's integers (64 bits, signed)."""
    return -(2**63) <= number < 2**63


def _asker(settings: PeerSettings, identity: Identity, headers: Headers) -> Asker:
    """Who asks, and where the request's news goes: the `Mesh-Callback` and
    `Mesh-Events` URLs, checked against the roster's `callbacks` (403 otherwise: mesh
    never posts to a URL the roster did not allow), signed for a known caller."""
    urls = []
    for name in ("Mesh-Callback", "Mesh-Events"):
        raw = headers.get(name.lower().encode())
        patterns = settings.callbacks
        urls.append(None if raw is None else checked_url(raw.decode("latin-1"), patterns, name))
    key = identity.signing_key if identity.name is not None else None
    return Asker(identity.name, urls[0], urls[1], key if any(urls) else None)


def _access(log: logging.Logger, peer: str, scope: Scope, status: int, took: float) -> None:
    """The access line of a request at `peer`: method, target as sent without query
    (still percent-encoded: a stranger's ``%0a`` cannot start a line of its own; an
    absolute-form target without its userinfo, which may hold a token), status (0: none
    was sent), seconds, and its caller's name when the peer has callers."""
    caller = scope.get(CALLER)
    path = _logged_target(scope)
    log.info(
        "%s: %s %s %d %.3f s%s",
        peer,
        scope["method"],
        path,
        status,
        took,
        f" by {caller}" if caller else "",
        extra={"event": "access", "method": scope["method"], "path": path,
               "status": status, "duration": round(took, 6), "caller": caller},
    )  # fmt: skip


def _framed_twice(headers: Collection[tuple[bytes, bytes]]) -> bool:
    """Whether a request says both a `Content-Length` and a `Transfer-Encoding`: it is
    framed by the latter, and a proxy before this peer that went by the former would
    read what follows as another request."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def _logged_target(scope: Scope) -> str:
    """The request target as the access line shows it (see `_access`)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
    target = raw.decode("latin-1").partition("?")[0]
    scheme, separator, rest = target.partition("://")
    if not separator or "/" in scheme:
        return target
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _own_base(call: Call, scope: Scope) -> str:
    """This peer's own URL as the connection reached it, for links to its routes: ""
    (relative) in the path form; absolute in the proxy and host forms, where a relative
    link would resolve to the far upstream."""
    if call.form is PATH or not scope.get("server"):
        return ""
    host, port = scope["server"][:2]
    host = f"[{host}]" if ":" in host else host
    return f"{scope.get('scheme', 'http')}://{host}:{port}"


def _view(call: Call, headers: Headers, scope: Scope) -> View:
    """How the caller sees the upstream it calls (`forwarded`)."""
    if call.proxied:
        return View(call.scheme, call.authority)
    host = headers.get(b"host", b"").decode("latin-1")
    return View(scope.get("scheme", "http"), host, call.prefix)


def _same_origin(headers: Headers, scheme: str) -> None:
    """HTTPProblem 403 when a web page of another origin opens the WebSocket (a browser
    always sends `Origin`; other clients need not)."""
    origin = headers.get(b"origin")
    if origin is None:
        return
    secure = scheme in ("wss", "https")
    own = (b"https://" if secure else b"http://") + headers.get(b"host", b"")
    if origin.lower() != own.lower():
        detail = "the WebSocket takes no connections from other web pages"
        raise HTTPProblem(403, "foreign origin", detail)


async def _refuse_websocket(scope: Scope, send: Send, problem: HTTPProblem) -> None:
    """Answer a WebSocket handshake with `problem`, over HTTP when the server can (ASGI's
    ``websocket.http.response``), else by closing it (a 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(problem.as_json()).encode()
    headers = [(b"content-type", PROBLEM_JSON), *problem.headers]
    headers.append((b"content-length", str(len(body)).encode()))
    start = {"type": "websocket.http.response.start", "status": problem.status}
    await send({**start, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
