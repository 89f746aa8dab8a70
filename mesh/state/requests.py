"""The request table of the caller's peer: each request it accepted, its state and events
(moved only as `proto.lifecycle` allows), and its response once one came. A request's
events for its `Mesh-Events` URL and its response for its `Mesh-Callback` URL are queued
as posts in the same transaction that records them. Times are the caller's (wall clock).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from ..proto.lifecycle import (
    COMPLETED,
    FAILED,
    FINAL,
    FORWARDED,
    INITIAL,
    RESPONDED,
    RequestState,
    advance,
)
from ..wire.messages import Headers
from .database import Database, Tables
from .posts import PostTables, RawHeaders

Event = tuple[RequestState, float]  # a state and when it was reached
# Requests not ended, written as the partial index `requests_open` is (with values, not
# parameters: only then may SQLite use the index, and not scan every request kept)
OPEN = "state NOT IN ('completed', 'failed')"
JSON_HEADERS = [(b"content-type", b"application/json")]
LATE_POSTS = 3600.0  # seconds a post queued at or past its request's deadline is tried


@dataclass(frozen=True)
class Answer:
    """A response as the caller's peer keeps it: its body inline, or in a body file."""

    request_id: str
    status: int
    headers: Headers
    body: bytes = b""
    body_file: str | None = None

    def callback_headers(self) -> RawHeaders:
        """What a callback POST of it carries: its headers, then mesh's."""
        mesh = [(b"mesh-request-id", self.request_id.encode())]
        return [*self.headers, *mesh, (b"mesh-status", str(self.status).encode())]


@dataclass(frozen=True)
class Asker:
    """Who asked for a request and where its news goes: the caller (None when the peer
    has no callers), its `Mesh-Callback` and `Mesh-Events` URLs, and the key their posts
    are signed with."""

    caller: str | None = None
    callback: str | None = None
    events_url: str | None = None
    signing_key: bytes | None = None


NOBODY = Asker()  # a request of a peer without callers, with no callback or events URL


@dataclass
class RequestRecord:
    id: str
    remote: str
    method: str
    target: str
    state: RequestState
    events: list[Event]
    deadline: float
    status: int | None = None
    headers: Headers = ()
    body: bytes = b""
    body_file: str | None = None  # the response body is in this body file instead
    caller: str | None = None  # who made it
    given_at: float | None = None  # its spooled response went to the caller then (file gone)

    @property
    def done(self) -> bool:
        return self.state in FINAL

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


