"""A peer's durable state: one folder per peer under the roster's `state`, holding a lock
file, a SQLite database (WAL; commits are fsync'd in groups, see `durable`) and the
quarantine folder.

The lock makes sure only one process runs a peer on a given state. The database holds the
peer's epoch (a random id made when the state is created, so a peer whose state was lost
or restored is noticed by the others), per link the numbering and what was received,
every outbound message until it is acknowledged, and every delivered message until the
layer above has consumed it. A delivery and the received-state that acknowledges it are
written in one transaction, so after a crash a message is either delivered and
acknowledged, or neither.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PeerLockedError
from ..proto.link import LinkState
from ..proto.received import ReceivedState

REQUEST_STATES = ("stored", "sent", "delivered", "forwarded", "responded", "completed", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    remote TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL DEFAULT 1,
    remote_epoch TEXT,
    received TEXT NOT NULL DEFAULT '[0, []]',
    retired TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS outbound (
    remote TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    spool TEXT,  -- a fragment's body file: its data is read from there when written
    spool_length INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (remote, seq)
);
CREATE TABLE IF NOT EXISTS transfers (  -- bodies arriving in fragments
    remote TEXT NOT NULL,
    id TEXT NOT NULL,  -- the transfer
    total INTEGER NOT NULL,
    have INTEGER NOT NULL,
    message TEXT NOT NULL DEFAULT '',  -- the request or response it is the body of
    abandoned INTEGER NOT NULL DEFAULT 0,  -- the sender gave it up: take no more of it
    PRIMARY KEY (remote, id)
);
CREATE TABLE IF NOT EXISTS streams (  -- bodies sent in fragments while still arriving
    spool TEXT PRIMARY KEY,
    remote TEXT NOT NULL,
    transfer TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    remote TEXT NOT NULL,
    seq INTEGER NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    events TEXT NOT NULL,
    deadline REAL NOT NULL,
    status INTEGER,
    headers BLOB,
    body BLOB,
    body_file TEXT,
    callback TEXT,
    events_url TEXT
);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    url TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    body_file TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    deadline REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    request BLOB NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inbound (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    remote TEXT NOT NULL,
    remote_epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL,
    received REAL NOT NULL,
    UNIQUE (remote, remote_epoch, seq)
);
CREATE INDEX IF NOT EXISTS requests_by_seq ON requests (remote, seq);
"""


