"""Protocol cores over a seeded hostile network: exactly once, bounded time, converged clocks."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.simulation import Faults, Simulation

MESSAGES = 10_000


@pytest.mark.parametrize(("names", "seed"), [(["alpha", "bravo"], 1), (["a", "b", "c"], 2)])
def test_every_message_arrives_exactly_once(names: list[str], seed: int) -> None:
    sim = Simulation(names, seed)
    for sender in names:
        for recipient in names:
            if sender != recipient:
                sim.schedule(sender, recipient, MESSAGES, over=20.0, batch=20)
    sim.run_until_settled(limit=600.0)

    for node in sim.nodes.values():
        counts = Counter(node.delivered)
        assert max(counts.values()) == 1, "a message was delivered twice"
        for sender in names:
            if sender != node.name:
                got = {n for s, n in counts if s == sender}
                assert got == set(range(MESSAGES)), f"{sender}>{node.name} lost messages"
    injected = sim.network.injected
    assert all(injected[k] > 20 for k in ("drop", "duplicate", "truncate", "corrupt"))
    resends = sim.resends()
    assert all(count > 0 for count in resends.values())
    rejected = sum((n.rejected for n in sim.nodes.values()), Counter())
    print(
        f"\nsettled at {sim.now:.1f}s simulated; faults {dict(injected)}; "
        f"files refused {dict(rejected)}; resends {resends}"
    )


def test_a_perfect_network_needs_no_resends_once_the_peers_know_each_other() -> None:
    """Heartbeats first (a file delivers only to the epoch its writer knew), then no
    message is ever sent twice."""
    sim = Simulation(["alpha", "bravo"], seed=3, faults=Faults(0, 0, 0, 0, 0.05))
    sim.schedule("alpha", "bravo", 1000, over=5.0, batch=50, start=2.5)
    sim.schedule("bravo", "alpha", 1000, over=5.0, batch=50, start=2.5)
    sim.run_until_settled(limit=30.0)
    assert set(sim.resends().values()) == {0}


def test_messages_sent_before_first_contact_are_resent_once_when_it_comes() -> None:
    """Before a peer has heard its reader, its files deliver nothing (they could be
    replays from before the reader's epoch); once it hears it, it resends what it holds,
    at once, and everything arrives exactly once."""
    sim = Simulation(["alpha", "bravo"], seed=3, faults=Faults(0, 0, 0, 0, 0.05))
    sim.schedule("alpha", "bravo", 100, over=0.1, batch=50)
    sim.run_until_settled(limit=30.0)
    delivered = sim.nodes["bravo"].delivered
    assert sorted(n for _, n in delivered) == list(range(100))  # each exactly once
    assert 0 < sim.resends()["alpha>bravo"] <= 100
    assert sim.now < 10.0  # not after the resend timers: at first contact


def test_truncated_files_are_resent_at_once_not_after_the_timer() -> None:
    """Truncation inside the frames only, and a resend timer far beyond the time limit:
    only the receiver's missing hints can get the cut messages across."""
    faults = Faults(0, 0, 0.3, 0, 0.01, spare_headers=True)
    sim = Simulation(["alpha", "bravo"], seed=4, faults=faults)
    for node in sim.nodes.values():
        for remote in node.protocol.remotes:
            node.protocol.outbound(remote).resend_after = 1000.0
    sim.schedule("alpha", "bravo", 2000, over=5.0, batch=100)
    sim.run_until_settled(limit=200.0)
    assert sim.resends()["alpha>bravo"] > 0


def test_files_lost_whole_and_lost_asks_are_resent_once_later_files_are_acknowledged() -> None:
    """Files dropped whole (the reader never learns of them) and asks dropped on the way
    back, with a resend timer far beyond the time limit: the acks of later files alone
    must get the lost messages across while the stream goes on (all but its tail, which
    no later file follows)."""
    faults = Faults(drop=0.2, duplicate=0, truncate=0.2, corrupt=0, max_delay=0.001)
    sim = Simulation(["alpha", "bravo"], seed=5, faults=faults)
    for node in sim.nodes.values():
        for remote in node.protocol.remotes:
            node.protocol.outbound(remote).resend_after = 1000.0
    sim.schedule("alpha", "bravo", 2000, over=20.0, batch=20, start=1.0)
    sim.run_until(25.0)
    got = {n for _, n in sim.nodes["bravo"].delivered}
    assert set(range(1600)) <= got  # the stream ended at 21 s: its last files wait
    assert sim.network.injected["drop"] > 20 and sim.network.injected["truncate"] > 20


def test_asks_lost_on_the_way_back_are_made_again_until_the_stream_is_whole() -> None:
    """Files to bravo cut among their frames, half of bravo's files (its asks) lost, and
    alpha's resend timer beyond the run: bravo asking again gets everything across, the
    stream's last files too."""
    cut = Faults(drop=0, duplicate=0, truncate=0.3, corrupt=0, max_delay=0.01, spare_headers=True)
    lossy = Faults(drop=0.5, duplicate=0, truncate=0, corrupt=0, max_delay=0.01)
    sim = Simulation(["alpha", "bravo"], seed=6, faults=cut, faults_to={"alpha": lossy})
    sim.nodes["alpha"].protocol.outbound("bravo").resend_after = 1000.0
    sim.schedule("alpha", "bravo", 2000, over=10.0, batch=50, start=1.0)
    sim.run_until_settled(limit=100.0)
    assert sorted(n for _, n in sim.nodes["bravo"].delivered) == list(range(2000))
    assert sim.network.injected["drop"] > 10 and sim.network.injected["truncate"] > 10


def test_files_lost_whole_at_the_end_of_a_stream_cross_without_the_writers_timer() -> None:
    """A third of the files lost whole both ways, alpha's resend timer beyond the run: no
    later file shows the last gaps, the heartbeats saying what alpha wrote do."""
    lossy = Faults(drop=0.3, duplicate=0, truncate=0, corrupt=0, max_delay=0.01)
    sim = Simulation(["alpha", "bravo"], seed=7, faults=lossy)
    sim.nodes["alpha"].protocol.outbound("bravo").resend_after = 1000.0
    sim.schedule("alpha", "bravo", 500, over=5.0, batch=50, start=1.0)
    sim.run_until_settled(limit=120.0)
    assert sorted(n for _, n in sim.nodes["bravo"].delivered) == list(range(500))
