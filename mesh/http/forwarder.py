"""The far side: each request delivered here is forwarded to the upstream at most once.

The execution is marked `forwarding` durably before the request leaves, so after a crash
an execution found in that state has an unknown outcome, and a non-idempotent request is
then answered ``502 Mesh-Outcome: unknown`` and never sent again (idempotent ones are
retried). A request that never reached the upstream (no connection could be made) is
tried again with backoff until its deadline. The answer goes back on the link it came by.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from ..config.access import serves
from ..errors import Complaints
from ..pipe.bodies import Bodies, Body, BodyTooLarge, incoming_name
from ..pipe.flowing import BodyBrokeOff, follow, whole
from ..pipe.receiving import Receiving
from ..pipe.sending import Sending
from ..pipe.streams import BodyStream
from ..state.database import Database
from ..state.durable import Durability
from ..state.executions import Execution, ExecutionTables
from ..state.links import Delivery
from ..wire.messages import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    Control,
    Headers,
    Kind,
    Request,
    Response,
    headers_fit,
    unpack_envelope,
)
from .forwarded import View, caller_location
from .headers import OVERRIDES, REASON, declared_length, end_to_end, upstream_headers
from .origin import BadReply, NeverSent, Origin, Reply, Silent, Unsendable, UpstreamError
from .problems import over_limit, problem_response
from .relaying import Relay

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
RETRY_FIRST, RETRY_MOST = 0.1, 5.0  # seconds between attempts that never reached it
STORE_RETRY = 1.0  # seconds between two tries of a step the store refused (a full disk)


@dataclass(frozen=True)
class Outcome:
    """What goes back for a request: the response, its body when spooled, and the
    stream that has been sending that body while it arrived."""

    response: Response
    body: Body = dataclasses.field(default_factory=Body)
    stream: BodyStream | None = None
    refused: bool = False  # by `serves`: it never reached the upstream


@dataclass(frozen=True)
class Upstream:
    """Where and how requests are forwarded: the upstream's URL (None: each request is
    answered 502), how long its silence is borne, how many requests it gets at once."""

    url: str | None
    timeout: float = 60.0
    concurrency: int = 64
    preserve_host: bool = False  # send the caller's Host (X-Forwarded-Host), not its own

    def origin(self) -> contextlib.AbstractAsyncContextManager[Origin | None]:
        if self.url is None:
            return contextlib.nullcontext(None)
        return Origin(self.url, self.timeout, connect_timeout=min(self.timeout, 5.0))


class Forwarder:
    """Forwards requests delivered to peer `name` to its upstream, at most once each."""

    def __init__(
        self,
        name: str,
        database: Database,
        executions: ExecutionTables,
        sending: Sending,
        receiving: Receiving,
        bodies: Bodies,
        durable: Durability,
        upstream: Upstream,
        max_body: int,
        serves: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.name, self.database, self.executions = name, database, executions
        self.sending, self.receiving, self.bodies = sending, receiving, bodies
        self.durable, self.upstream, self.max_body = durable, upstream, max_body
        self.serves = serves  # per asker, what its requests may ask (None: anything)
        self.limit = trio.CapacityLimiter(upstream.concurrency)  # with the upstream at once
        self.log = logging.getLogger(f"mesh.{name}")
        self.complaints = Complaints(self.log, name)
        self.relay = Relay(name, database, sending, bodies, max_body)

    async def run(self) -> None:
        async with self.upstream.origin() as origin, trio.open_nursery() as nursery:
            for left in self.executions.unfinished():
                request = unpack_envelope(left.request, len(left.request)).message
                assert isinstance(request, Request)
                interrupted = left.state is Execution.FORWARDING
                nursery.start_soon(self._execute, origin, left.asker, request, interrupted)
            async for batch in self.receiving.deliveries(Kind.REQUEST):
                await self._until_stored(partial(self._take_batch, origin, nursery, batch))

    async def _take_batch(
        self, origin: Origin | None, nursery: trio.Nursery, batch: list[Delivery]
    ) -> None:
        """Take the requests delivered, in one commit for all those here."""
        with self.database.transaction():
            for item in batch:
                message = unpack_envelope(item.payload, len(item.payload)).message
                if isinstance(message, Control):  # it came, but could not be read
                    await self._unreadable(item, message)
                    continue
                assert isinstance(message, Request)
                await self._take(origin, nursery, item, message)

    async def _until_stored(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` (a transaction) until the store takes it: a full disk is waited
        out in place, and the requests with the upstream meanwhile go on (a failure let
        out would restart the forwarder and cut them all off). A step tried again must
        do no harm done twice: each is idempotent or rolled back whole."""
        while True:
            try:
                await step()
                return
            except sqlite3.OperationalError as exc:
                self.complaints.say("store", "cannot store a request's step yet: %s", exc)
                await trio.sleep(STORE_RETRY)

    async def _unreadable(self, item: Delivery, note: Control) -> None:
        """Answer a request that arrived but could not be read (`note` stands for it):
        ``502`` (refused by the far side, as DESIGN.md says), and it is never forwarded
        (inside the batch's transaction)."""
        problem = f"{self.name} could not read the request: {note.args.get('problem')}"
        answer = problem_response(str(note.args["id"]), self.name, 502, problem)
        await self.sending.send(item.remote, answer)
        self.receiving.consume([item.id])

    async def _take(
        self, origin: Origin | None, nursery: trio.Nursery, item: Delivery, request: Request
    ) -> None:
        """Record `request` for execution, and start it (inside the batch's transaction).
        A body that comes as fragments need not be here yet: it goes to the upstream as
        they come (`pipe.flowing.follow`)."""
        taken = self.executions.take(item.id, item.remote, request.id, item.payload, time.time())
        if taken:
            run = partial(self._execute, origin, item.remote, request, False)
            self.database.after_commit(lambda: nursery.start_soon(run))

    async def _execute(
        self, origin: Origin | None, asker: str, request: Request, interrupted: bool
    ) -> None:
        try:
            outcome = await self._outcome(origin, asker, request, interrupted)
        except Exception as exc:  # what nothing foresaw: this request fails, not the peer
            outcome = self._broken(request, exc)
        try:
            await self._until_stored(partial(self._answer, asker, request, outcome))
        except Exception as exc:  # its answer cannot go as it is (not the store's doing)
            if outcome.stream is not None:
                self.sending.abandon(outcome.stream)
            broken = self._broken(request, exc)
            await self._until_stored(partial(self._answer, asker, request, broken))
        if request.body_id:  # the request's body file has served its purpose
            await self._body_ended(asker, request)
            self.receiving.forget_body(asker, request.body_id)
            self.sending.remove_once_synced([incoming_name(asker, request.body_id)])

    async def _body_ended(self, asker: str, request: Request) -> None:
        """Return once no more of `request`'s body will come (so none lands after it is
        forgotten): it is whole here, its sender gave it up, it is over this peer's limit
        (its fragments are refused), or the request's deadline passed. An answer given
        before the body was whole (a refusal) does not wait for it."""
        length, transfer = request.body_length, request.body_id or ""
        if (length or 0) > self.max_body:
            return
        given_up = partial(self.receiving.given_up, asker, transfer)
        with trio.move_on_after(max(request.deadline - time.time(), 0.0)):
            await self.receiving.body_arrived(asker, transfer, length, lambda: not given_up())

    async def _answer(self, asker: str, request: Request, outcome: Outcome) -> None:
        with self.database.transaction():  # answered and marked so, or neither
            await self.sending.send(asker, outcome.response, outcome.body, outcome.stream)
            self.executions.answered(request.id, time.time())
            if outcome.refused:
                self.executions.refused(asker)

    async def _outcome(
        self, origin: Origin | None, asker: str, request: Request, interrupted: bool
    ) -> Outcome:
        if interrupted and request.method not in IDEMPOTENT:
            title = "outcome unknown: the peer stopped while the request was with the upstream"
            return self._problem(request, 502, title, outcome="unknown")
        if time.time() > request.deadline:
            return self._problem(request, 504, "request expired in transit")
        if not self._served(asker, request):
            title = f"{self.name} does not serve {request.method} {_path(request)} to {asker}"
            return dataclasses.replace(self._problem(request, 403, title), refused=True)
        if origin is None:
            return self._problem(request, 502, f"{self.name} has no upstream")
        if (request.body_length or 0) > self.max_body or self._over_limit(asker, request):
            return self._problem(request, 413, self._too_large)
        async with self.limit:  # the upstream may be busy past the deadline
            if time.time() > request.deadline:
                return self._problem(request, 504, "request expired waiting for the upstream")
            if request.body_id and self.receiving.given_up(asker, request.body_id):
                title = f"{asker} gave the request's body up before it came whole"
                return self._problem(request, 400, title)  # no upstream connection for it
            return await self._forward(origin, asker, request)

    @property
    def _too_large(self) -> str:
        """The title of the 413 for a request body over this peer's limit."""
        limit = over_limit(f"{self.name}'s", self.max_body)
        return f"the request body is {limit}"

    def _over_limit(self, asker: str, request: Request) -> bool:
        """Whether `request`'s body, its length not said, was dropped here as over the
        body limit (as its fragments came)."""
        return request.body_id is not None and self.receiving.over_limit(asker, request.body_id)

    def _broken(self, request: Request, exc: Exception) -> Outcome:
        """The answer to `request` when handling it failed in a way nothing foresaw
        (`exc`, logged with its traceback): a 502, its outcome unknown unless the
        method is idempotent. A peer that stopped on it would meet it again at restart."""
        self.log.error("%s: request %s failed: %r", self.name, request.id, exc, exc_info=exc)
        unknown = {} if request.method in IDEMPOTENT else {"outcome": "unknown"}
        title = f"{self.name} could not handle the request"
        return self._problem(request, 502, title, **unknown)

    def _problem(self, request: Request, status: int, title: str, **extra: str) -> Outcome:
        return Outcome(problem_response(request.id, self.name, status, title, **extra))

    def _served(self, asker: str, request: Request) -> bool:
        """Whether this peer's `serves` lets `asker`'s `request` reach the upstream."""
        if self.serves is None:
            return True
        patterns = self.serves.get(asker, ())
        return request.target.startswith("/") and serves(patterns, request.method, _path(request))

    async def _forward(self, origin: Origin, asker: str, request: Request) -> Outcome:
        """The upstream's answer (its body in memory or spooled), or the problem its
        failure makes (`_failed`). A request that never reached it, or an idempotent one
        whose connection broke, is tried again with backoff until the deadline."""
        delay, first = RETRY_FIRST, True
        while True:
            await self._until_stored(partial(self._mark_forwarding, asker, request, first))
            first = False
            try:
                return await self._exchange(origin, asker, request)
            except BodyBrokeOff as exc:  # the upstream had it unfinished, and cut
                if self._over_limit(asker, request):
                    return self._problem(request, 413, self._too_large)
                return self._problem(request, 502, f"the request body broke off: {exc}")
            except (BodyTooLarge, HeadTooLarge, UpstreamError) as exc:
                reason = str(exc)
                failed = self._failed(request, exc)
                if failed is not None:
                    return failed
                if isinstance(exc, NeverSent):
                    self.executions.mark(request.id, Execution.RECEIVED, time.time())
            left = request.deadline - time.time()
            if left <= 0:
                return self._problem(request, 502, f"upstream failed: {reason}")
            await trio.sleep(min(delay, left))  # every retry backs off; the last at the end
            delay = min(delay * 2, RETRY_MOST)

    def _failed(self, request: Request, exc: Exception) -> Outcome | None:
        """The problem answering `request` after `exc`, or None to try again: a request
        that never reached the upstream, an idempotent one whose connection broke. A
        request h11 cannot write is a 502 (refused here: it never left); a response
        too big or malformed, or the upstream's silence past its timeout, are final
        (asking again would ask it to do the work twice); for a method that is not
        idempotent, any failure after the request left leaves its outcome unknown."""
        unknown = {} if request.method in IDEMPOTENT else {"outcome": "unknown"}
        if isinstance(exc, BodyTooLarge):
            limit = over_limit(f"{self.name}'s", self.max_body)
            return self._problem(request, 502, f"the upstream's response is {limit}", **unknown)
        if isinstance(exc, HeadTooLarge):
            title = f"the upstream's response head is over what crosses ({MAX_HEADERS}"
            title += f" headers, {MAX_HEADER_BYTES} bytes)"
            return self._problem(request, 502, title, **unknown)
        if isinstance(exc, Unsendable):
            return self._problem(request, 502, str(exc))
        if isinstance(exc, NeverSent):
            return None
        if not unknown and not isinstance(exc, BadReply | Silent):
            return None  # a connection that broke
        if unknown:
            self.log.warning("%s: outcome of %s unknown: %s", self.name, request.id, exc)
            return self._problem(request, 502, f"outcome unknown: {exc}", **unknown)
        return self._problem(request, 502, f"upstream failed: {exc}")

    async def _mark_forwarding(self, asker: str, request: Request, first: bool) -> None:
        """Mark the execution `forwarding` (`streaming`, for a body that goes on to the
        upstream as it comes, until its last byte: `_mark_whole`) and, the first time,
        tell the caller's peer; and wait until that is on disk: then the upstream may
        act."""
        state = Execution.STREAMING if request.body_id else Execution.FORWARDING
        with self.database.transaction():  # one commit: marked, and the caller told
            self.executions.mark(request.id, state, time.time())
            if first:
                note = Control("forwarded", {"id": request.id, "at": time.time()})
                self.sending.note(asker, note)  # rides with the response, most likely
        await self.durable.synced()

    async def _mark_whole(self, request: Request) -> None:
        """Mark the execution `forwarding`, its body's last byte about to go to the
        upstream (which may then act), once that is on disk."""
        self.executions.mark(request.id, Execution.FORWARDING, time.time())
        await self.durable.synced()

    async def _exchange(self, origin: Origin, asker: str, request: Request) -> Outcome:
        """One attempt: the request sent, the reply read (its body spooled and sent on as
        it arrives when big). BodyTooLarge for a reply over the body limit, before any of
        it is read when it says so; UpstreamError as `origin.Origin` raises it."""
        headers = upstream_headers(request, self.name)
        if self.serves is not None:  # what was allowed must be what the upstream does
            headers = [(name, value) for name, value in headers if name not in OVERRIDES]
        if request.unsized and not origin.speaks_http11:  # it may not take chunks: whole
            assert request.body_id is not None
            length = await whole(self.receiving, asker, request.body_id, request.deadline)
            headers = [(name, value) for name, value in headers if name != b"transfer-encoding"]
            headers.append((b"content-length", str(length).encode()))
        content = self._request_body(asker, request)
        view = View.of(request.headers)
        host = view.host.encode("latin-1") if view and self.upstream.preserve_host else None
        async with origin.request(request.method, request.target, headers, content, host) as reply:
            kept = _crossing(request, reply, origin.base, view)
            if self._declared_too_big(request, reply):
                raise BodyTooLarge(self.max_body)  # not a byte of it read or kept
            response = Response(request.id, reply.status, kept, b"")
            if _bodiless(request, reply):
                return Outcome(response)
            relayed = await self.relay.answer(asker, response, reply.chunks(), _declared(reply))
        return Outcome(relayed.response, relayed.body, relayed.stream)

    def _declared_too_big(self, request: Request, reply: Reply) -> bool:
        """Whether `reply` declares a body over this peer's body limit."""
        length = declared_length(reply.header(b"content-length"))
        return request.method != "HEAD" and length is not None and length > self.max_body

    def _request_body(self, asker: str, request: Request) -> bytes | AsyncIterator[bytes]:
        """What is sent: the inline body, or the body that comes in fragments, as they
        come (BodyBrokeOff if it does not come whole by the deadline)."""
        if not request.body_id:
            return request.body
        return follow(
            self.receiving,
            self.bodies,
            asker,
            request.body_id,
            request.body_length,
            request.deadline,
            partial(self._mark_whole, request),
        )


