"""A peer's database: one folder per peer under the roster's `state`, holding a SQLite
database (WAL), the peer's epoch, and the snapshot `mesh status` reads.

The epoch is a random id made when the state is created, so a peer whose state was lost
or restored is noticed by the others. Commits are not fsync'd one by one: they reach the
disk in groups (`sync_log`, driven by `durable.Durability`), and the write-ahead log is
copied into the database by `checkpoint`, from a thread. The tables on it are in `links`,
`requests`, `posts` and `executions`; every table is made here, in one schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Bytes the write-ahead log is cut back to when it starts over. A busy peer logs a few
# megabytes between two checkpoints (0.1 s apart): the file reaches this size at once and
# stays there, instead of creeping up to a larger cap over minutes.
JOURNAL_SIZE_LIMIT = 4 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    remote TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL DEFAULT 1,
    remote_epoch TEXT,
    received TEXT NOT NULL DEFAULT '[0, []]',
    retired TEXT NOT NULL DEFAULT '[]',
    remote_since REAL NOT NULL DEFAULT 0  -- when the remote's epoch began, by its clock
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
    abandoned INTEGER NOT NULL DEFAULT 0,  -- 1: the sender gave it up, 2: over the limit
    updated REAL,  -- when a piece of it, or the word it was given up, last came
    told_length INTEGER,  -- its length, told at its end when its message went without it
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
    events_url TEXT,
    caller TEXT,  -- the caller who made it (None: the peer has no callers)
    signing_key BLOB,  -- signs its callbacks: derived from the caller's token, never it
    given_at REAL,  -- when its spooled response went to the caller that waited (file gone)
    ended REAL  -- when it reached its end (completed or failed): retention counts from it
);
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    url TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    body_file TEXT,
    signing_key BLOB,
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
CREATE TABLE IF NOT EXISTS refusals (  -- requests `serves` kept from the upstream
    remote TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
"""
_INDEXES = """  -- made after the columns an earlier version lacked are added
CREATE INDEX IF NOT EXISTS requests_by_seq ON requests (remote, seq);
CREATE INDEX IF NOT EXISTS requests_open ON requests (deadline)
    WHERE state NOT IN ('completed', 'failed');  -- those that may fall overdue
CREATE INDEX IF NOT EXISTS requests_ended ON requests (ended) WHERE ended IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_responded ON executions (updated)
    WHERE state = 'responded';  -- those retention removes in time
CREATE INDEX IF NOT EXISTS posts_by_request ON posts (request_id);
CREATE INDEX IF NOT EXISTS inbound_by_time ON inbound (kind, received);
"""


class Database:
    """The SQLite database of one peer. Opening it creates the folder and epoch when new."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = state_dir
        path = state_dir / "state.sqlite"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)  # SQLite gives its -wal and -shm files the same mode
        os.close(fd)
        self.connection = sqlite3.connect(path, isolation_level=None)
        # Pages freed can be handed back to the filesystem (`retention`), so a burst does
        # not keep the file at its peak. Takes effect on a new database only: one made
        # before keeps its size, and reuses the pages freed in it.
        self.connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")  # commits reach the disk in groups
        # Checkpoints (WAL into the database, with fsyncs) would stall whichever commit
        # crossed the threshold, on the event loop: `checkpoint` does them from a thread.
        self.connection.execute("PRAGMA wal_autocheckpoint=0")
        self.connection.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        self._checkpointer: sqlite3.Connection | None = None
        self.connection.executescript(_SCHEMA)
        self._add_missing_columns()
        self.connection.executescript(_INDEXES)
        self._depth = 0  # nesting of `transaction` blocks
        self.commits = 0  # transactions committed so far (see durable.Durability)
        self.commit_timed: Callable[[float], None] = _ignore  # told each COMMIT's seconds
        self._after_commit: list[Callable[[], None]] = []
        with self.transaction():
            self.epoch = self._epoch()
        self.created = self._created

    def _add_missing_columns(self) -> None:
        """Bring a state made by an earlier version up to this schema."""
        added = {
            "outbound": ("spool TEXT", "spool_length INTEGER NOT NULL DEFAULT 0"),
            "links": ("remote_since REAL NOT NULL DEFAULT 0",),
            "requests": (
                "body_file TEXT",
                "caller TEXT",
                "signing_key BLOB",
                "given_at REAL",
                "ended REAL",
            ),
            "posts": ("body_file TEXT", "signing_key BLOB"),
            "transfers": (
                "message TEXT NOT NULL DEFAULT ''",
                "abandoned INTEGER NOT NULL DEFAULT 0",
                "updated REAL",
                "told_length INTEGER",
            ),
        }
        for table, columns in added.items():
            have = {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self.connection.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        # Requests ended before `ended` was kept: retention counts from their deadlines.
        # At every start, not only when the column is added: this may have failed then.
        self.connection.execute(
            "UPDATE requests SET ended = deadline"
            " WHERE ended IS NULL AND state IN ('completed', 'failed')"
        )
        # Transfers from before that was dated: how long they sat idle counts from now.
        self.connection.execute(
            "UPDATE transfers SET updated = ? WHERE updated IS NULL", (time.time(),)
        )

    def _epoch(self) -> str:
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._created = row is None
        if row is not None:
            return str(row[0])
        epoch = os.urandom(8).hex()
        self.connection.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
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
        self.connection.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._depth = 0
            began = time.perf_counter()
            self.connection.execute("COMMIT")
        except BaseException:  # the block failed, or the COMMIT did (a full disk)
            self._depth = 0
            self._after_commit.clear()  # nothing it promised happened
            if self.connection.in_transaction:  # SQLite may have rolled back already
                self.connection.execute("ROLLBACK")
            raise
        self.commit_timed(time.perf_counter() - began)
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

    # -- status --------------------------------------------------------------------------

    def save_status(self, status: dict[str, Any]) -> None:
        """A snapshot for `mesh status`, which reads it whether the peer runs or not."""
        with self.transaction():
            self.connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('status', ?)",
                (json.dumps(status),),
            )

    def load_status(self) -> dict[str, Any] | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'status'").fetchone()
        return json.loads(row[0]) if row else None

    def checkpoint(self) -> tuple[int, int]:
        """Copy the write-ahead log into the database, on a connection of its own, so the
        log does not grow without end; (pages in the log, pages copied). Blocking: call
        from a thread, one at a time."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.folder / "state.sqlite", isolation_level=None, check_same_thread=False
            )
        return _checkpoint(self._checkpointer)

    def finish_checkpoint(self) -> tuple[int, int] | None:
        """The rest of a `checkpoint`: the frames committed while it ran, copied from the
        event loop's own connection between two transactions, when no commit can come
        in between, so the log is then copied whole and starts over at the next commit
        (a checkpoint from a thread alone rarely catches up with a busy peer's commits,
        and the log grew to 200 MB). (pages in the log, pages copied); None, doing
        nothing, inside a transaction. Blocking: for a few frames only."""
        if self._depth or self.connection.in_transaction:
            return None
        return _checkpoint(self.connection)

    def close(self) -> None:
        self.sync_log()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.connection.close()


def _checkpoint(connection: sqlite3.Connection) -> tuple[int, int]:
    """A passive checkpoint on `connection`: (pages in the log, pages copied)."""
    _, logged, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(logged), int(copied)


def _ignore(seconds: float) -> None:
    """What a measurement goes to when nobody listens."""


class Tables:
    """Tables on a database: their statements run on its connection, inside its
    transactions."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._sql = database.connection
