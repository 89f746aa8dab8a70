"""Retention on real SQLite: what ended long enough ago goes, a batch at a time, and
nothing else does."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import trio
import trio.lowlevel

from mesh.errors import Complaints
from mesh.pipe.retention import FIRST_BATCH, KEEP_FREE_PAGES, LEAST_BATCH, Retention
from mesh.proto.lifecycle import FINAL
from mesh.proto.received import ReceivedState
from mesh.state.database import Database
from mesh.state.executions import Execution
from mesh.state.requests import OPEN, Answer, Asker
from mesh.state.store import Store
from mesh.wire.messages import Kind

EPOCH = "0123456789abcdef"
COMPLAINTS = Complaints(logging.getLogger("test.retention"), "alpha")


def _request(store: Store, n: int, ended_at: float | None, body_file: str | None = None) -> str:
    """Request number `n`, ended at `ended_at` (None: still open), its response body in
    `body_file` if given."""
    request_id = f"{n:032x}"
    store.requests.add(request_id, "bravo", n, "GET", "/x", 1e9, 0.0)
    if ended_at is not None:
        answer = Answer(request_id, 200, (), b"ok", body_file)
        store.requests.answer(0, answer, ended_at)
    return request_id


def test_requests_that_ended_before_the_cutoff_go_with_their_body_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    old = _request(store, 1, 10.0, "in-bravo-" + "1" * 32)
    recent = _request(store, 2, 30.0, "in-bravo-" + "2" * 32)
    still_open = _request(store, 3, None)
    assert store.retention.ended_requests(20.0, 100, 1 << 30) == (1, ["in-bravo-" + "1" * 32])
    assert store.requests.get(old) is None
    assert store.requests.get(recent) is not None and store.requests.get(still_open) is not None
    assert store.retention.ended_requests(1e9, 100, 1 << 30) == (1, ["in-bravo-" + "2" * 32])
    assert store.requests.get(still_open) is not None  # never, however old


def test_a_request_with_a_post_still_queued_is_kept_until_it_goes(tmp_path: Path) -> None:
    """Its callback reads the response's body file: both stay while the post does."""
    store = Store(tmp_path)
    request_id = f"{7:032x}"
    store.requests.add(request_id, "bravo", 7, "GET", "/x", 1e9, 0.0, Asker(callback="http://h/cb"))
    store.requests.answer(0, Answer(request_id, 200, (), b"", "in-bravo-" + "7" * 32), 10.0)
    assert store.retention.ended_requests(1e9, 100, 1 << 30) == (0, [])
    for post in store.posts.due(1e10):
        store.posts.done(post.id)
    assert store.retention.ended_requests(1e9, 100, 1 << 30) == (1, ["in-bravo-" + "7" * 32])