class RequestTables(Tables):
    """The request table of one peer's database; posts go to `posts`."""

    def __init__(self, database: Database, posts: PostTables) -> None:
        super().__init__(database)
        self._posts = posts

    @property
    def posts_added(self) -> int:
        """How many posts were queued since the tables were opened (`PostTables.added`)."""
        return self._posts.added

    def add(
        self,
        request_id: str,
        remote: str,
        seq: int,
        method: str,
        target: str,
        deadline: float,
        now: float,
        asker: Asker = NOBODY,
    ) -> None:
        """Record a request sent as message `seq` to `remote`, stored at `now`, for
        `asker`."""
        with self._database.transaction():
            self._sql.execute(
                "INSERT INTO requests (id, remote, seq, method, target, state, events, deadline,"
                " callback, events_url, caller, signing_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    remote,
                    seq,
                    method,
                    target,
                    INITIAL,
                    json.dumps([[INITIAL, now]]),
                    deadline,
                    asker.callback,
                    asker.events_url,
                    asker.caller,
                    asker.signing_key,
                ),
            )
            news = _News(request_id, asker.events_url, deadline, asker.signing_key)
            self._post_events(news, [(INITIAL, now)], now)

    def remote_of(self, request_id: str) -> str | None:
        """The peer request `request_id` went to (None: no such request here)."""
        row = self._sql.execute(
            "SELECT remote FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def is_open(self, request_id: str) -> bool:
        """Whether request `request_id` is here and has not ended."""
        row = self._sql.execute("SELECT state FROM requests WHERE id = ?", (request_id,))
        found = row.fetchone()
        return found is not None and RequestState(found[0]) not in FINAL

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._sql.execute(
            "SELECT id, remote, method, target, state, events, deadline, status, headers, body,"
            " body_file, caller, given_at FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        (
            id_,
            remote,
            method,
            target,
            state,
            events,
            deadline,
            status,
            headers,
            body,
            file,
            by,
            given,
        ) = row
        return RequestRecord(
            id=id_,
            remote=remote,
            method=method,
            target=target,
            state=RequestState(state),
            events=[(RequestState(s), at) for s, at in json.loads(events)],
            deadline=deadline,
            status=status,
            headers=_unpack_headers(headers),
            body=bytes(body or b""),
            body_file=file,
            caller=by,
            given_at=given,
        )

    def given(self, request_id: str, at: float) -> None:
        """Note that the spooled response of `request_id` went whole to the caller that
        waited for it, at `at`: its body file is let go (`given_at`)."""
        with self._database.transaction():
            self._sql.execute(
                "UPDATE requests SET body_file = NULL, given_at = ? WHERE id = ?",
                (at, request_id),
            )

    def by_seq(self, remote: str, seq: int) -> str | None:
        """The id of the request sent as message `seq` to `remote`, if one was."""
        row = self._sql.execute(
            "SELECT id FROM requests WHERE remote = ? AND seq = ?", (remote, seq)
        ).fetchone()
        return str(row[0]) if row else None

    def advance(self, request_id: str, state: RequestState, at: float, now: float) -> list[Event]:
        """Move the request to `state`, reached at `at` (perhaps by another peer's clock),
        as the lifecycle allows, with the states on the way; the events added, none for
        late or repeated news. Their posts are due at `now`."""
        with self._database.transaction():
            row = self._sql.execute(
                "SELECT state, events, events_url, deadline, signing_key FROM requests"
                " WHERE id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                return []
            new = [(step, at) for step in advance(RequestState(row[0]), state)]
            if new:
                self._sql.execute(
                    "UPDATE requests SET state = ?, events = ? WHERE id = ?",
                    (state, _with_events(row[1], new), request_id),
                )
                self._post_events(_News(request_id, row[2], row[3], row[4]), new, now)
        return new

    def answer(
        self, delivery_id: int, answer: Answer, at: float, end: RequestState = COMPLETED
    ) -> list[Event]:
        """Store `answer` for its request (if it is ours and not ended), moving it through
        ``responded`` to `end` (``completed``, or ``failed`` when the answer is mesh's own
        problem), queue its callback, and consume delivery `delivery_id`, in one
        transaction; the events added (none if there was nothing to answer)."""
        with self._database.transaction():
            new = self._settle(
                answer, at, lambda now: advance(now, RESPONDED) + advance(RESPONDED, end)
            )
            self._sql.execute("DELETE FROM inbound WHERE id = ?", (delivery_id,))
        return new

    def fail(self, answer: Answer, at: float) -> list[Event]:
        """End the request with `answer`, a problem of this peer's own (no response came:
        it was overdue), if it has not ended; its callback is queued as for any answer.
        The events added."""
        with self._database.transaction():
            return self._settle(answer, at, lambda now: advance(now, FAILED))

    def _settle(
        self,
        answer: Answer,
        at: float,
        steps: Callable[[RequestState], tuple[RequestState, ...]],
    ) -> list[Event]:
        """Store `answer` and the `steps` from the request's state (inside a transaction)."""
        row = self._sql.execute(
            "SELECT state, events, callback, events_url, deadline, signing_key FROM requests"
            " WHERE id = ?",
            (answer.request_id,),
        ).fetchone()
        if row is None or row[0] in FINAL:
            return []
        new = [(step, at) for step in steps(RequestState(row[0]))]
        self._post_events(_News(answer.request_id, row[3], row[4], row[5]), new, at)
        if row[2] is not None:
            self._post_answer(_News(answer.request_id, row[2], row[4], row[5]), answer, at)
        self._sql.execute(
            "UPDATE requests SET state = ?, events = ?, status = ?, headers = ?,"
            " body = ?, body_file = ?, ended = ? WHERE id = ?",
            (
                new[-1][0],
                _with_events(row[1], new),
                answer.status,
                _pack_headers(answer.headers),
                answer.body,
                answer.body_file,
                at,
                answer.request_id,
            ),
        )
        return new

    def overdue(self, now: float, grace: float) -> list[tuple[str, RequestState]]:
        """Requests not ended whose time is up, with their states, at most 256 at once:
        those the far side has not taken (not ``forwarded``) past their deadline, the
        others `grace` seconds later (their answer may be on its way)."""
        taken = (FORWARDED, RESPONDED)
        rows = self._sql.execute(
            f"SELECT id, state FROM requests WHERE {OPEN} AND (deadline < ?"
            " AND state NOT IN (?, ?) OR deadline < ?) ORDER BY deadline LIMIT 256",
            (now, *taken, now - grace),
        )
        return [(str(id_), RequestState(state)) for id_, state in rows]

    def next_deadline(self) -> float | None:
        """The earliest deadline of a request not ended, if there is one."""
        row = self._sql.execute(f"SELECT min(deadline) FROM requests WHERE {OPEN}").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def progress(self, request_id: str, event: str, now: float) -> bool:
        """Queue progress `event` (JSON) for the request's events URL, if it has one;
        False if `request_id` is not one of our requests."""
        row = self._sql.execute(
            "SELECT events_url, deadline, signing_key FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            with self._database.transaction():
                headers = _event_headers(request_id)
                self._posts.add(
                    request_id, row[0], headers, event.encode(), row[1], now, None, row[2]
                )
        return True

    def in_flight(self) -> dict[str, int]:
        """How many of our requests are in each state short of an end."""
        rows = self._sql.execute(
            f"SELECT state, count(*) FROM requests WHERE {OPEN} GROUP BY state"
        )
        return {str(state): int(count) for state, count in rows}

    def _post_events(self, news: _News, events: Iterable[Event], now: float) -> None:
        """Queue each event for the request's events URL, if it has one (inside the
        caller's transaction)."""
        if news.url is None:
            return
        for state, at in events:
            body = json.dumps({"request_id": news.request_id, "state": state, "at": at})
            self._posts.add(
                news.request_id,
                news.url,
                _event_headers(news.request_id),
                body.encode(),
                news.post_until(now),
                now,
                signing_key=news.signing_key,
            )

    def _post_answer(self, news: _News, answer: Answer, now: float) -> None:
        """Queue the callback POST of `answer` (inside the caller's transaction)."""
        assert news.url is not None
        self._posts.add(
            answer.request_id,
            news.url,
            answer.callback_headers(),
            answer.body,
            news.post_until(now),
            now,
            answer.body_file,
            news.signing_key,
        )


@dataclass(frozen=True)
class _News:
    """Where a request's posts of one kind go, until when, and signed with what."""

    request_id: str
    url: str | None
    deadline: float
    signing_key: bytes | None

    def post_until(self, now: float) -> float:
        """Until when a post queued at `now` is tried: the request's deadline, and at
        least `LATE_POSTS` seconds (its answer, a 504 among them, may come at or after
        the deadline: it is posted all the same)."""
        return max(self.deadline, now + LATE_POSTS)


def _event_headers(request_id: str) -> RawHeaders:
    """What an event post carries: JSON, about request `request_id`."""
    return [*JSON_HEADERS, (b"mesh-request-id", request_id.encode())]


def _with_events(events: str, new: list[Event]) -> str:
    """The events column (JSON) of a request with `new` added."""
    return json.dumps([*json.loads(events), *([state, at] for state, at in new)])


def _pack_headers(headers: Headers) -> bytes:
    return bytes(msgpack.packb([part for pair in headers for part in pair]))


def _unpack_headers(data: bytes | None) -> Headers:
    if not data:
        return ()
    flat = msgpack.unpackb(data)
    return tuple(zip(flat[0::2], flat[1::2], strict=True))
