"""The durable store on real SQLite: atomic deliveries, nothing delivered twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mesh.proto.received import ReceivedState
from mesh.state.store import OutboundRow, Store

EPOCH = "0123456789abcdef"


def test_a_delivery_and_its_ack_state_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store = Store(tmp_path)
    broken: Any = object()  # sqlite cannot store this: the second insert fails
    with pytest.raises(Exception, match="type"):
        store.deliver("alpha", EPOCH, [(1, 5, b"one"), (2, 5, broken)], ReceivedState(2), [], 0.0)
    assert store.inbound(0) == []
    assert store.link_state("alpha").received == ReceivedState()
    store.close()
    reopened = Store(tmp_path)
    assert reopened.inbound(0) == [] and reopened.link_state("alpha").remote_epoch is None


def test_a_repeated_delivery_is_stored_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert len(store.deliver("alpha", EPOCH, [(1, 5, b"x")], ReceivedState(1), [], 0.0)) == 1
    assert store.deliver("alpha", EPOCH, [(1, 5, b"x")], ReceivedState(1), [], 0.0) == []
    assert store.repeats == 1 and len(store.inbound(0)) == 1


def test_link_state_survives_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
    store.add_outbound("bravo", [OutboundRow(2, b"bb")], 0.0)
    store.acked("bravo", [1], next_seq=3)
    store.deliver("bravo", EPOCH, [(4, 5, b"z")], ReceivedState(0, ((4, 4),)), ["f" * 16], 0.0)
    store.close()
    state = Store(tmp_path).link_state("bravo")
    assert state.next_seq == 3 and state.unacked == ((2, 2),)
    assert state.remote_epoch == EPOCH and state.received == ReceivedState(0, ((4, 4),))
    assert state.retired == ("f" * 16,)


def test_posts_keep_their_order_per_url_through_retries(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.transaction():
        for n in range(3):
            store.add_post("r", "http://a/", [], b"%d" % n, deadline=1e12)
        store.add_post("r", "http://b/", [], b"b", deadline=1e12)
    first = store.due_posts(1e10)
    assert [p.body for p in first] == [b"0", b"1", b"2", b"b"]
    store.post_later(first[0].id, due=1e11)  # the head of http://a/ must wait
    assert [p.body for p in store.due_posts(1e10)] == [b"b"]
    store.post_done(first[3].id)
    assert store.next_post_due() == 1e11  # not the later posts queued behind it


def test_a_body_file_is_done_when_its_last_fragment_is_acked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = [OutboundRow(1, b"f1", "out-a", 10), OutboundRow(2, b"f2", "out-a", 5)]
    store.add_outbound("bravo", [*rows, OutboundRow(3, b"request")], 0.0)
    assert store.link_state("bravo").unacked == ((1, 12), (2, 7), (3, 7))
    assert store.spools_in_use() == {"out-a"}
    assert store.sending() == [("bravo", "out-a", 1, 15)]
    assert store.outbound_rows("bravo", [1])[1].payload == b"f1"
    assert store.acked("bravo", [1, 3], next_seq=4) == {"out-a": 5}  # 5 bytes still out
    assert store.acked("bravo", [2], next_seq=4) == {"out-a": 0}  # done: its file may go
    assert store.spools_in_use() == set() and store.sending() == []


def test_fragments_add_up_exactly_once_per_delivery(tmp_path: Path) -> None:
    store = Store(tmp_path)
    transfer, message = "a" * 32, "b" * 32
    store.deliver("alpha", EPOCH, [], ReceivedState(1), [], 0.0, [(transfer, message, 30, 10)])
    store.deliver("alpha", EPOCH, [], ReceivedState(2), [], 0.0, [(transfer, message, 30, 20)])
    assert store.transfer_received("alpha", transfer) == 30
    assert store.transfer_received("bravo", transfer) == 0
    assert store.receiving() == [("alpha", message, 30, 30)]
    store.forget_transfer("alpha", transfer)
    assert store.transfer_received("alpha", transfer) == 0


def test_an_abandoned_transfer_is_remembered_and_no_longer_listed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    transfer, message = "a" * 32, "b" * 32
    store.deliver("alpha", EPOCH, [], ReceivedState(1), [], 0.0, [(transfer, message, 30, 10)])
    store.deliver("alpha", EPOCH, [], ReceivedState(2), [], 0.0, abandoned=[transfer, "c" * 32])
    assert store.abandoned("alpha") == {transfer, "c" * 32}
    assert store.abandoned("bravo") == set()
    assert store.receiving() == []


def test_streams_left_open_are_listed_until_closed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.open_stream("out-a", "bravo", "a" * 32, "b" * 32)
    store.open_stream("out-a", "bravo", "a" * 32, "b" * 32)  # twice is once
    assert Store(tmp_path).streams() == [("out-a", "bravo", "a" * 32, "b" * 32)]
    store.close_stream("out-a")
    assert store.streams() == []


def test_nested_transactions_commit_once_and_hooks_run_after_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ran: list[str] = []
    commits = store.commits
    with store.transaction():
        store.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)  # joins the outer one
        store.after_commit(lambda: ran.append("hook"))
        assert ran == [] and store.db.in_transaction
    assert ran == ["hook"] and not store.db.in_transaction
    assert store.commits == commits + 1
    store.after_commit(lambda: ran.append("at once"))  # outside a transaction
    assert ran == ["hook", "at once"]
    assert store.link_state("bravo").unacked == ((1, 1),)


def test_a_failed_transaction_undoes_every_nested_step_and_runs_no_hook(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ran: list[str] = []
    with pytest.raises(RuntimeError), store.transaction():
        store.add_outbound("bravo", [OutboundRow(1, b"a")], 0.0)
        store.after_commit(lambda: ran.append("hook"))
        raise RuntimeError("disk on fire")
    assert ran == [] and store.link_state("bravo").unacked == ()
    store.add_outbound("bravo", [OutboundRow(2, b"b")], 0.0)  # the store still works
    assert store.link_state("bravo").unacked == ((2, 1),)


def test_the_log_is_checkpointed_from_another_thread(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_outbound("bravo", [OutboundRow(1, b"a" * 100_000)], 0.0)
    result: list[tuple[int, int]] = []
    thread = threading.Thread(target=lambda: result.append(store.checkpoint()))
    thread.start()
    thread.join()
    [(logged, copied)] = result
    assert logged == copied > 0
    store.close()
    assert Store(tmp_path).link_state("bravo").unacked == ((1, 100_000),)
