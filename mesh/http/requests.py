"""The requests this peer accepted from its callers: a durable record of each, moved along
its lifecycle (`proto.lifecycle`) as the links report its messages, and completed when its
response arrives; callers waiting for one are woken when it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..pipe.bodies import Body, incoming_name
from ..pipe.events import EventHub, LinkEvent, LinkEvents, Progress
from ..pipe.receiving import Receiving
from ..pipe.sending import Sending
from ..pipe.streams import BodyStream
from ..proto.lifecycle import (
    COMPLETED,
    DELIVERED,
    FAILED,
    FINAL,
    FORWARDED,
    RESPONDED,
    SENT,
    STORED,
    RequestState,
)
from ..state.database import Database
from ..state.durable import Durability
from ..state.links import Delivery
from ..state.requests import NOBODY, Answer, Asker, Event, RequestRecord, RequestTables
from ..wire.messages import Control, Headers, Kind, Message, Request, Response, unpack_envelope
from .headers import declared_length
from .problems import is_problem, over_limit, problem_response

# What a link event of a request's message means for the request.
LINK_STEPS = {"sent": SENT, "acked": DELIVERED}
FOLLOW_BATCH = 1024  # link events taken in one transaction at most
# Seconds past its deadline a request the far side took may still be answered (its
# upstream may answer late, its response may be crossing); then it fails.
ANSWER_GRACE = 300.0
ROUND_TRIP_WEIGHT = 0.2  # of each new round trip in the smoothed one
EXPIRY_CHECK = 1.0  # seconds between looks for overdue requests


def new_id() -> str:
    """A new request id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RequestEvent:
    """A step of a request at the caller's peer: a lifecycle state, or ``progress``."""

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


