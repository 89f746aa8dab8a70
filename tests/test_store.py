"""The durable store on real SQLite: atomic deliveries, nothing delivered twice."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from mesh.proto.lifecycle import FAILED, FORWARDED, STORED
from mesh.proto.received import ReceivedState
from mesh.state.links import OutboundRow
from mesh.state.requests import LATE_POSTS, Answer, Asker
from mesh.state.store import Store

EPOCH = "0123456789abcdef"


def test_a_delivery_and_its_ack_state_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path)
    broken: Any = object()  # sqlite cannot store this: the second insert fails
    with pytest.raises(Exception, match="type"):
        store.links.deliver(
            "alpha", EPOCH, [(1, 5, b"one"), (2, 5, broken)], ReceivedState(2), [], 0.0
        )
    assert store.links.delivered(0) == []
    assert store.links.link_state("alpha").received == ReceivedState()
    store.close()
    reopened = Store(tmp_path)
    assert (
        reopened.links.delivered(0) == []
        and reopened.links.link_state("alpha").remote_epoch is None
    )


def test_a_repeated_delivery_is_stored_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert len(store.links.deliver("alpha", EPOCH, [(1, 5, b"x")], ReceivedState(1), [], 0.0)) == 1
    assert store.links.deliver("alpha", EPOCH, [(1, 5, b"x")], ReceivedState(1), [], 0.0) == []
    assert store.links.repeats == 1 and len(store.links.delivered(0)) == 1


def test_link_state_survives_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.links.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
    store.links.add_outbound("bravo", [OutboundRow(2, b"bb")], 0.0)
    store.links.acked("bravo", [1], next_seq=3)
    store.links.deliver(
        "bravo", EPOCH, [(4, 5, b"z")], ReceivedState(0, ((4, 4),)), ["f" * 16], 0.0
    )
    store.close()
    state = Store(tmp_path).links.link_state("bravo")
    assert state.next_seq == 3 and state.unacked == ((2, 2),)
    assert state.remote_epoch == EPOCH and state.received == ReceivedState(0, ((4, 4),))
    assert state.retired == ("f" * 16,)


def test_a_link_row_made_in_a_transaction_undone_is_made_again(tmp_path: Path) -> None:
    """A link's row is looked for only until a commit made it: one made in a transaction
    that failed is made again, so the link's numbering is kept (not lost to an UPDATE of
    no row)."""
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.database.transaction():
        store.links.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
        raise RuntimeError("the step after failed")
    store.links.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
    store.links.add_outbound("bravo", [OutboundRow(2, b"b")], 0.0)
    store.close()
    state = Store(tmp_path).links.link_state("bravo")
    assert state.next_seq == 3 and state.unacked == ((1, 1), (2, 1))


def test_posts_keep_their_order_per_url_through_retries(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.database.transaction():
        for n in range(3):
            store.posts.add("r", "http://a/", [], b"%d" % n, deadline=1e12, now=0.0)
        store.posts.add("r", "http://b/", [], b"b", deadline=1e12, now=0.0)
    first = store.posts.due(1e10)
    assert [p.body for p in first] == [b"0", b"1", b"2", b"b"]
    store.posts.later(first[0].id, due=1e11)  # the head of http://a/ must wait
    assert [p.body for p in store.posts.due(1e10)] == [b"b"]
    store.posts.done(first[3].id)
    assert store.posts.next_due() == 1e11  # not the later posts queued behind it


def test_a_body_file_is_done_when_its_last_fragment_is_acked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = [OutboundRow(1, b"f1", "out-a", 10), OutboundRow(2, b"f2", "out-a", 5)]
    store.links.add_outbound("bravo", [*rows, OutboundRow(3, b"request")], 0.0)
    assert store.links.link_state("bravo").unacked == ((1, 12), (2, 7), (3, 7))
    assert store.links.spools_in_use() == {"out-a"}
    assert store.links.sending() == [("bravo", "out-a", 1, 15)]
    assert store.links.outbound_rows("bravo", [1])[1].payload == b"f1"
    assert store.links.acked("bravo", [1, 3], next_seq=4) == {"out-a": 5}  # 5 bytes still out
    assert store.links.acked("bravo", [2], next_seq=4) == {"out-a": 0}  # done: its file may go
    assert store.links.spools_in_use() == set() and store.links.sending() == []


def test_fragments_add_up_exactly_once_per_delivery(tmp_path: Path) -> None:
    store = Store(tmp_path)
    transfer, message = "a" * 32, "b" * 32
    store.links.deliver(
        "alpha", EPOCH, [], ReceivedState(1), [], 0.0, [(transfer, message, 30, 10)]
    )
    store.links.deliver(
        "alpha", EPOCH, [], ReceivedState(2), [], 0.0, [(transfer, message, 30, 20)]
    )
    assert store.links.transfer_received("alpha", transfer) == 30
    assert store.links.transfer_received("bravo", transfer) == 0
    assert store.links.receiving() == [("alpha", message, 30, 30)]
    store.links.forget_transfer("alpha", transfer)
    assert store.links.transfer_received("alpha", transfer) == 0


def test_an_abandoned_transfer_is_remembered_and_no_longer_listed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    transfer, message = "a" * 32, "b" * 32
    store.links.deliver(
        "alpha", EPOCH, [], ReceivedState(1), [], 0.0, [(transfer, message, 30, 10)]
    )
    store.links.deliver(
        "alpha", EPOCH, [], ReceivedState(2), [], 0.0, abandoned=[transfer, "c" * 32]
    )
    assert store.links.abandoned("alpha") == {transfer, "c" * 32}
    assert store.links.abandoned("bravo") == set()
    assert store.links.transfer_state("alpha", "c" * 32).dropped == 1
    assert store.links.transfer_state("bravo", "c" * 32).dropped == 0
    assert store.links.receiving() == []


def test_streams_left_open_are_listed_until_closed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.links.open_stream("out-a", "bravo", "a" * 32, "b" * 32)
    store.links.open_stream("out-a", "bravo", "a" * 32, "b" * 32)  # twice is once
    assert Store(tmp_path).links.streams() == [("out-a", "bravo", "a" * 32, "b" * 32)]
    store.links.close_stream("out-a")
    assert store.links.streams() == []


def test_nested_transactions_commit_once_and_hooks_run_after_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ran: list[str] = []
    commits = store.database.commits
    with store.database.transaction():
        store.links.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)  # joins the outer one
        store.database.after_commit(lambda: ran.append("hook"))
        assert ran == [] and store.database.connection.in_transaction
    assert ran == ["hook"] and not store.database.connection.in_transaction
    assert store.database.commits == commits + 1
    store.database.after_commit(lambda: ran.append("at once"))  # outside a transaction
    assert ran == ["hook", "at once"]
    assert store.links.link_state("bravo").unacked == ((1, 1),)


def test_a_failed_transaction_undoes_every_nested_step_and_runs_no_hook(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ran: list[str] = []
    with pytest.raises(RuntimeError), store.database.transaction():
        store.links.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
        store.database.after_commit(lambda: ran.append("hook"))
        raise RuntimeError("disk on fire")
    assert ran == [] and store.links.link_state("bravo").unacked == ()
    store.links.add_outbound("bravo", [OutboundRow(2, b"b")], 0.0)  # the store still works
    assert store.links.link_state("bravo").unacked == ((2, 1),)


def test_the_log_is_checkpointed_from_another_thread(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.links.add_outbound("bravo", [OutboundRow(1, b"a" * 100_000)], 0.0)
    result: list[tuple[int, int]] = []
    thread = threading.Thread(target=lambda: result.append(store.database.checkpoint()))
    thread.start()
    thread.join()
    [(logged, copied)] = result
    assert logged == copied > 0
    store.close()
    assert Store(tmp_path).links.link_state("bravo").unacked == ((1, 100_000),)


def test_a_checkpoint_finished_on_the_loop_lets_the_log_start_over(tmp_path: Path) -> None:
    """A checkpoint from a thread that could not copy every frame (a reader held them
    here; commits coming meanwhile, in a peer) is finished on the writers' connection."""
    store = Store(tmp_path)
    database = store.database
    for seq in range(1, 41):
        store.links.add_outbound("bravo", [OutboundRow(seq, b"a" * 50_000)], 0.0)
    reader = sqlite3.connect(tmp_path / "state.sqlite")  # (as `mesh status` may be)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM outbound").fetchone()  # a snapshot: frames kept
    for seq in range(41, 46):  # committed after it, as while a checkpoint runs
        store.links.add_outbound("bravo", [OutboundRow(seq, b"b" * 50_000)], 0.0)
    logged, copied = database.checkpoint()  # (from a thread, in a peer)
    assert copied < logged  # it could not catch up
    reader.close()
    finished = database.finish_checkpoint()  # on the writers' connection, between commits
    assert finished == (logged, logged)  # copied whole
    store.links.add_outbound("bravo", [OutboundRow(46, b"c")], 0.0)
    assert database.checkpoint()[0] < 10  # the log started over: that commit's pages only
    with database.transaction():
        assert database.finish_checkpoint() is None  # never inside a transaction