LENGTH = frozenset({b"content-length"})


class HeadTooLarge(Exception):
    """The upstream's response head is over what a message may carry."""


def _crossing(request: Request, reply: Reply, base: str, view: View | None) -> Headers:
    """What crosses of `reply`'s head: its end-to-end headers (a ``Location`` under the
    upstream's `base` moved to the caller's `view`), the `Content-Length` of a reply
    that has no body but declares one (to a HEAD, a 304), its reason phrase
    (``Mesh-Reason``). HeadTooLarge when they are too many or too big to cross."""
    bodiless = request.method == "HEAD" or reply.status == 304  # its length is of another
    kept = end_to_end(reply.headers, LENGTH if bodiless else frozenset())
    if view is not None:
        kept = tuple(
            (name, caller_location(value, base, view) if name == b"location" else value)
            for name, value in kept
        )
    if reply.reason:
        kept += ((REASON, reply.reason),)
    if not headers_fit(kept):
        raise HeadTooLarge
    return kept


def _bodiless(request: Request, reply: Reply) -> bool:
    """Whether `reply` has no body (h11 reads none): to a HEAD, of a status without."""
    return request.method == "HEAD" or reply.status in (204, 304) or reply.status < 200


def _declared(reply: Reply) -> int | None:
    """The length of `reply`'s body, when its `Content-Length` says it and h11 frames it
    by that (not when a `Transfer-Encoding` frames it instead)."""
    if reply.header(b"transfer-encoding") is not None:
        return None
    return declared_length(reply.header(b"content-length"))


def _path(request: Request) -> str:
    """The path of `request`'s target, without its query."""
    return request.target.partition("?")[0]
