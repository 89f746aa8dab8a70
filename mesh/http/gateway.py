"""HTTP requests through the mesh, on the reliable links.

`Requests` (the caller's peer) keeps a durable record of each request it accepted, wakes
the callers waiting for it, and takes the responses that come back. `Forwarder` (the
far peer) forwards each request to its upstream at most once: the execution is marked
`forwarding` durably before the request leaves, so after a crash an execution found in
that state has an unknown outcome, and a non-idempotent request is then answered
``502 Mesh-Outcome: unknown`` and never sent again (idempotent ones are retried).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import msgpack
import trio

from ..pipe.bodies import INLINE, Bodies, Body, BodyTooLarge, incoming_name
from ..pipe.links import BodyStream, EventHub, Links, Progress
from ..state.durable import Durability
from ..state.store import Inbound, Post, Store
from ..wire.messages import Control, Headers, Kind, Request, Response, unpack_envelope
from .clients import Clients
from .origin import NeverSent, Origin, Reply, UpstreamError

FINAL_STATES = frozenset({"completed", "failed"})
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"host",
        b"content-length",
    }
)


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Headers without hop-by-hop ones (and those `Connection` names) or mesh's own."""
    pairs = [(name.lower(), value) for name, value in headers]
    named = {
        token.strip().lower()
        for name, value in pairs
        if name == b"connection"
        for token in value.split(b",")
    }
    return tuple(
        (name, value)
        for name, value in pairs
        if name not in HOP_BY_HOP and name not in named and not name.startswith(b"mesh-")
    )


async def receive_body(
    bodies: Bodies,
    links: Links,
    chunks: AsyncIterator[bytes],
    limit: int,
    stream: BodyStream | None,
) -> Body:
    """`bodies.receive`, with `stream` (if any) sending the body as it becomes durable,
    and abandoned if it does not arrive whole (the far side then drops its part)."""
    grew = partial(links.grew, stream) if stream is not None else None
    try:
        return await bodies.receive(chunks, limit, grew)
    except BaseException:
        if stream is not None:
            links.abandon(stream)
        raise


def declared_length(value: str | bytes | None) -> int | None:
    """The length a Content-Length header declares; None when absent or not a number."""
    return int(value) if value is not None and value.isdigit() else None


def stream_for(
    links: Links, remote: str, message_id: str, length: int | None, limit: int
) -> BodyStream | None:
    """A stream that sends a body of declared `length` to `remote` while it arrives, when
    it is big enough to be spooled and within `limit`; else None (it goes once whole, or
    is refused)."""
    if length is None or not INLINE < length <= limit:
        return None
    return links.stream(remote, message_id, length)


def new_id() -> str:
    """A new request id."""
    return uuid.uuid4().hex


def over_limit(whose: str, limit: int) -> str:
    """How a body past a peer's `body_limit` is described in the problem's title."""
    return f"over {whose} body_limit of {limit} bytes"