def test_an_overdue_request_fails_once_with_its_callback_queued(tmp_path: Path) -> None:
    """`overdue` lists requests not ended past their deadline (those the far side took,
    a grace later); `fail` ends one with mesh's own answer and queues its callback,
    once."""
    store = Store(tmp_path)
    asker = Asker(callback="http://127.0.0.1:9/done")
    store.requests.add("a" * 32, "bravo", 1, "GET", "/x", 100.0, 0.0, asker)
    store.requests.add("b" * 32, "bravo", 2, "GET", "/y", 100.0, 0.0)
    store.requests.advance("b" * 32, FORWARDED, 50.0, 50.0)
    assert store.requests.overdue(99.0, grace=60) == []
    assert store.requests.overdue(101.0, grace=60) == [("a" * 32, STORED)]
    assert store.requests.overdue(161.0, grace=60) == [("a" * 32, STORED), ("b" * 32, FORWARDED)]
    problem = Answer("a" * 32, 504, ((b"content-type", b"application/problem+json"),), b"{}")
    assert [state for state, _ in store.requests.fail(problem, 101.0)] == [FAILED]
    assert store.requests.fail(problem, 102.0) == []  # ended: nothing moves it
    record = store.requests.get("a" * 32)
    assert record is not None and record.state is FAILED and record.status == 504
    [post] = store.posts.due(1e10)
    assert post.body == b"{}"
    assert post.deadline == 101.0 + LATE_POSTS  # the 504 came at the deadline: still posted
    assert store.requests.overdue(161.0, grace=60) == [("b" * 32, FORWARDED)]
    assert store.requests.next_deadline() == 100.0


def test_a_response_given_to_its_caller_lets_go_of_its_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.requests.add("c" * 32, "bravo", 1, "GET", "/x", 100.0, 0.0)
    store.requests.given("c" * 32, 5.0)
    record = store.requests.get("c" * 32)
    assert record is not None and record.given_at == 5.0 and record.body_file is None