class StateLock:
    """An exclusive `flock` on ``<state>/peer.lock``, held for the life of the peer.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, state_dir: Path, peer: str) -> None:
        self.path = state_dir / "peer.lock"
        self.peer = peer
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `PeerLockedError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PeerLockedError(
                f"peer {self.peer} is already running on state {self.path.parent} "
                f"(pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Inbound:
    """A delivered message waiting for the layer above."""

    id: int
    remote: str
    seq: int
    kind: int
    payload: bytes
    received: float


@dataclass(frozen=True)
class Post:
    """A queued POST to a callback or events URL."""

    id: int
    url: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    attempts: int
    deadline: float
    body_file: str | None = None  # the body is this body file's content instead


@dataclass(frozen=True)
class OutboundRow:
    """A message to store for sending: its envelope, and for a fragment whose data stays
    in a body file, that file and how many of its bytes the fragment carries."""

    seq: int
    payload: bytes
    spool: str | None = None
    spool_length: int = 0


class Store:
    """The SQLite state of one peer. Opening it creates the folder and epoch when new."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = state_dir
        self.db = sqlite3.connect(state_dir / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # commits reach the disk in groups
        # Checkpoints (WAL into the database, with fsyncs) would stall whichever commit
        # crossed the threshold, on the event loop: `checkpoint` does them from a thread.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.execute(f"PRAGMA journal_size_limit={16 << 20}")
        self._checkpointer: sqlite3.Connection | None = None
        self.db.executescript(_SCHEMA)
        self._add_missing_columns()
        self.repeats = 0  # deliveries refused because the message was already stored
        self._depth = 0  # nesting of `transaction` blocks
        self.commits = 0  # transactions committed so far (see durable.Durability)
        self._after_commit: list[Callable[[], None]] = []
        with self.transaction():
            self.epoch = self._epoch()
        self.created = self._created

    def _add_missing_columns(self) -> None:
        """Bring a state made by an earlier version up to this schema."""
        added = {
            "outbound": ("spool TEXT", "spool_length INTEGER NOT NULL DEFAULT 0"),
            "requests": ("body_file TEXT",),
            "posts": ("body_file TEXT",),
            "transfers": (
                "message TEXT NOT NULL DEFAULT ''",
                "abandoned INTEGER NOT NULL DEFAULT 0",
            ),
        }
        for table, columns in added.items():
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

    def _epoch(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._created = row is None
        if row is not None:
            return str(row[0])
        epoch = os.urandom(8).hex()
        self.db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic transaction, committed on return but not fsync'd: it reaches the
        disk at the next `durable.Durability.synced`, which whatever lets something leave
        the peer awaits first (a file, a request to the upstream, a 202).

        A crash cannot undo a commit; a power cut can undo those not synced yet, but only
        together with everything after them (the log is replayed in order) and nothing
        any barrier let out, so what they recorded is simply redone. Nested blocks join
        the outermost one: several steps share one commit. Never checkpoint (await)
        inside one: another task's block would join it. (The connection is in autocommit
        mode, where `with connection:` would NOT group statements.)
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._after_commit.clear()
            self.db.execute("ROLLBACK")
            raise
        self._depth = 0
        self.db.execute("COMMIT")
        self.commits += 1
        hooks, self._after_commit = self._after_commit, []
        for hook in hooks:
            hook()

    def sync_log(self) -> None:
        """Make every commit so far durable: fsync the write-ahead log they are in.
        Blocking (`durable.Durability` decides where it runs)."""
        try:
            fd = os.open(self.folder / "state.sqlite-wal", os.O_RDONLY)
        except FileNotFoundError:  # no log: everything is in the database file
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` once the current transaction commits (never, if it rolls back).
        Outside a transaction, at once."""
        if self._depth:
            self._after_commit.append(hook)
        else:
            hook()

    @property
    def quarantine(self) -> Path:
        return self.folder / "quarantine"

    # -- links ---------------------------------------------------------------------------

    def link_state(self, remote: str) -> LinkState:
        """What to restore the link to `remote` from (a fresh link if never seen)."""
        row = self.db.execute(
            "SELECT next_seq, remote_epoch, received, retired FROM links WHERE remote = ?",
            (remote,),
        ).fetchone()
        unacked = tuple(
            (int(seq), int(size))
            for seq, size in self.db.execute(
                "SELECT seq, length(payload) + spool_length FROM outbound WHERE remote = ?"
                " ORDER BY seq",
                (remote,),
            )
        )
        if row is None:
            return LinkState(unacked=unacked)
        next_seq, remote_epoch, received, retired = row
        return LinkState(
            next_seq=int(next_seq),
            unacked=unacked,
            remote_epoch=remote_epoch,
            received=ReceivedState.from_wire(json.loads(received), 1 << 20),
            retired=tuple(json.loads(retired)),
        )

    def _ensure_link(self, remote: str) -> None:
        """The link's row exists (inside the caller's transaction)."""
        self.db.execute("INSERT OR IGNORE INTO links (remote) VALUES (?)", (remote,))

    def add_outbound(self, remote: str, rows: Sequence[OutboundRow], now: float) -> None:
        """Make messages to `remote` durable, all or none, with the link's numbering past
        them."""
        with self.transaction():
            self.db.executemany(
                "INSERT INTO outbound (remote, seq, payload, created, spool, spool_length)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                ((remote, r.seq, r.payload, now, r.spool, r.spool_length) for r in rows),
            )
            self._ensure_link(remote)
            self.db.execute(
                "UPDATE links SET next_seq = max(next_seq, ?) WHERE remote = ?",
                (max(r.seq for r in rows) + 1, remote),
            )

    def outbound_rows(self, remote: str, seqs: Sequence[int]) -> dict[int, OutboundRow]:
        """The stored messages among `seqs` (those acknowledged meanwhile are gone)."""
        marks = ",".join("?" * len(seqs))
        rows = self.db.execute(
            "SELECT seq, payload, spool, spool_length FROM outbound"
            f" WHERE remote = ? AND seq IN ({marks})",
            (remote, *seqs),
        )
        return {int(q): OutboundRow(int(q), bytes(p), s, int(n)) for q, p, s, n in rows}

    def acked(self, remote: str, seqs: Iterable[int], next_seq: int) -> dict[str, int]:
        """Acknowledged messages are dropped; `next_seq` never goes back. Per body file
        a fragment of which was acknowledged, the bytes of its fragments still waiting
        (0: all acknowledged, for the caller to remove the file once this is synced)."""
        spools: set[str] = set()
        with self.transaction():
            for seq in seqs:
                row = self.db.execute(
                    "DELETE FROM outbound WHERE remote = ? AND seq = ? RETURNING spool",
                    (remote, seq),
                ).fetchone()
                if row is not None and row[0] is not None:
                    spools.add(str(row[0]))
            self._ensure_link(remote)
            self.db.execute(
                "UPDATE links SET next_seq = max(next_seq, ?) WHERE remote = ?",
                (next_seq, remote),
            )
            return {name: self.spool_waiting(name) for name in spools}

    def spool_waiting(self, name: str) -> int:
        """Bytes of fragments of body file `name` not acknowledged yet."""
        row = self.db.execute(
            "SELECT sum(spool_length) FROM outbound WHERE spool = ?", (name,)
        ).fetchone()
        return int(row[0] or 0)

    def sending(self) -> list[tuple[str, str, int, int]]:
        """Per body file being sent: (remote, file, the seq of its first fragment still
        out, bytes of fragments not acknowledged yet)."""
        rows = self.db.execute(
            "SELECT remote, spool, min(seq), sum(spool_length) FROM outbound"
            " WHERE spool IS NOT NULL GROUP BY remote, spool"
        )
        return [(str(r), str(spool), int(seq), int(left)) for r, spool, seq, left in rows]

    def receiving(self) -> list[tuple[str, str, int, int]]:
        """(remote, message id, bytes here, total) of each body arriving in fragments."""
        rows = self.db.execute(
            "SELECT remote, message, have, total FROM transfers WHERE NOT abandoned ORDER BY remote"
        )
        return [(str(r), str(i), int(h), int(t)) for r, i, h, t in rows]

    def abandoned(self, remote: str) -> set[str]:
        """The transfers from `remote` its sender gave up (later fragments are dropped)."""
        rows = self.db.execute("SELECT id FROM transfers WHERE remote = ? AND abandoned", (remote,))
        return {str(row[0]) for row in rows}

    def open_stream(self, spool: str, remote: str, transfer: str, message_id: str) -> None:
        """Body file `spool` is being sent as `transfer` while it still arrives."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO streams (spool, remote, transfer, message)"
                " VALUES (?, ?, ?, ?)",
                (spool, remote, transfer, message_id),
            )

    def close_stream(self, spool: str) -> None:
        """Its message was stored, or it was abandoned (inside the caller's transaction)."""
        with self.transaction():
            self.db.execute("DELETE FROM streams WHERE spool = ?", (spool,))

    def streams(self) -> list[tuple[str, str, str, str]]:
        """(spool, remote, transfer, message id) of each stream left open (by a crash)."""
        rows = self.db.execute("SELECT spool, remote, transfer, message FROM streams")
        return [(str(s), str(r), str(t), str(m)) for s, r, t, m in rows]

    def spools_in_use(self) -> set[str]:
        """Body files an unacknowledged fragment still reads from."""
        return {spool for _, spool, _, _ in self.sending()}

    def deliver(
        self,
        remote: str,
        remote_epoch: str,
        messages: Sequence[tuple[int, int, bytes]],
        received: ReceivedState,
        retired: Iterable[str],
        now: float,
        fragments: Iterable[tuple[str, str, int, int]] = (),
        abandoned: Iterable[str] = (),
    ) -> list[int]:
        """Store delivered messages (seq, kind, payload), the (transfer, message id, total,
        length) of delivered fragments (whose data is already durable in their body
        files), the transfers their senders gave up, and the received-state that
        acknowledges them, in one transaction; the inbound ids."""
        ids = []
        with self.transaction():
            self.db.executemany(
                "INSERT INTO transfers (remote, id, message, total, have) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (remote, id) DO UPDATE SET have = have + excluded.have",
                ((remote, t, m, total, length) for t, m, total, length in fragments),
            )
            self.db.executemany(
                "INSERT INTO transfers (remote, id, total, have, abandoned) VALUES (?, ?, 0, 0, 1)"
                " ON CONFLICT (remote, id) DO UPDATE SET abandoned = 1",
                ((remote, transfer) for transfer in abandoned),
            )
            for seq, kind, payload in messages:
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO inbound"
                    " (remote, remote_epoch, seq, kind, payload, received)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (remote, remote_epoch, seq, kind, payload, now),
                )
                if cursor.rowcount:
                    ids.append(int(cursor.lastrowid or 0))
                else:
                    self.repeats += 1  # delivered before: never twice
            self._ensure_link(remote)
            self.db.execute(
                "UPDATE links SET remote_epoch = ?, received = ?, retired = ? WHERE remote = ?",
                (remote_epoch, json.dumps(received.to_wire()), json.dumps(sorted(retired)), remote),
            )
        return ids

    def inbound(self, after: int, limit: int = 256, kind: int | None = None) -> list[Inbound]:
        """Delivered messages not yet consumed, with ids above `after`, oldest first."""
        query = "SELECT id, remote, seq, kind, payload, received FROM inbound WHERE id > ?"
        args: list[Any] = [after]
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind)
        rows = self.db.execute(query + " ORDER BY id LIMIT ?", (*args, limit))
        return [Inbound(int(i), r, int(s), int(k), bytes(p), float(t)) for i, r, s, k, p, t in rows]

    def consume_upto(self, last: int, kind: int) -> None:
        """Consume every delivered message of `kind` with an id up to `last`."""
        with self.transaction():
            self.db.execute("DELETE FROM inbound WHERE id <= ? AND kind = ?", (last, kind))

    def consume(self, ids: Iterable[int]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM inbound WHERE id = ?", ((i,) for i in ids))

    def transfer_received(self, remote: str, transfer: str) -> int:
        """How many bytes of body `transfer` from `remote` are here."""
        row = self.db.execute(
            "SELECT have FROM transfers WHERE remote = ? AND id = ?", (remote, transfer)
        ).fetchone()
        return int(row[0]) if row else 0

    def forget_transfer(self, remote: str, transfer: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM transfers WHERE remote = ? AND id = ?", (remote, transfer))

    # -- requests (the caller's side) ----------------------------------------------------

    def add_request(
        self,
        request_id: str,
        remote: str,
        seq: int,
        method: str,
        target: str,
        deadline: float,
        callback: str | None = None,
        events_url: str | None = None,
    ) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO requests (id, remote, seq, method, target, state, events, deadline,"
                " callback, events_url) VALUES (?, ?, ?, ?, ?, 'stored', ?, ?, ?, ?)",
                (
                    request_id,
                    remote,
                    seq,
                    method,
                    target,
                    json.dumps([["stored", now]]),
                    deadline,
                    callback,
                    events_url,
                ),
            )
            self._post_events(request_id, events_url, [("stored", now)], deadline)

    def _post_events(
        self,
        request_id: str,
        url: str | None,
        events: Iterable[tuple[str, float]],
        deadline: float,
    ) -> None:
        """Queue each event for `url` (inside the caller's transaction)."""
        if url is None:
            return
        for state, at in events:
            body = json.dumps({"request_id": request_id, "state": state, "at": at}).encode()
            self.add_post(request_id, url, [(b"content-type", b"application/json")], body, deadline)

    def add_post(
        self,
        request_id: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        deadline: float,
        body_file: str | None = None,
    ) -> None:
        """Queue a POST of `body` (or of body file `body_file`) to `url` (inside the
        caller's transaction)."""
        flat = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])
        self.db.execute(
            "INSERT INTO posts (request_id, url, headers, body, body_file, due, deadline)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, url, flat.encode(), body, body_file, time.time(), deadline),
        )

    def due_posts(self, now: float) -> list[Post]:
        """Posts to send now, oldest first: per URL, the leading run of due posts (a post
        waiting for its retry holds back the later ones to its URL, keeping their order)."""
        rows = self.db.execute(
            "SELECT id, url, headers, body, attempts, deadline, due, body_file FROM posts"
            " ORDER BY id"
        )
        blocked: set[str] = set()
        found = []
        for i, url, headers, body, attempts, deadline, due, body_file in rows:
            if url in blocked:
                continue
            if due > now:
                blocked.add(url)
                continue
            pairs = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in json.loads(headers)]
            post = Post(int(i), str(url), pairs, bytes(body), int(attempts), deadline, body_file)
            found.append(post)
        return found

    def next_post_due(self, busy: Iterable[str] = ()) -> float | None:
        """When the earliest post that may go (the oldest for its URL) is due, leaving out
        the URLs in `busy`."""
        heads = self.db.execute(
            "SELECT url, due FROM posts WHERE id IN (SELECT min(id) FROM posts GROUP BY url)"
        )
        skip = set(busy)
        return min((float(due) for url, due in heads if url not in skip), default=None)

    def post_done(self, post_id: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM posts WHERE id = ?", (post_id,))

    def post_later(self, post_id: int, due: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE posts SET attempts = attempts + 1, due = ? WHERE id = ?", (due, post_id)
            )

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, remote, method, target, state, events, deadline, status, headers, body,"
            " body_file FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        keys = (
            "id",
            "remote",
            "method",
            "target",
            "state",
            "events",
            "deadline",
            "status",
            "headers",
            "body",
            "body_file",
        )
        record = dict(zip(keys, row, strict=True))
        record["events"] = json.loads(record["events"])
        return record

    def request_by_seq(self, remote: str, seq: int) -> str | None:
        row = self.db.execute(
            "SELECT id FROM requests WHERE remote = ? AND seq = ?", (remote, seq)
        ).fetchone()
        return str(row[0]) if row else None

    def add_request_event(self, request_id: str, state: str, at: float) -> list[tuple[str, float]]:
        """Record `state` at `at` if it moves the request forward, with the steps before it
        that were not heard of (a later step implies them); the events added. A late or
        repeated event (an ack that comes after what it made possible) adds nothing."""
        with self.transaction():
            row = self.db.execute(
                "SELECT state, events, events_url, deadline FROM requests WHERE id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                return []
            current, events = row[0], json.loads(row[1])
            start, end = REQUEST_STATES.index(current) + 1, REQUEST_STATES.index(state)
            if end < start:
                return []
            new = [(s, at) for s in REQUEST_STATES[start:end] if s != "failed"] + [(state, at)]
            events += [list(e) for e in new]
            self.db.execute(
                "UPDATE requests SET state = ?, events = ? WHERE id = ?",
                (state, json.dumps(events), request_id),
            )
            self._post_events(request_id, row[2], new, row[3])
        return new

    def add_progress_post(self, request_id: str, event: str) -> bool:
        """Queue progress `event` (JSON) for the request's events URL, if it has one;
        False if `request_id` is not one of our requests."""
        row = self.db.execute(
            "SELECT events_url, deadline FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            with self.transaction():
                headers = [(b"content-type", b"application/json")]
                self.add_post(request_id, row[0], headers, event.encode(), row[1])
        return True

    def complete_request(
        self,
        inbound_id: int,
        request_id: str,
        status: int,
        headers: bytes,
        body: bytes,
        at: float,
        callback_headers: list[tuple[bytes, bytes]] | None = None,
        body_file: str | None = None,
    ) -> list[tuple[str, float]]:
        """Store the response of `request_id` (if it is ours and not done) and consume the
        delivered message, in one transaction; the events this added (none if there was
        nothing to complete). Steps not heard of yet are implied by the response."""
        new: list[tuple[str, float]] = []
        with self.transaction():
            row = self.db.execute(
                "SELECT events, callback, events_url, deadline FROM requests"
                " WHERE id = ? AND state != 'completed'",
                (request_id,),
            ).fetchone()
            if row is not None:
                events = json.loads(row[0])
                seen = {e[0] for e in events}
                implied = [s for s in ("sent", "delivered", "forwarded") if s not in seen]
                new = [(s, at) for s in (*implied, "responded", "completed")]
                events += [list(e) for e in new]
                self._post_events(request_id, row[2], new, row[3])
                if row[1] is not None:
                    post_headers = callback_headers or []
                    self.add_post(request_id, row[1], post_headers, body, row[3], body_file)
                self.db.execute(
                    "UPDATE requests SET state = 'completed', status = ?, headers = ?, body = ?,"
                    " body_file = ?, events = ? WHERE id = ?",
                    (status, headers, body, body_file, json.dumps(events), request_id),
                )
            self.db.execute("DELETE FROM inbound WHERE id = ?", (inbound_id,))
        return new

    def requests_in_flight(self) -> dict[str, int]:
        """How many of our requests are in each state short of completed."""
        rows = self.db.execute(
            "SELECT state, count(*) FROM requests WHERE state NOT IN ('completed', 'failed')"
            " GROUP BY state"
        )
        return {str(state): int(count) for state, count in rows}

    # -- executions (the far side) ---------------------------------------------------------

    def take_execution(
        self, inbound_id: int, origin: str, request_id: str, request: bytes, at: float
    ) -> bool:
        """Record a delivered request for execution and consume the delivery, atomically;
        False if it was taken before (it is then never executed again)."""
        with self.transaction():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO executions (id, origin, state, request, updated)"
                " VALUES (?, ?, 'received', ?, ?)",
                (request_id, origin, request, at),
            )
            self.db.execute("DELETE FROM inbound WHERE id = ?", (inbound_id,))
        return bool(cursor.rowcount)

    def mark_execution(self, request_id: str, state: str, at: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE executions SET state = ?, updated = ? WHERE id = ?",
                (state, at, request_id),
            )

    def unfinished_executions(self) -> list[tuple[str, bytes, str]]:
        """(origin, request, state) of executions not answered yet, oldest first."""
        rows = self.db.execute(
            "SELECT origin, request, state FROM executions"
            " WHERE state IN ('received', 'forwarding') ORDER BY updated"
        )
        return [(str(o), bytes(r), str(s)) for o, r, s in rows]

    # -- status --------------------------------------------------------------------------

    def save_status(self, status: dict[str, Any]) -> None:
        """A snapshot for `mesh status`, which reads it whether the peer runs or not."""
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('status', ?)",
                (json.dumps(status),),
            )

    def load_status(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'status'").fetchone()
        return json.loads(row[0]) if row else None

    def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database, on a connection of its own, so the
        log does not grow without end; (pages in the log, pages copied). Blocking: call
        from a thread, one at a time."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.folder / "state.sqlite", isolation_level=None, check_same_thread=False
            )
        _, logged, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(logged), int(copied)

    def close(self) -> None:
        self.sync_log()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.db.close()