def problem(request_id: str, status: int, title: str, **extra: str) -> Response:
    """A gateway error as the far side's answer, in application/problem+json."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status}).encode()
    headers = [(b"content-type", b"application/problem+json")]
    headers += [(f"mesh-{k}".encode(), v.encode()) for k, v in extra.items()]
    return Response(request_id, status, tuple(headers), body)


@dataclass(frozen=True)
class Answer:
    """What goes back for a request: the response, its body when spooled, and the
    stream that has been sending that body while it arrived."""

    response: Response
    body: Body = dataclasses.field(default_factory=Body)
    stream: BodyStream | None = None


@dataclass(frozen=True)
class RequestEvent:
    """A step of a request at the caller's peer, in the contract's order."""

    request_id: str
    state: str
    at: float
    progress: Progress | None = None  # state "progress": how far its body has got

    def as_json(self) -> dict[str, Any]:
        event: dict[str, Any] = {"request_id": self.request_id, "state": self.state, "at": self.at}
        if self.progress is not None:
            event.update(
                direction=self.progress.direction,
                done=self.progress.done,
                total=self.progress.total,
            )
        return event


@dataclass
class RequestRecord:
    id: str
    remote: str
    method: str
    target: str
    state: str
    events: list[tuple[str, float]]
    deadline: float
    status: int | None = None
    headers: Headers = ()
    body: bytes = b""
    body_file: str | None = None  # the response body is in this body file instead

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.remote,
            "method": self.method,
            "target": self.target,
            "state": self.state,
            "deadline": self.deadline,
            "response_status": self.status,
            "events": [{"state": s, "at": at} for s, at in self.events],
        }


class Requests:
    """The requests this peer accepted from its callers."""

    def __init__(self, store: Store, links: Links, poster: Poster) -> None:
        self.store, self.links, self.poster = store, links, poster
        self.events: EventHub[RequestEvent] = EventHub()
        self._finished: dict[str, trio.Event] = {}  # set when the request is done

    async def submit(
        self,
        remote: str,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        ttl: float,
        callback: str | None = None,
        events_url: str | None = None,
        stream: BodyStream | None = None,
    ) -> str:
        """Store the request and send it; its id (`stream`'s message id, when its body was
        already being sent as it arrived). It is committed on return, durable only at the
        next `durable.synced` (await it before a 202); its ``stored`` event is told then.
        Errors: KeyError (not a link), OSError/sqlite3.Error (the store cannot take it:
        nothing is half accepted)."""
        request_id = stream.message_id if stream is not None else new_id()
        deadline = time.time() + ttl
        request = Request(request_id, method, target, headers, body.data, deadline)
        with self.store.transaction():  # one commit for both
            sent = await self.links.send(remote, request, body, stream)
            self.store.add_request(
                request_id, remote, sent.seq, method, target, deadline, callback, events_url
            )
        at = time.time()
        self.links.durable.after_sync(lambda: self._changed_state(request_id, [("stored", at)]))
        return request_id

    def get(self, request_id: str) -> RequestRecord | None:
        row = self.store.get_request(request_id)
        if row is None:
            return None
        return RequestRecord(
            id=row["id"],
            remote=row["remote"],
            method=row["method"],
            target=row["target"],
            state=row["state"],
            events=[(s, at) for s, at in row["events"]],
            deadline=row["deadline"],
            status=row["status"],
            headers=unpack_headers(row["headers"]),
            body=bytes(row["body"] or b""),
            body_file=row["body_file"],
        )

    async def wait(self, request_id: str, seconds: float) -> RequestRecord | None:
        """The record once done, or as it stands after `seconds`."""
        with trio.move_on_after(seconds):
            while True:
                record = self.get(request_id)
                if record is None or record.done:
                    return record
                await self._finished.setdefault(request_id, trio.Event()).wait()
        return self.get(request_id)

    def _changed_state(self, request_id: str, events: list[tuple[str, float]]) -> None:
        """Publish the new events of `request_id`, post them, and wake those waiting for
        it if it is done (only then: each wake-up reads the record again)."""
        if any(state in FINAL_STATES for state, _ in events):
            waiting = self._finished.pop(request_id, None)
            if waiting is not None:
                waiting.set()
        for state, at in events:
            self.events.publish(RequestEvent(request_id, state, at))
        self.poster.kick()

    async def run(self) -> None:
        """Take responses as they are delivered, and follow link events of requests."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_events)
            nursery.start_soon(self._follow_progress)
            nursery.start_soon(self._follow_transfers)
            async for batch in self.links.deliveries(Kind.RESPONSE):
                with self.store.transaction():  # one commit for all those here
                    for item in batch:
                        message = unpack_envelope(item.payload, len(item.payload)).message
                        assert isinstance(message, Response)
                        if (message.body_length or 0) > self.links.max_body:  # refused
                            limit = over_limit("this peer's", self.links.max_body)
                            message = problem(message.id, 502, f"the response is {limit}")
                        if message.body_length:  # its body comes as fragments: later
                            nursery.start_soon(self._complete, item, message)
                        else:
                            await self._complete(item, message)

    async def _complete(self, item: Inbound, message: Response) -> None:
        """Store `message` as its request's response, once its whole body is here."""
        body_file = None
        if message.body_length and message.body_id:
            body_file = await self.links.body_arrived(
                item.remote, message.body_id, message.body_length
            )
        callback_headers = [
            *message.headers,
            (b"mesh-request-id", message.id.encode()),
            (b"mesh-status", str(message.status).encode()),
        ]
        added = self.store.complete_request(
            item.id,
            message.id,
            message.status,
            pack_headers(message.headers),
            message.body,
            time.time(),
            callback_headers,
            body_file,
        )
        if body_file is not None and message.body_id:
            self.store.forget_transfer(item.remote, message.body_id)
        self.store.after_commit(lambda: self._changed_state(message.id, added))

    async def _follow_progress(self) -> None:
        """The far side's notes on our requests (``forwarded``), as they are delivered."""
        async for batch in self.links.deliveries(Kind.CONTROL):
            with self.store.transaction():
                for item in batch:
                    message = unpack_envelope(item.payload, len(item.payload)).message
                    assert isinstance(message, Control)
                    request_id, at = message.args.get("id"), message.args.get("at")
                    if message.op == "forwarded" and isinstance(request_id, str):
                        self._record(request_id, "forwarded", float(at or time.time()))
                self.links.consume([item.id for item in batch])

    async def _follow_transfers(self) -> None:
        """Progress of our requests' bodies going out and their responses' coming in, as
        ``progress`` events (live, and posted to the request's `Mesh-Events` URL)."""
        async for progress in self.links.progress.subscribe():
            event = RequestEvent(progress.message_id, "progress", time.time(), progress)
            if self.store.add_progress_post(event.request_id, json.dumps(event.as_json())):
                self.events.publish(event)
                self.poster.kick()

    def _record(self, request_id: str, state: str, at: float) -> None:
        added = self.store.add_request_event(request_id, state, at)
        if added:
            self.store.after_commit(lambda: self._changed_state(request_id, added))

    async def _follow_events(self) -> None:
        """Link events of our requests' messages, those that came together in one commit."""
        names = {"sent": "sent", "acked": "delivered"}
        channel = self.links.events.subscribe()
        async for event in channel:
            batch = [event]
            with contextlib.suppress(trio.WouldBlock):
                while len(batch) < 1024:
                    batch.append(channel.receive_nowait())
            with self.store.transaction():
                for each in batch:
                    state = names.get(each.state)
                    request_id = state and self.store.request_by_seq(each.remote, each.seq)
                    if state and request_id:
                        self._record(request_id, state, each.at)