def test_answered_executions_go_and_keep_nothing_of_their_request_meanwhile(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    for n, state in enumerate((Execution.FORWARDING, Execution.RECEIVED)):
        store.executions.take(0, "alpha", f"{n + 1:032x}", b"request" * 100, 10.0)
        store.executions.mark(f"{n + 1:032x}", state, 10.0)
    store.executions.take(0, "alpha", f"{0:032x}", b"request" * 100, 10.0)
    store.executions.answered(f"{0:032x}", 10.0)
    sql = store.database.connection
    assert sql.execute(
        "SELECT length(request) FROM executions WHERE id = ?", (f"{0:032x}",)
    ).fetchone() == (0,)
    assert store.retention.answered_executions(20.0, 100, 1 << 30) == 1
    assert [u.state for u in store.executions.unfinished()] == [
        Execution.FORWARDING,
        Execution.RECEIVED,
    ]


def test_executions_answered_while_others_wait_leave_no_pages_mostly_empty(
    tmp_path: Path,
) -> None:
    """Eight requests in flight at once, 1.3 KiB each, answered in turn: the answered
    rows, kept until retention, fill their pages (shrunk in place, two a page, they
    took ten times the pages)."""
    store = Store(tmp_path)
    in_flight: list[str] = []
    for n in range(6000):
        in_flight.append(f"{n:032x}")
        store.executions.take(0, "alpha", in_flight[-1], b"r" * 1357, float(n))
        if len(in_flight) > 8:
            store.executions.answered(in_flight.pop(0), float(n))
        if n % 750 == 0:
            store.retention.answered_executions(n - 3000.0, 10_000, 1 << 30)
    pages, free = _pages(store.database)
    assert pages - free < 300  # for the 3,000 or so rows kept


def test_only_the_mailboxs_unconsumed_messages_expire(tmp_path: Path) -> None:
    """A request waiting in the inbound table is the forwarder's to answer, never
    dropped; an opaque message nobody consumed is."""
    store = Store(tmp_path)
    messages = [(1, Kind.DATAGRAM, b"d"), (2, Kind.REQUEST, b"r")]
    store.links.deliver("alpha", EPOCH, messages, ReceivedState(2), [], 10.0)
    assert store.retention.unconsumed(Kind.DATAGRAM, 20.0, 100, 1 << 30) == 1
    assert [d.kind for d in store.links.delivered(0)] == [Kind.REQUEST]


def _give_up(store: Store, transfer: str, at: float, seq: int) -> None:
    """Body `transfer` from alpha, given up by its sender at `at` (its `seq`-th message)."""
    received = ReceivedState(seq)
    store.links.deliver("alpha", EPOCH, [], received, [], at, abandoned=[transfer])


def _piece(store: Store, transfer: str, at: float, seq: int) -> None:
    """A KiB of body `transfer` (of 8) from alpha, at `at` (its `seq`-th message)."""
    piece = [(transfer, "m" * 32, 8192, 1024)]
    store.links.deliver("alpha", EPOCH, [], ReceivedState(seq), [], at, piece)


def test_bodies_nothing_came_of_for_long_go_given_up_or_not(tmp_path: Path) -> None:
    """A mark of a body given up only drops its pieces still on the way; a body never
    finished (its sender stopped for good, or a late piece of one done with) waits for
    nothing: both go once nothing came of them since the cutoff, with their files."""
    store = Store(tmp_path)
    given_up, unfinished, busy = "1" * 32, "2" * 32, "3" * 32
    _give_up(store, given_up, 10.0, 1)
    _piece(store, unfinished, 10.0, 2)
    _piece(store, busy, 10.0, 3)
    _piece(store, busy, 30.0, 4)  # more of it came since
    gone = store.retention.idle_transfers(20.0, 100)
    assert sorted(gone) == [("alpha", given_up), ("alpha", unfinished)]
    assert store.links.abandoned("alpha") == set()
    assert store.links.transfer_received("alpha", busy) == 2048
    assert store.retention.idle_transfers(1e9, 100) == [("alpha", busy)]


async def test_a_sweep_waits_the_longest_a_request_may_wait_for_its_body(
    tmp_path: Path,
) -> None:
    """With a retention shorter than a request may wait (`idle`), a body idle past the
    retention but not past `idle` stays; its file goes with it."""
    store = Store(tmp_path)
    _piece(store, "2" * 32, 10.0, 1)
    removed: list[str] = []
    retention = Retention(store.retention, removed.extend, 60.0, COMPLAINTS, idle=3600.0)
    await retention.sweep(cutoff=100.0)  # 90 s idle: past the retention only
    assert retention.swept.transfers == 0 and removed == []
    await retention.sweep(cutoff=3700.0)
    assert retention.swept.transfers == 1 and removed == ["in-alpha-" + "2" * 32]


def test_bodies_arriving_before_they_were_dated_count_from_the_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _give_up(store, "1" * 32, 10.0, 1)
    store.close()
    sql = sqlite3.connect(tmp_path / "state.sqlite")
    sql.execute("ALTER TABLE transfers DROP COLUMN updated")
    sql.commit()
    sql.close()
    before = time.time()
    reopened = Store(tmp_path)
    assert reopened.retention.idle_transfers(before - 1, 100) == []
    assert reopened.links.abandoned("alpha") == {"1" * 32}
    assert reopened.retention.idle_transfers(time.time() + 1, 100) == [("alpha", "1" * 32)]


def test_a_state_from_before_retention_counts_ended_requests_from_their_deadline(
    tmp_path: Path,
) -> None:
    """A database an earlier version made has no `ended`: it is added, and requests that
    had ended get their deadline as their end."""
    store = Store(tmp_path)
    _request(store, 1, 10.0)
    store.close()
    sql = sqlite3.connect(tmp_path / "state.sqlite")
    sql.executescript("DROP INDEX requests_ended; ALTER TABLE requests DROP COLUMN ended;")
    sql.close()
    reopened = Database(tmp_path)
    ended = reopened.connection.execute("SELECT ended FROM requests").fetchall()
    assert ended == [(1e9,)]


async def test_a_sweep_removes_everything_due_in_batches_letting_the_loop_run(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    with store.database.transaction():
        for n in range(5000):
            _request(store, n, 10.0, f"in-bravo-{n:032x}" if n % 2 else None)
    removed: list[str] = []
    retention = Retention(store.retention, removed.extend, 60.0, COMPLAINTS)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await retention.sweep(cutoff=100.0)
        nursery.cancel_scope.cancel()
    assert retention.swept.requests == 5000 and len(removed) == 2500
    assert store.database.connection.execute("SELECT count(*) FROM requests").fetchone() == (0,)
    assert ticks >= 5000 // max(retention.rows["requests"], FIRST_BATCH)  # the loop ran between


def _pages(database: Database) -> tuple[int, int]:
    """(pages in the database, pages free in it)."""
    sql = database.connection
    return sql.execute("PRAGMA page_count").fetchone()[0], sql.execute(
        "PRAGMA freelist_count"
    ).fetchone()[0]


def _burst(store: Store, count: int) -> None:
    """`count` requests of 2 KiB ended long ago, as a burst leaves them."""
    with store.database.transaction():
        for n in range(count):
            request_id = _request(store, n, 10.0)
            store.database.connection.execute(
                "UPDATE requests SET body = randomblob(2048) WHERE id = ?", (request_id,)
            )


async def test_after_a_burst_the_sweep_hands_free_pages_back_keeping_some(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    _burst(store, 5000)
    peak, _ = _pages(store.database)
    retention = Retention(store.retention, [].extend, 60.0, COMPLAINTS)
    await retention.sweep(cutoff=100.0)
    pages, free = _pages(store.database)
    assert peak > 3000 and pages < 400  # not kept at its peak
    assert free <= KEEP_FREE_PAGES  # some kept for the next burst
    assert peak - pages - 32 < retention.swept.free_pages <= peak - pages  # (and ptrmap pages)
    assert store.database.checkpoint()[1] > 0
    assert (tmp_path / "state.sqlite").stat().st_size == pages * 4096  # the file shrank


async def test_free_pages_a_steady_load_reuses_are_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _burst(store, 400)  # 400 pages or so free: under twice KEEP_FREE_PAGES
    retention = Retention(store.retention, [].extend, 60.0, COMPLAINTS)
    await retention.sweep(cutoff=100.0)
    assert retention.swept.requests == 400 and retention.swept.free_pages == 0
    assert _pages(store.database)[1] > KEEP_FREE_PAGES


async def test_a_database_made_before_keeps_its_size_and_reuses_its_pages(
    tmp_path: Path,
) -> None:
    sqlite3.connect(tmp_path / "state.sqlite").execute("CREATE TABLE made (x)").connection.close()
    store = Store(tmp_path)  # no incremental auto_vacuum: it cannot be set any more
    _burst(store, 2000)
    retention = Retention(store.retention, [].extend, 60.0, COMPLAINTS)
    await retention.sweep(cutoff=100.0)
    pages, free = _pages(store.database)
    assert retention.swept.requests == 2000 and retention.swept.free_pages == 0
    assert free > 1000 and store.retention.free_pages() == (0, pages)


def test_a_batch_takes_no_more_bytes_than_allowed_but_always_one_row(tmp_path: Path) -> None:
    """Big responses held inline cost their pages to remove: a batch stops at its bytes."""
    store = Store(tmp_path)
    for n in range(6):
        request_id = f"{n:032x}"
        store.requests.add(request_id, "bravo", n, "GET", "/x", 1e9, 0.0)
        store.requests.answer(0, Answer(request_id, 200, (), b"b" * 1000), 10.0 + n)
    assert store.retention.ended_requests(100.0, 100, 2500)[0] == 2
    assert store.retention.ended_requests(100.0, 100, 10)[0] == 1  # one, however big
    assert store.retention.ended_requests(100.0, 2, 1 << 30)[0] == 2
    assert store.retention.ended_requests(100.0, 100, 1 << 30)[0] == 1


async def test_a_slow_batch_shrinks_the_next_whatever_it_removed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    retention = Retention(store.retention, [].extend, 60.0, COMPLAINTS)
    retention.rows["requests"] = 1024
    retention._took("requests", 1.0, 300)  # slow, and short of its rows: still too big
    assert retention.rows["requests"] == 150
    retention._took("requests", 0.0001, 150)  # full and quick: bigger
    assert retention.rows["requests"] == 300
    retention._took("requests", 1.0, 3)  # slow, but only 3 rows: the commit, not the size
    assert retention.rows["requests"] == LEAST_BATCH
    assert retention.rows["executions"] == FIRST_BATCH  # each table its own size


def test_what_runs_every_second_reads_only_requests_not_ended(tmp_path: Path) -> None:
    """With a week of requests kept, the queries made every second (overdue requests,
    those in flight, the next deadline) must use the index of those not ended, never scan
    them all: their states are written as that index is."""
    assert set(FINAL) == {"completed", "failed"}  # as OPEN and the index say
    sql = Store(tmp_path).database.connection
    queries = (
        f"SELECT id FROM requests WHERE {OPEN} AND deadline < 1 ORDER BY deadline",
        f"SELECT min(deadline) FROM requests WHERE {OPEN}",
        f"SELECT state, count(*) FROM requests WHERE {OPEN} GROUP BY state",
    )
    for query in queries:
        plan = " ".join(row[3] for row in sql.execute("EXPLAIN QUERY PLAN " + query))
        assert "USING INDEX requests_open" in plan, plan
