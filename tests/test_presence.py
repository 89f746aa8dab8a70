"""Presence: pure, time passed in."""

from __future__ import annotations

from mesh.proto.presence import Back, FirstHeard, NewEpoch, NotHeard, Presence, WentSilent


def test_first_heard_then_silent_then_back() -> None:
    p = Presence({"bravo": 3.0}, started=0.0)
    assert p.heard("bravo", "e1", 1.0) == [FirstHeard("bravo", "e1")]
    assert p.heard("bravo", "e1", 2.0) == []
    assert p.check(4.9) == [] and p.alive("bravo")
    assert p.check(5.0) == [WentSilent("bravo", 3.0)]
    assert p.check(9.0) == [] and not p.alive("bravo")  # reported once
    assert p.heard("bravo", "e1", 10.0) == [Back("bravo", 8.0)]
    assert p.alive("bravo") and p.next_check() == 13.0


def test_new_epoch_is_reported() -> None:
    p = Presence({"bravo": 3.0}, started=0.0)
    p.heard("bravo", "e1", 1.0)
    assert p.heard("bravo", "e2", 2.0) == [NewEpoch("bravo", "e1", "e2")]


def test_never_heard_is_reported_once_and_unknown_peers_ignored() -> None:
    p = Presence({"bravo": 3.0, "carol": 6.0}, started=10.0)
    assert p.heard("mallory", "e1", 11.0) == []
    assert p.check(12.0) == []
    assert p.check(13.0) == [NotHeard("bravo", 3.0)]
    assert p.check(16.5) == [NotHeard("carol", 6.5)]
    assert p.check(30.0) == []


def test_a_late_file_does_not_move_last_heard_backwards() -> None:
    p = Presence({"bravo": 3.0}, started=0.0)
    p.heard("bravo", "e1", 5.0)
    p.heard("bravo", "e1", 4.0)
    assert p.check(7.5) == []