class Requests:
    """The requests of peer `name`. `posted` is told when posts were queued (the poster's
    kick); `max_body` bounds a response taken in fragments."""

    def __init__(
        self,
        name: str,
        database: Database,
        tables: RequestTables,
        sending: Sending,
        receiving: Receiving,
        link_events: LinkEvents,
        progress: EventHub[Progress],
        durable: Durability,
        posted: Callable[[], None],
        max_body: int,
    ) -> None:
        self.name, self.database, self.tables, self.durable = name, database, tables, durable
        self.sending, self.receiving = sending, receiving
        self.link_events, self.progress = link_events, progress
        self.posted, self.max_body = NewPosts(posted, tables), max_body
        self.events: EventHub[RequestEvent] = EventHub()
        self.log = logging.getLogger(f"mesh.{name}")
        self._finished: dict[str, trio.Event] = {}  # set when the request ends
        self._heads: dict[str, Response | None] = {}  # wanted by a waiter (None until come)
        self._started: dict[str, tuple[str, float]] = {}  # in flight: to whom, since when
        self.round_trips = RoundTrips()
        self.ended: Callable[[int], None] = _ignore  # each request's answer's status, as it ends

    async def submit(
        self,
        remote: str,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        ttl: float,
        asker: Asker = NOBODY,
        stream: BodyStream | None = None,
    ) -> str:
        """Store the request and send it; its id (`stream`'s message id, when its body was
        already being sent as it arrived). It is committed on return, durable only at the
        next `durable.synced` (await it before a 202); its ``stored`` event is told then.
        Errors: KeyError (not a link), OSError/sqlite3.Error (the store cannot take it:
        nothing is half accepted)."""
        request_id = stream.message_id if stream is not None else new_id()
        request = Request(request_id, method, target, headers, body.data, time.time() + ttl)
        return await self.submit_request(remote, request, asker, body, stream)

    async def submit_request(
        self,
        remote: str,
        request: Request,
        asker: Asker,
        body: Body | None = None,
        stream: BodyStream | None = None,
    ) -> str:
        """As `submit`, of `request` as made (with `body` when it is in a file, sent as
        `stream` when it leaves as it arrives)."""
        now = time.time()
        with self.database.transaction():  # one commit for both
            sent = await self.sending.send(remote, request, body, stream)
            self.tables.add(
                request.id,
                remote,
                sent.seq,
                request.method,
                request.target,
                request.deadline,
                now,
                asker,
            )
        self.durable.after_sync(lambda: self._changed(request.id, [(STORED, now)]))
        self._started[request.id] = (remote, trio.current_time())
        return request.id

    def fail(self, request_id: str, status: int, title: str) -> None:
        """End `request_id` with a problem of this peer's own (`status`, `title`), if it
        has not ended: its body did not come whole, say."""
        answer = _answer(problem_response(request_id, self.name, status, title))
        added = self.tables.fail(answer, time.time())
        self.database.after_commit(partial(self._changed, request_id, added, status))

    def get(self, request_id: str) -> RequestRecord | None:
        return self.tables.get(request_id)

    async def wait(self, request_id: str, seconds: float) -> RequestRecord | None:
        """The record once ended, or as it stands after `seconds`."""
        with trio.move_on_after(seconds):
            while True:
                record = self.get(request_id)
                if record is None or record.done:
                    return record
                await self._finished.setdefault(request_id, trio.Event()).wait()
        return self.get(request_id)

    async def wait_for_head(
        self, request_id: str, seconds: float
    ) -> RequestRecord | Response | None:
        """As `wait`, but if the head of the answer comes first (`Response.head`: its
        body streams after it, see `pipe.Receiving.streamed`), that head. The head is
        kept for whoever asks next until the request ends (`_changed`): the uploads
        stop taking a body once it comes, and the ingress then answers with it."""
        self._heads.setdefault(request_id, None)  # wanted
        with trio.move_on_after(seconds):
            while True:
                record = self.get(request_id)
                if record is None or record.done:
                    self._heads.pop(request_id, None)
                    return record
                head = self._heads.get(request_id)
                if head is not None:
                    return head
                await self._finished.setdefault(request_id, trio.Event()).wait()
        return self.get(request_id)

    def given(self, record: RequestRecord) -> None:
        """Let go of the spooled response of `record`, which went whole to the caller that
        waited for it: the record says so, and its body file is removed once that is on
        disk."""
        assert record.body_file is not None
        self.tables.given(record.id, time.time())
        self.sending.remove_once_synced([record.body_file])

    def _changed(self, request_id: str, events: list[Event], status: int = 0) -> None:
        """Publish the new events of `request_id`, post them, and wake those waiting for
        it if it ended (only then: each wake-up reads the record again), with an answer
        of `status`."""
        if any(state in FINAL for state, _ in events):
            self.ended(status)
            self._heads.pop(request_id, None)
            started = self._started.pop(request_id, None)
            if started is not None and any(state is COMPLETED for state, _ in events):
                self.round_trips.measure(*started)  # only answers: not failures, nor expiries
            waiting = self._finished.pop(request_id, None)
            if waiting is not None:
                waiting.set()
        for state, at in events:
            self.events.publish(RequestEvent(request_id, state, at))
        self.posted()

    def _advance(self, request_id: str, state: RequestState, at: float) -> None:
        added = self.tables.advance(request_id, state, at, time.time())
        if added:
            self.database.after_commit(lambda: self._changed(request_id, added))

    async def run(self) -> None:
        """Take responses as they are delivered, and follow what happens to requests."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_link_events)
            nursery.start_soon(self._follow_transfers)
            nursery.start_soon(self._expire)
            # Notes and answers in the order they came: a note that came with its answer
            # (in one file) is read first, and its time kept
            async for batch in self.receiving.deliveries(Kind.RESPONSE, Kind.CONTROL):
                with self.database.transaction():  # one commit for all those here
                    for item in batch:
                        message = unpack_envelope(item.payload, len(item.payload)).message
                        if item.kind == Kind.CONTROL:
                            self._noted(item, message)
                            continue
                        if not self._from_its_peer(item, message):
                            continue
                        if isinstance(message, Control):  # it came, but could not be read
                            self._unreadable(item, message)
                            continue
                        assert isinstance(message, Response)
                        if message.head:  # its body streams, and the answer comes after
                            self._head(item, message)
                        elif message.body_length:  # its body comes as fragments: later
                            nursery.start_soon(self._answered, item, message)
                        else:
                            await self._answered(item, message)

    def _drop_body(self, remote: str, transfer: str) -> None:
        """Let go of body `transfer` from `remote`, which nobody will read: late pieces
        of it are dropped, its file removed once the transaction (if any) commits."""
        self.receiving.forget_body(remote, transfer)
        dropped = [incoming_name(remote, transfer)]
        self.database.after_commit(lambda: self.sending.remove_once_synced(dropped))

    def _from_its_peer(self, item: Delivery, message: Message) -> bool:
        """Whether `message` answers a request of ours that went to the peer it came from
        (or one unknown here); else it is dropped, and said so."""
        request_id = message.args.get("id") if isinstance(message, Control) else message.id
        remote = self.tables.remote_of(str(request_id))
        if remote in (None, item.remote):
            return True
        me, sender = self.name, item.remote
        self.log.warning("%s: %s answered a request sent to %s: dropped", me, sender, remote)
        self.receiving.consume([item.id])
        return False

    def _head(self, item: Delivery, head: Response) -> None:
        """The head of an answer whose body streams: the request is ``responded``, and a
        caller waiting for it may start on it now (the answer itself comes once the
        body is whole). A head that comes late, with nobody waiting, or declaring a
        body over this peer's limit (the request will fail) only moves the request on;
        one from another peer than the request went to is dropped."""
        self.receiving.consume([item.id])
        self._advance(head.id, RESPONDED, time.time())
        length = declared_length(dict(head.headers).get(b"content-length"))
        if head.id in self._heads and (length or 0) <= self.max_body:
            self._heads[head.id] = head
            waiting = self._finished.pop(head.id, None)
            if waiting is not None:
                waiting.set()

    def _unreadable(self, item: Delivery, note: Control) -> None:
        """End the request whose response arrived but could not be read (`note` stands
        for it): ``failed`` with a 502 of this peer's own."""
        request_id = str(note.args["id"])
        title = f"the response could not be read: {note.args.get('problem')}"
        answer = _answer(problem_response(request_id, self.name, 502, title))
        added = self.tables.answer(item.id, answer, time.time(), FAILED)
        self.database.after_commit(partial(self._changed, request_id, added, 502))

    async def _answered(self, item: Delivery, message: Response) -> None:
        """Store `message` as its request's answer, once its whole body is here; one over
        this peer's body limit is refused (its fragments are never kept) and the request
        fails with a problem of its own."""
        end, body_file = (FAILED if is_problem(message) else COMPLETED), None
        if (message.body_length or 0) > self.max_body:
            limit = over_limit("this peer's", self.max_body)
            title = f"the response is {limit}"
            if message.body_id:  # what came of it (while it streamed) is not kept
                self._drop_body(item.remote, message.body_id)
            end, message = FAILED, problem_response(message.id, self.name, 502, title)
        if message.body_length and message.body_id:
            body_file = await self.receiving.body_arrived(
                item.remote,
                message.body_id,
                message.body_length,
                partial(self.tables.is_open, message.id),
            )
            if body_file is None:  # its request ended first (expired): nobody reads it
                self._drop_body(item.remote, message.body_id)
                self.receiving.consume([item.id])
                return
        answer = _answer(message, body_file)
        added = self.tables.answer(item.id, answer, time.time(), end)
        if body_file is not None and message.body_id:
            if added:
                self.receiving.forget_body(item.remote, message.body_id)
            else:  # its request ended (or was swept) before: nobody reads it
                self._drop_body(item.remote, message.body_id)
        self.database.after_commit(lambda: self._changed(message.id, added, message.status))

    async def _expire(self) -> None:
        """End each request whose time is up (`RequestTables.overdue`) with a 504 of this
        peer's own, so that no caller, callback or status URL waits for good (for a
        request the far side refused without an answer, or a pipe that stopped)."""
        while True:
            now = time.time()
            for request_id, state in self.tables.overdue(now, ANSWER_GRACE):
                if state in (FORWARDED, RESPONDED):
                    title = f"no answer {ANSWER_GRACE:g} s after the request's deadline"
                else:
                    title = "the request's deadline passed before the far peer took it"
                answer = _answer(problem_response(request_id, self.name, 504, title))
                added = self.tables.fail(answer, now)
                self.database.after_commit(partial(self._changed, request_id, added, 504))
            await trio.sleep(EXPIRY_CHECK)

    def _noted(self, item: Delivery, note: Message) -> None:
        """The far side's note on a request of ours (``forwarded``, with its time, else
        ours); dropped when from another peer than the request went to."""
        assert isinstance(note, Control)
        request_id, at = note.args.get("id"), note.args.get("at")
        if not self._from_its_peer(item, note):
            return
        if note.op == "forwarded" and isinstance(request_id, str):
            self._advance(request_id, FORWARDED, _time_or_now(at))
        self.receiving.consume([item.id])

    async def _follow_transfers(self) -> None:
        """Progress of our requests' bodies going out and their responses' coming in, as
        ``progress`` events (live, and posted to the request's `Mesh-Events` URL)."""
        with self.progress.subscribe() as channel:  # closed when this part stops
            async for progress in channel:
                now = time.time()
                event = RequestEvent(progress.message_id, "progress", now, progress)
                if self.tables.progress(event.request_id, json.dumps(event.as_json()), now):
                    self.events.publish(event)
                    self.posted()

    async def _follow_link_events(self) -> None:
        """Link events of our requests' messages, those that came together in one commit
        (found first, outside it: most are of other messages, and need none)."""
        with self.link_events.subscribe() as channel:  # closed when this part stops
            async for event in channel:
                batch = [event]
                with contextlib.suppress(trio.WouldBlock):
                    while len(batch) < FOLLOW_BATCH:
                        batch.append(channel.receive_nowait())
                steps = _request_steps(self.tables, batch)
                if steps:
                    with self.database.transaction():
                        for request_id, state, at in steps:
                            self._advance(request_id, state, at)