class Poster:
    """Delivers queued callback and event POSTs: durably (they are in the store before
    anything is promised), in order per URL, retried with backoff until a 2xx or the
    request's deadline."""

    def __init__(self, name: str, store: Store, bodies: Bodies, durable: Durability) -> None:
        self.name, self.store, self.bodies, self.durable = name, store, bodies, durable
        self.log = logging.getLogger(f"mesh.{name}")
        self._kick = trio.Event()
        self._busy: set[str] = set()  # URLs with a POST under way

    def kick(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        """Start a delivery per URL with posts due and none under way; a slow URL holds
        back only its own posts."""
        async with (
            Clients(httpx.Timeout(30.0, connect=5.0)) as clients,
            trio.open_nursery() as nursery,
        ):
            while True:
                self._kick = trio.Event()
                by_url: dict[str, list[Post]] = {}
                for post in self.store.due_posts(time.time()):
                    if post.url not in self._busy:
                        by_url.setdefault(post.url, []).append(post)
                if by_url:
                    await self.durable.synced()  # what is posted stays posted
                for url, posts in by_url.items():
                    self._busy.add(url)
                    nursery.start_soon(self._deliver_then_free, clients, url, posts)
                due = self.store.next_post_due(self._busy)
                wait = 3600.0 if due is None else max(due - time.time(), 0.0)
                with trio.move_on_after(wait):
                    await self._kick.wait()

    async def _deliver_then_free(self, clients: Clients, url: str, posts: list[Post]) -> None:
        try:
            async with clients.one() as client:
                await self._deliver(client, posts)
        finally:
            self._busy.discard(url)
            self.kick()

    async def _deliver(self, client: httpx.AsyncClient, posts: list[Post]) -> None:
        """Posts to one URL, in order; the first failure holds back the rest."""
        for post in posts:
            now = time.time()
            if now > post.deadline:
                self.log.warning(
                    "%s: gave up posting to %s after %d attempts",
                    self.name,
                    post.url,
                    post.attempts,
                )
                self.store.post_done(post.id)
                continue
            try:
                reply = await self._post(client, post)
                ok = 200 <= reply.status_code < 300
            except (httpx.HTTPError, OSError):
                ok = False
            if not ok:
                self.store.post_later(post.id, now + min(2.0**post.attempts * 0.5, 60.0))
                return
            self.store.post_done(post.id)

    async def _post(self, client: httpx.AsyncClient, post: Post) -> httpx.Response:
        if post.body_file is None:
            return await client.post(post.url, headers=post.headers, content=post.body)
        size = self.bodies.path(post.body_file).stat().st_size
        headers = [*post.headers, (b"content-length", str(size).encode())]
        return await client.post(
            post.url, headers=headers, content=self.bodies.chunks(post.body_file)
        )


class Forwarder:
    """Forwards requests delivered here to the upstream, at most once each."""

    def __init__(
        self,
        name: str,
        store: Store,
        links: Links,
        upstream: str | None,
        max_body: int,
        concurrency: int = 64,
        upstream_timeout: float = 60.0,
    ) -> None:
        self.name, self.store, self.links, self.upstream = name, store, links, upstream
        self.max_body = max_body
        self.bodies = links.bodies
        self.limit = trio.CapacityLimiter(concurrency)  # requests with the upstream at once
        self.upstream_timeout = upstream_timeout
        self.log = logging.getLogger(f"mesh.{name}")

    async def run(self) -> None:
        async with self._origin() as upstream, trio.open_nursery() as nursery:
            for origin, packed, state in self.store.unfinished_executions():
                request = unpack_envelope(packed, len(packed)).message
                assert isinstance(request, Request)
                nursery.start_soon(self._execute, upstream, origin, request, state == "forwarding")
            async for batch in self.links.deliveries(Kind.REQUEST):
                with self.store.transaction():  # one commit for all those here
                    for item in batch:
                        message = unpack_envelope(item.payload, len(item.payload)).message
                        assert isinstance(message, Request)
                        if message.body_length:  # its body comes as fragments: take it then
                            nursery.start_soon(self._take, upstream, nursery, item, message)
                        else:
                            await self._take(upstream, nursery, item, message)

    def _origin(self) -> contextlib.AbstractAsyncContextManager[Origin | None]:
        """Where requests go (None without an upstream: each is answered 502)."""
        if self.upstream is None:
            return contextlib.nullcontext(None)
        timeout = self.upstream_timeout
        return Origin(self.upstream, timeout, connect_timeout=min(timeout, 5.0))

    async def _take(
        self, upstream: Origin | None, nursery: trio.Nursery, item: Inbound, request: Request
    ) -> None:
        """Record `request` for execution once its whole body is here, and start it. A
        body that does not come by the request's deadline is answered 504; one over this
        peer's body limit (its fragments are refused) is answered 413 at once."""
        length, transfer = request.body_length, request.body_id
        if length and transfer and length <= self.max_body:
            with trio.move_on_after(max(request.deadline - time.time(), 0.0)):
                await self.links.body_arrived(item.remote, transfer, length)
        taken = self.store.take_execution(
            item.id, item.remote, request.id, item.payload, time.time()
        )
        if taken:
            run = partial(self._execute, upstream, item.remote, request, False)
            self.store.after_commit(lambda: nursery.start_soon(run))

    async def _execute(
        self, upstream: Origin | None, origin: str, request: Request, interrupted: bool
    ) -> None:
        answer = await self._answer(upstream, origin, request, interrupted)
        with self.store.transaction():  # answered and marked so, or neither
            await self.links.send(origin, answer.response, answer.body, answer.stream)
            self.store.mark_execution(request.id, "responded", time.time())
        if request.body_id:  # the request's body file has served its purpose
            self.store.forget_transfer(origin, request.body_id)
            self.links.remove_once_synced([incoming_name(origin, request.body_id)])

    async def _answer(
        self, upstream: Origin | None, origin: str, request: Request, interrupted: bool
    ) -> Answer:
        if interrupted and request.method not in IDEMPOTENT:
            title = "outcome unknown: the peer stopped while the request was with the upstream"
            return Answer(problem(request.id, 502, title, outcome="unknown"))
        if time.time() > request.deadline:
            return Answer(problem(request.id, 504, "request expired in transit"))
        if upstream is None:
            return Answer(problem(request.id, 502, f"{self.name} has no upstream"))
        if (request.body_length or 0) > self.max_body:
            limit = over_limit(f"{self.name}'s", self.max_body)
            return Answer(problem(request.id, 413, f"the request body is {limit}"))
        length, transfer = request.body_length, request.body_id
        if length and transfer and not self.links.body_here(origin, transfer, length):
            return Answer(problem(request.id, 504, "request body did not arrive by its deadline"))
        async with self.limit:
            return await self._forward(upstream, origin, request)

    def _stream(self, origin: str, request: Request, reply: Reply) -> BodyStream | None:
        """A stream for the body of `reply` when it says it is big enough to spool (its
        fragments then leave while it still arrives), else None."""
        if request.method == "HEAD":  # its Content-Length is of a body it does not send
            return None
        length = declared_length(reply.header(b"content-length"))
        return stream_for(self.links, origin, request.id, length, self.max_body)

    def _declared_too_big(self, request: Request, reply: Reply) -> bool:
        """Whether `reply` declares a body over this peer's body limit."""
        length = declared_length(reply.header(b"content-length"))
        return request.method != "HEAD" and length is not None and length > self.max_body

    def _request_body(self, origin: str, request: Request) -> bytes | AsyncIterator[bytes]:
        """What is sent: the inline body, or the body file streamed."""
        if not request.body_id:
            return request.body
        return self.bodies.chunks(incoming_name(origin, request.body_id))

    async def _forward(self, upstream: Origin, origin: str, request: Request) -> Answer:
        """The upstream's answer (its body in memory or spooled); no connection is retried
        with backoff until the deadline; a failure after the request may have reached it
        is an unknown outcome."""
        headers = [*end_to_end(request.headers), (b"via", f"1.1 mesh-{self.name}".encode())]
        length = request.body_length or len(request.body)
        if length or request.method in ("POST", "PUT", "PATCH"):  # streamed too: never chunked
            headers.append((b"content-length", str(length).encode()))
        delay, attempt = 0.1, 0
        while True:
            with self.store.transaction():  # one commit: marked, and the caller told
                self.store.mark_execution(request.id, "forwarding", time.time())
                if attempt == 0:
                    note = Control("forwarded", {"id": request.id, "at": time.time()})
                    self.links.note(origin, note)  # rides with the response, most likely
            await self.links.durable.synced()  # the mark is on disk before the upstream acts
            attempt += 1
            try:
                content = self._request_body(origin, request)
                async with upstream.request(
                    request.method, request.target, headers, content
                ) as reply:
                    if self._declared_too_big(request, reply):
                        raise BodyTooLarge(self.max_body)  # not a byte of it read or kept
                    stream = self._stream(origin, request, reply)
                    body = await receive_body(
                        self.bodies, self.links, reply.chunks(), self.max_body, stream
                    )
                kept = end_to_end(reply.headers)
                if request.method == "HEAD":  # no body, but the size it would have had
                    declared = reply.header(b"content-length")
                    kept += ((b"content-length", declared),) if declared else ()
                return Answer(Response(request.id, reply.status, kept, body.data), body, stream)
            except BodyTooLarge:
                limit = over_limit(f"{self.name}'s", self.max_body)
                answer = problem(request.id, 502, f"the upstream's response is {limit}")
                return Answer(answer)
            except UpstreamError as exc:
                if isinstance(exc, NeverSent):  # it never reached the upstream
                    self.store.mark_execution(request.id, "received", time.time())
                elif request.method not in IDEMPOTENT:
                    self.log.warning("%s: outcome of %s unknown: %s", self.name, request.id, exc)
                    answer = problem(request.id, 502, f"outcome unknown: {exc}", outcome="unknown")
                    return Answer(answer)
                left = request.deadline - time.time()
                if left <= 0:
                    return Answer(problem(request.id, 502, f"upstream failed: {exc}"))
                await trio.sleep(min(delay, left))  # every retry backs off; the last at the end
                delay = min(delay * 2, 5.0)


def pack_headers(headers: Headers) -> bytes:
    return bytes(msgpack.packb([part for pair in headers for part in pair]))


def unpack_headers(data: bytes | None) -> Headers:
    if not data:
        return ()
    flat = msgpack.unpackb(data)
    return tuple(zip(flat[0::2], flat[1::2], strict=True))