def _request_steps(
    tables: RequestTables, events: list[LinkEvent]
) -> list[tuple[str, RequestState, float]]:
    """The steps `events` (of messages on the links) are of our requests: the request,
    the state it reached, and when."""
    return [
        (request_id, state, each.at)
        for each in events
        if (state := LINK_STEPS.get(each.state))
        and (request_id := tables.by_seq(each.remote, each.seq))
    ]


class NewPosts:
    """Tells the poster (`kick`) of posts queued since it was last told, if any: most
    requests have no callback nor events URL, and the poster need not look for posts
    at each of their events."""

    def __init__(self, kick: Callable[[], None], tables: RequestTables) -> None:
        self.kick, self.tables, self._told = kick, tables, 0

    def __call__(self) -> None:
        if self.tables.posts_added != self._told:
            self._told = self.tables.posts_added
            self.kick()


class RoundTrips:
    """The round trip of requests to each remote peer (sent to answered), smoothed."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self.timed: Callable[[str, float], None] = _ignore  # (remote, seconds), each one

    def retry_after(self, remote: str) -> int:
        """Seconds a caller told to come back for an answer from `remote` should wait:
        the round trip measured lately (requests to their answers), 1 to 60."""
        return min(max(math.ceil(self._seconds.get(remote, 1.0)), 1), 60)

    def measure(self, remote: str, since: float) -> None:
        """Take the round trip of a request to `remote` sent at `since` (trio's clock),
        which was answered now, into that remote's average."""
        took = trio.current_time() - since
        self.timed(remote, took)
        before = self._seconds.get(remote, took)
        self._seconds[remote] = before + ROUND_TRIP_WEIGHT * (took - before)


def _ignore(*_: object) -> None:
    """A hook nobody set."""


def _answer(response: Response, body_file: str | None = None) -> Answer:
    """What is kept of `response` (its body in `body_file` when it came in fragments)."""
    return Answer(response.id, response.status, response.headers, response.body, body_file)


def _time_or_now(at: object) -> float:
    """`at` if it is a time (a finite number of seconds), else now."""
    if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return time.time()
