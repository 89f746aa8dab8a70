"""The protocol core, one rule at a time (pure: no files, no clock)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from mesh.proto.inbound import MISSING_KEPT
from mesh.proto.link import LinkSettings, LinkState, Protocol, Verdict
from mesh.proto.received import ReceivedState
from mesh.proto.settle import Settling
from mesh.wire.fileformat import Header, LinkFields

SETTINGS = LinkSettings(heartbeat=5.0, resend_after=10.0, linger=0.0)
MiB = 1 << 20
A_EPOCH, B_EPOCH, B_NEW = "a" * 16, "b" * 16, "c" * 16


def pair() -> tuple[Protocol, Protocol]:
    return (
        Protocol("alpha", A_EPOCH, {"bravo": SETTINGS}),
        Protocol("bravo", B_EPOCH, {"alpha": SETTINGS}),
    )


def header(sender: str, epoch: str, recipient: str, link: LinkFields) -> Header:
    return Header(sender, recipient, epoch, 0.0, b"\0" * 8, False, link)


def send(alpha: Protocol, n: int, now: float = 0.0) -> list[int]:
    seqs = [alpha.assign("bravo") for _ in range(n)]
    for seq in seqs:
        alpha.queued("bravo", seq, 10, now)
    return seqs


def test_a_file_out_within_the_interval_makes_the_heartbeat_unneeded() -> None:
    alpha, _ = pair()
    [beat] = alpha.outgoing(0.0)
    assert beat.seqs == ()
    alpha.written(beat, 0.0)
    send(alpha, 1, now=3.0)
    [data] = alpha.outgoing(3.0)
    alpha.written(data, 3.0)
    assert alpha.outgoing(7.9) == []  # 5s since the last file only at 8.0
    assert [f.seqs for f in alpha.outgoing(8.0)] == [()]


def in_flight(settings: LinkSettings) -> Protocol:
    """alpha with its first message (seq 1) written at 0.5 and not yet acknowledged."""
    alpha = Protocol("alpha", A_EPOCH, {"bravo": settings})
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    send(alpha, 1, now=0.5)
    alpha.written(alpha.outgoing(0.5)[0], 0.5)
    return alpha


def test_a_message_for_a_link_with_nothing_in_flight_goes_at_once() -> None:
    """As TCP's Nagle: no linger when every message written was acknowledged."""
    alpha = Protocol("alpha", A_EPOCH, {"bravo": LinkSettings(5.0, 10.0, linger=0.1)})
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    send(alpha, 2, now=1.0)  # queued together (before the writer looks): one file
    [file] = alpha.outgoing(1.0)
    assert file.seqs == (1, 2)
    alpha.written(file, 1.0)
    send(alpha, 1, now=1.01)
    assert alpha.outgoing(1.01) == []  # 1 and 2 are in flight: 3 lingers
    ack = LinkFields(ack=ReceivedState(2), ack_epoch=A_EPOCH)
    alpha.arrived(header("bravo", B_EPOCH, "alpha", ack), [], [], 1.05)
    send(alpha, 1, now=1.06)  # nothing in flight: 4 goes at once, 3 along with it
    assert [f.seqs for f in alpha.outgoing(1.06)] == [(3, 4)]


def test_while_a_message_is_in_flight_a_burst_shares_one_file_after_its_linger() -> None:
    alpha = in_flight(LinkSettings(5.0, 10.0, linger=0.1))
    send(alpha, 3, now=1.0)
    send(alpha, 2, now=1.05)
    assert alpha.outgoing(1.09) == []
    assert [f.seqs for f in alpha.outgoing(1.1)] == [(2, 3, 4, 5, 6)]


def test_a_message_of_collate_below_or_more_does_not_wait() -> None:
    alpha = in_flight(LinkSettings(5.0, 10.0, linger=0.1, collate_below=1000))
    small = alpha.assign("bravo")
    alpha.queued("bravo", small, 999, 1.0)
    assert alpha.outgoing(1.0) == []  # a small one lingers
    big = alpha.assign("bravo")
    alpha.queued("bravo", big, 1000, 1.0)
    assert [f.seqs for f in alpha.outgoing(1.0)] == [(small, big)]  # it rides along


def test_a_note_rides_with_the_next_file_or_goes_after_ack_delay() -> None:
    alpha = Protocol("alpha", A_EPOCH, {"bravo": LinkSettings(5.0, 10.0, linger=0.1)})
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    note = alpha.assign("bravo")
    alpha.noted("bravo", note, 10, 1.0)
    assert alpha.outgoing(3.49) == []  # no file of its own yet: something may take it
    [response] = send(alpha, 1, now=3.4)
    [file] = alpha.outgoing(3.5)
    assert file.seqs == (note, response)  # it rode along
    alpha.written(file, 3.5)
    later = alpha.assign("bravo")
    alpha.noted("bravo", later, 10, 4.0)
    assert alpha.next_wakeup() == 4.0 + SETTINGS.heartbeat / 2
    assert [f.seqs for f in alpha.outgoing(6.5)] == [(later,)]  # nothing came: alone


def test_a_heartbeat_takes_along_what_waits() -> None:
    alpha = Protocol("alpha", A_EPOCH, {"bravo": LinkSettings(5.0, 10.0, linger=1.0)})
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    [lingering] = send(alpha, 1, now=4.5)  # due at 5.5
    note = alpha.assign("bravo")
    alpha.noted("bravo", note, 10, 4.6)
    assert [f.seqs for f in alpha.outgoing(5.0)] == [(lingering, note)]  # the heartbeat's


def test_resends_back_off_up_to_a_limit() -> None:
    alpha, _ = pair()
    send(alpha, 1)
    times = []
    now = 0.0
    for _ in range(6):
        [file] = [f for f in alpha.outgoing(now) if f.seqs]
        alpha.written(file, now)
        times.append(now)
        now = alpha.outbound("bravo").next_due() or 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [10.0, 20.0, 40.0, 80.0, 80.0]
    assert alpha.outbound("bravo").stats.resends == 5


def test_acks_forget_messages_and_only_for_our_epoch() -> None:
    alpha, _ = pair()
    send(alpha, 5)
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    stale = LinkFields(ack=ReceivedState(5), ack_epoch="0" * 16)
    assert alpha.arrived(header("bravo", B_EPOCH, "alpha", stale), [], [], 1.0).acked == ()
    fields = LinkFields(ack=ReceivedState(2, ((4, 4),)), ack_epoch=A_EPOCH)
    arrival = alpha.arrived(header("bravo", B_EPOCH, "alpha", fields), [], [], 1.0)
    assert arrival.acked == (1, 2, 4)
    assert alpha.outbound("bravo").pending() == [3, 5]
    assert alpha.outbound("bravo").floor == 3


def test_each_number_is_delivered_once_and_missing_frames_are_asked_for_until_they_come() -> None:
    """Asked for at once, then again each `resend_after` (no round trip measured yet):
    an ask may be lost on the way too."""
    _, bravo = pair()
    h = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH))
    first = bravo.arrived(h, [1, 2, 2], [3], 0.0)
    assert first.deliver == (1, 2) and first.verdict is Verdict.NEW_EPOCH
    bravo.stored("alpha", first.deliver)
    assert bravo.arrived(h, [1, 2], [], 0.1).deliver == ()
    assert bravo.next_wakeup() == float("-inf")
    [ask] = bravo.outgoing(0.1)
    assert ask.link.missing == (3,) and ask.link.ack == ReceivedState(2)
    bravo.written(ask, 0.1)
    assert all(f.link.missing == () for f in bravo.outgoing(10.0))  # a heartbeat
    [again] = bravo.outgoing(10.1)
    assert again.link.missing == (3,)
    bravo.written(again, 10.1)
    bravo.stored("alpha", bravo.arrived(h, [3], [], 11.0).deliver)
    assert all(f.link.missing == () for f in bravo.outgoing(40.0))


def test_a_missing_message_is_asked_for_again_after_twice_the_round_trip() -> None:
    _, bravo = pair()
    bravo.arrived(header("alpha", A_EPOCH, "bravo", LinkFields()), [], [], 0.0)  # met
    bravo.outbound("alpha").round_trip.sample(1.5)
    cut = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH))
    bravo.arrived(cut, [], [7], 1.0)
    asks_then_again(bravo, 7, 1.0, 4.0)


def asks_then_again(bravo: Protocol, seq: int, now: float, again: float) -> None:
    """Bravo asks for `seq` at `now`, then not again until `again`, then again."""
    [ask] = bravo.outgoing(now)
    assert ask.link.missing == (seq,)
    bravo.written(ask, now)
    assert [f.link.missing for f in bravo.outgoing(again - 0.1)] == []
    assert [f.link.missing for f in bravo.outgoing(again)] == [(seq,)]


def test_the_time_an_ask_takes_to_be_answered_paces_the_asks_again() -> None:
    """Bravo sends nothing of its own (an upload): no round trip of its messages to go
    by. An ask answered 2 s after it went, then another cut frame, asked again at 4 s."""
    _, bravo = pair()
    fields = LinkFields(ack_epoch=B_EPOCH)
    bravo.stored(
        "alpha", bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [1], [2], 0.0).deliver
    )
    bravo.written(bravo.outgoing(0.0)[0], 0.0)  # asks for 2
    bravo.stored(
        "alpha", bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [2], [3], 2.0).deliver
    )
    asks_then_again(bravo, 3, 2.0, 6.0)


def test_an_answer_to_a_message_asked_for_twice_is_not_timed() -> None:
    _, bravo = pair()
    fields = LinkFields(ack_epoch=B_EPOCH)
    bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [1], [2], 0.0)
    bravo.written(bravo.outgoing(0.0)[0], 0.0)
    bravo.written(bravo.outgoing(10.0)[0], 10.0)  # asked again: the first ask was lost
    bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [2], [], 10.5)
    assert bravo.inbound("alpha").ask_round_trip.smoothed is None


def test_a_writer_naming_ever_more_cut_frames_cannot_grow_what_is_asked_for() -> None:
    _, bravo = pair()
    fields = LinkFields(ack_epoch=B_EPOCH)
    for start in range(1, 3 * MISSING_KEPT, 4096):
        cut = list(range(start, start + 4096))
        bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [], cut, 0.0)
    [ask] = bravo.outgoing(0.0)
    assert ask.link.missing[0] == 1 and len(ask.link.missing) == 4096
    assert len(bravo.inbound("alpha")._missing) == MISSING_KEPT


def test_a_file_lost_whole_at_the_end_is_asked_for_once_a_heartbeat_tells_it_was_written() -> None:
    """No later message shows the gap: the writer's heartbeat says what it wrote, and the
    reader asks for what it has not seen, `again_after` later (a file may be on its way)."""
    alpha, bravo = pair()
    bravo.arrived(header("alpha", A_EPOCH, "bravo", LinkFields()), [], [], 0.0)  # met
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)
    [seq] = send(alpha, 1)
    [lost] = [f for f in alpha.outgoing(0.0) if f.seqs]
    alpha.written(lost, 0.0)
    [beat] = alpha.outgoing(5.0)
    assert beat.link.written == seq
    alpha.written(beat, 5.0)
    bravo.arrived(header("alpha", A_EPOCH, "bravo", beat.link), [], [], 5.1)
    assert all(f.link.unseen == () for f in bravo.outgoing(5.1))
    again = 5.1 + SETTINGS.resend_after  # no round trip measured yet
    assert [f.link.unseen for f in bravo.outgoing(again)] == [(seq,)]
    ask = LinkFields(ack_epoch=A_EPOCH, unseen=(seq,))
    assert alpha.arrived(header("bravo", B_EPOCH, "alpha", ask), [], [], 15.2).resend == (seq,)
    assert [f.seqs for f in alpha.outgoing(15.2, waiting={"bravo": set()}) if f.seqs] == [(seq,)]


def test_an_unseen_message_whose_copy_waits_in_the_outbox_is_not_copied_again() -> None:
    alpha = alpha_met_bravo()
    [seq] = one_per_file(alpha, 1)
    ask = LinkFields(ack_epoch=A_EPOCH, unseen=(seq,))
    alpha.arrived(header("bravo", B_EPOCH, "alpha", ask), [], [], 3.0)
    assert [f.seqs for f in alpha.outgoing(3.0, waiting={"bravo": {seq}}) if f.seqs] == []


def test_what_a_file_carries_is_not_unseen() -> None:
    _, bravo = pair()
    told = LinkFields(ack_epoch=B_EPOCH, written=3)
    bravo.stored(
        "alpha", bravo.arrived(header("alpha", A_EPOCH, "bravo", told), [1, 2, 3], [], 0.0).deliver
    )
    assert all(f.link.unseen == () for f in bravo.outgoing(100.0))


def test_a_message_below_the_writers_floor_is_no_longer_asked_for() -> None:
    _, bravo = pair()
    fields = LinkFields(ack_epoch=B_EPOCH)
    bravo.arrived(header("alpha", A_EPOCH, "bravo", fields), [], [1], 0.0)
    moved = LinkFields(ack_epoch=B_EPOCH, floor=2)
    bravo.arrived(header("alpha", A_EPOCH, "bravo", moved), [], [], 0.5)
    assert all(f.link.missing == () for f in bravo.outgoing(0.5))
    assert all(f.link.missing == () for f in bravo.outgoing(30.0))


def test_proven_missing_messages_are_resent_at_once_even_when_backlogged() -> None:
    alpha, _ = pair()
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)  # met
    send(alpha, 3)
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    hint = LinkFields(missing=(2,), ack_epoch=A_EPOCH)
    assert alpha.arrived(header("bravo", B_EPOCH, "alpha", hint), [], [], 1.0).resend == (2,)
    assert [f.seqs for f in alpha.outgoing(1.0, waiting={"bravo": {1, 2, 3}})] == [(2,)]


def test_a_resend_waits_while_its_file_waits_in_the_outbox() -> None:
    alpha, _ = pair()
    send(alpha, 2)
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    assert [f.seqs for f in alpha.outgoing(10.0, waiting={"bravo": {1, 2}}) if f.seqs] == []
    assert [f.seqs for f in alpha.outgoing(20.0) if f.seqs] == [(1, 2)]


def test_a_resend_goes_once_its_file_was_taken_however_many_files_wait_after_it() -> None:
    """A long stream keeps files of ours in the outbox: a message whose own file the pipe
    took (and whose ask for a resend was lost) must not wait for the stream to end."""
    alpha, _ = pair()
    send(alpha, 1)
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    now = 0.0
    for _ in range(5):  # one more file every second, each waiting in the outbox
        now += 1.0
        [seq] = send(alpha, 1, now)
        [file] = alpha.outgoing(now, waiting={"bravo": {seq - 1}})
        alpha.written(file, now)
    resent = alpha.outgoing(10.0, waiting={"bravo": {6}})
    assert [f.seqs for f in resent if f.seqs] == [(1,)]


def alpha_met_bravo() -> Protocol:
    """Alpha, having heard bravo (so acks from bravo are of its current epoch)."""
    alpha, _ = pair()
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)
    return alpha


def one_per_file(alpha: Protocol, n: int, now: float = 0.0) -> list[int]:
    """`n` messages to bravo, each written in a file of its own at `now`."""
    seqs = []
    for _ in range(n):
        seqs += send(alpha, 1, now)
        [file] = [f for f in alpha.outgoing(now) if f.seqs]
        alpha.written(file, now)
    return seqs


def acks(alpha: Protocol, state: ReceivedState, now: float) -> tuple[int, ...]:
    """What alpha resends at once on a file from bravo acknowledging `state`."""
    fields = LinkFields(ack=state, ack_epoch=A_EPOCH)
    return alpha.arrived(header("bravo", B_EPOCH, "alpha", fields), [], [], now).resend


def test_a_message_overtaken_by_three_files_is_resent_at_once() -> None:
    """Its file came through cut and the reader's ask was lost: the acks of later files
    tell, long before its timer would."""
    alpha = alpha_met_bravo()
    one_per_file(alpha, 5)
    assert acks(alpha, ReceivedState(1, ((3, 4),)), 1.0) == ()  # 2 is 2 files behind 4
    assert acks(alpha, ReceivedState(1, ((3, 5),)), 1.5) == (2,)
    assert [f.seqs for f in alpha.outgoing(1.5) if f.seqs] == [(2,)]
    assert acks(alpha, ReceivedState(1, ((3, 5),)), 2.0) == ()  # once per copy


def test_an_ack_of_a_resent_message_says_nothing_of_the_files_before_it() -> None:
    """Which copy it answers is unknown (Karn's rule): the first may have come late."""
    alpha = alpha_met_bravo()
    [first] = one_per_file(alpha, 1)
    one_per_file(alpha, 3, 1.0)
    alpha.outbound("bravo").resend_now([first], 2.0)
    alpha.written(alpha.outgoing(2.0)[0], 2.0)  # its copy is the newest file, 3 after 2
    assert acks(alpha, ReceivedState(0, ((1, 1),)), 3.0) == ()
    assert acks(alpha, ReceivedState(0, ((1, 1), (4, 4))), 3.0) == ()


def test_heartbeats_do_not_count_as_files_overtaking() -> None:
    alpha = alpha_met_bravo()
    one_per_file(alpha, 1)
    for now in (5.0, 10.0, 15.0):
        [beat] = alpha.outgoing(now, waiting={"bravo": {1}})
        assert beat.seqs == ()
        alpha.written(beat, now)
    one_per_file(alpha, 2, 16.0)
    assert acks(alpha, ReceivedState(0, ((3, 3),)), 17.0) == ()


def ask(alpha: Protocol, seqs: tuple[int, ...], now: float) -> tuple[int, ...]:
    """What alpha resends at once on a file from bravo asking for `seqs`."""
    fields = LinkFields(ack_epoch=A_EPOCH, missing=seqs)
    return alpha.arrived(header("bravo", B_EPOCH, "alpha", fields), [], [], now).resend


def test_an_ask_again_while_the_copy_it_made_waits_in_the_outbox_makes_no_copy() -> None:
    """The reader asks again (its ask may have been lost) while alpha's answer to the
    first ask still waits behind a backlog: no second copy behind it. Once that copy is
    taken, an ask again is answered."""
    alpha = alpha_met_bravo()
    one_per_file(alpha, 1)
    assert ask(alpha, (1,), 0.2) == (1,)
    [copy] = [f for f in alpha.outgoing(0.2, waiting={"bravo": {1}}) if f.seqs]
    alpha.written(copy, 0.2)
    ask(alpha, (1,), 5.2)
    assert [f.seqs for f in alpha.outgoing(5.2, waiting={"bravo": {1}}) if f.seqs] == []
    ask(alpha, (1,), 7.0)
    assert [f.seqs for f in alpha.outgoing(7.0) if f.seqs] == [(1,)]


def test_an_ask_again_does_not_count_the_copy_on_its_way_as_cut() -> None:
    """File sizes are learned from the files cut: the copy an ask made, asked for again,
    may be on its way still."""
    settings = dataclasses.replace(SETTINGS, max_bytes=64 * MiB)
    alpha = Protocol("alpha", A_EPOCH, {"bravo": settings})
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)
    for _ in range(16):
        alpha.queued("bravo", alpha.assign("bravo"), 4 * MiB - 1000, 0.0)
    [big] = alpha.outgoing(0.0)
    alpha.written(big, 0.0)
    ask(alpha, (5,), 1.0)
    [copy] = [f for f in alpha.outgoing(1.0) if f.seqs]
    alpha.written(copy, 1.0)
    ask(alpha, (5,), 3.6)
    sizes = alpha._links["bravo"].sizes
    assert sizes._classes[(4 * MiB - 1000).bit_length()].cut == 0
    assert sizes._classes[(16 * (4 * MiB - 1000)).bit_length()].cut == 1


def test_a_copy_made_for_a_message_overtaken_that_was_not_needed_deepens_the_reorder() -> None:
    """A pipe that reorders files deeper than three: the first copy of 2 comes after
    all, acknowledged sooner after the new copy than half a round trip could be."""
    alpha = alpha_met_bravo()
    one_per_file(alpha, 1)
    alpha.outbound("bravo").round_trip.sample(2.0)
    one_per_file(alpha, 4)
    assert acks(alpha, ReceivedState(1, ((3, 5),)), 2.0) == (2,)
    [copy] = [f for f in alpha.outgoing(2.0) if f.seqs]
    alpha.written(copy, 2.0)
    assert alpha.outbound("bravo").overtaking.depth == 3
    acks(alpha, ReceivedState(5), 2.5)
    assert alpha.outbound("bravo").overtaking.depth == 6


def test_an_ack_of_a_message_restored_at_start_times_nothing_and_overtakes_nothing() -> None:
    """Messages pending at start may have been written before it too: an ack of 4 and 5
    may answer those copies, not the ones written after the start."""
    settings = dataclasses.replace(SETTINGS, max_frames=1)
    state = LinkState(next_seq=6, unacked=tuple((s, 10) for s in range(1, 6)))
    alpha = Protocol("alpha", A_EPOCH, {"bravo": settings}, {"bravo": state})
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)
    for file in alpha.outgoing(0.0):
        alpha.written(file, 0.0)
    assert acks(alpha, ReceivedState(0, ((4, 5),)), 0.1) == ()
    assert alpha.outbound("bravo").round_trip.smoothed is None


def test_what_is_noted_of_files_for_overtaking_stays_bounded_while_nothing_is_acked() -> None:
    """A reader away for a day, 500 messages resent on their timers."""
    alpha = alpha_met_bravo()
    send(alpha, 500)
    now = 0.0
    while now < 86400:
        for f in alpha.outgoing(now):
            alpha.written(f, now)
        now = alpha.next_wakeup() or now
    assert len(alpha.outbound("bravo").overtaking._carried) <= 2 * 500 + 64


def test_a_resend_waits_on_the_round_trip_as_measured_when_it_comes_due() -> None:
    """A pipe backing up: the round trip grew to 8 s after message 1 went, when the
    timeout was 10 s. It is resent twice the round trip after its write, not at 10 s."""
    alpha = alpha_met_bravo()
    one_per_file(alpha, 1)
    alpha.outbound("bravo").round_trip.sample(8.0)
    assert [f.seqs for f in alpha.outgoing(10.0) if f.seqs] == []
    assert [f.seqs for f in alpha.outgoing(15.9) if f.seqs] == []
    assert [f.seqs for f in alpha.outgoing(16.0) if f.seqs] == [(1,)]


def test_only_a_due_resend_asks_whether_the_pipe_is_backlogged() -> None:
    alpha, _ = pair()
    send(alpha, 2)
    assert alpha.resending(0.0) == []  # due, but never written: not a resend
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    timeout = alpha.outbound("bravo").timeout()
    assert alpha.resending(timeout - 0.1) == []
    assert alpha.resending(timeout) == ["bravo"]
    alpha.outgoing(timeout, waiting={"bravo": {1, 2}})  # held for another timeout
    assert alpha.resending(timeout + 0.1) == []
    alpha.outbound("bravo").resend_now([1], timeout + 0.2)  # proven missing: never held
    assert alpha.resending(timeout + 0.2) == []
    assert alpha.resending(3 * timeout) == ["bravo"]


def test_a_new_epoch_starts_from_the_senders_floor_and_retires_the_old() -> None:
    alpha, bravo = pair()
    old = header("bravo", B_EPOCH, "alpha", LinkFields(floor=1, ack_epoch=A_EPOCH))
    alpha.stored("bravo", alpha.arrived(old, [1, 2, 3], [], 0.0).deliver)
    assert alpha.clock() == {"bravo": 3}
    renewed = header("bravo", B_NEW, "alpha", LinkFields(floor=1, ack_epoch=A_EPOCH))
    arrival = alpha.arrived(renewed, [1], [], 1.0)  # bravo's new state numbers from 1 again
    assert arrival.verdict is Verdict.NEW_EPOCH and arrival.old_epoch == B_EPOCH
    assert arrival.deliver == (1,)
    stale = LinkFields(ack_epoch=A_EPOCH)
    late = alpha.arrived(header("bravo", B_EPOCH, "alpha", stale), [4], [], 2.0)
    assert late.verdict is Verdict.STALE and late.deliver == ()
    # A reader whose state was wiped takes the sender's floor as received.
    fresh = Protocol("carol", "d" * 16, {"alpha": SETTINGS})
    far = header("alpha", A_EPOCH, "carol", LinkFields(floor=40, ack_epoch="d" * 16))
    assert fresh.arrived(far, [39, 40], [], 0.0).deliver == (40,)
    del bravo


@pytest.mark.parametrize("known", [None, "e" * 16])
def test_a_file_written_before_the_readers_epoch_delivers_nothing(known: str | None) -> None:
    """A file whose writer did not know the reader's current epoch (a replay from
    before the reader's state was wiped, or a first file) delivers nothing."""
    _, bravo = pair()
    replayed = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=known))
    assert bravo.arrived(replayed, [1, 2], [3], 0.0).deliver == ()
    assert bravo.outbound("alpha").unacked == 0 and bravo.clock() == {"alpha": 0}
    acquainted = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH))
    assert bravo.arrived(acquainted, [1, 2], [], 1.0).deliver == (1, 2)


def test_a_writer_resends_what_it_holds_at_once_when_it_learns_a_new_reader_epoch() -> None:
    alpha, _ = pair()
    send(alpha, 3)
    first = alpha.outgoing(0.0)[0]
    assert first.link.ack_epoch is None  # alpha has not heard bravo yet
    alpha.written(first, 0.0)
    met = alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.5)
    assert met.verdict is Verdict.NEW_EPOCH and met.resend == (1, 2, 3)
    [again] = [f for f in alpha.outgoing(0.5) if f.seqs]
    assert again.seqs == (1, 2, 3) and again.link.ack_epoch == B_EPOCH


def test_a_file_planned_before_the_readers_epoch_was_learned_is_sent_again_at_once() -> None:
    """The epoch comes in while the file is being written: the file names no epoch (or
    an old one), so the reader takes nothing from it, and waiting for the resend timer
    would only add delay."""
    alpha, _ = pair()
    send(alpha, 2)
    [planned] = alpha.outgoing(0.0)
    assert planned.link.ack_epoch is None
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.1)  # meanwhile
    alpha.written(planned, 0.2)
    [again] = [f for f in alpha.outgoing(0.2) if f.seqs]
    assert again.seqs == (1, 2) and again.link.ack_epoch == B_EPOCH


def test_an_old_file_replayed_never_retires_the_writers_current_epoch() -> None:
    """A file of an epoch of alpha's that bravo never recorded, written before bravo's
    own epoch existed, is not believed: were it, alpha's real files would all be stale
    from then on and the link cut for good. Nor are its missing hints taken."""
    _, bravo = pair()
    current = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH))
    assert bravo.arrived(current, [1], [], 0.0).deliver == (1,)
    bravo.stored("alpha", [1])
    old = header("alpha", "f" * 16, "bravo", LinkFields(ack_epoch="e" * 16, missing=(1,)))
    replayed = bravo.arrived(old, [1, 2], [], 1.0)
    assert replayed.verdict is Verdict.STALE and replayed.deliver == replayed.resend == ()
    assert bravo.status("alpha").remote_epoch == A_EPOCH
    assert bravo.arrived(current, [2], [], 2.0).deliver == (2,)  # the link goes on


def test_a_new_epoch_of_the_writer_is_believed_once_it_knows_the_readers() -> None:
    """alpha's state is wiped: its first files, not knowing bravo, change nothing; once
    it heard bravo, its files name bravo's epoch and bravo takes the new one."""
    _, bravo = pair()
    bravo.arrived(header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH)), [], [], 0.0)
    fresh = bravo.arrived(header("alpha", "f" * 16, "bravo", LinkFields()), [1], [], 1.0)
    assert fresh.verdict is Verdict.STALE and bravo.status("alpha").remote_epoch == A_EPOCH
    knows = header("alpha", "f" * 16, "bravo", LinkFields(ack_epoch=B_EPOCH))
    renewed = bravo.arrived(knows, [1], [], 2.0)
    assert renewed.verdict is Verdict.NEW_EPOCH and renewed.deliver == (1,)


def test_round_trips_stretch_the_resend_timeout() -> None:
    alpha, _ = pair()
    send(alpha, 1)
    alpha.written(alpha.outgoing(0.0)[0], 0.0)
    ack = LinkFields(ack=ReceivedState(1), ack_epoch=A_EPOCH)
    alpha.arrived(header("bravo", B_EPOCH, "alpha", ack), [], [], 30.0)
    assert alpha.outbound("bravo").timeout() == 60.0


def test_a_restart_resends_what_was_never_acknowledged() -> None:
    from mesh.proto.link import LinkState

    state = LinkState(next_seq=8, unacked=((5, 10), (7, 10)))
    alpha = Protocol("alpha", A_EPOCH, {"bravo": SETTINGS}, {"bravo": state}, now=100.0)
    assert [f.seqs for f in alpha.outgoing(100.0)] == [(5, 7)]
    assert alpha.assign("bravo") == 8


def test_settling_waits_for_an_unchanged_file() -> None:
    s = Settling(2.0)
    assert not s.settled("f", (10, 1), 0.0)
    assert s.marks(1.0) == {"f": (10, 1)} and not s.settled("f", (10, 1), 1.9)
    assert not s.settled("f", (20, 2), 2.5)  # it grew: start again
    assert s.next_check() == 4.5
    assert s.marks(4.4) == {"f": (20, 2)}
    assert s.settled("f", (20, 2), 4.5) and s.marks(4.5) == {}


S_OLD, S_NEW, S_ALPHA = "1" * 16, "2" * 16, "a" * 16


def test_a_file_from_before_the_readers_latest_start_delivers_nothing() -> None:
    """A start of a peer has a session of its own: a file naming an older one (captured
    before a state was restored from a backup, say) delivers nothing, though it names
    the reader's epoch."""
    bravo = Protocol("bravo", B_EPOCH, {"alpha": SETTINGS}, session=S_NEW)
    old = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH, ack_session=S_OLD))
    assert bravo.arrived(old, [1], [], 0.0).deliver == ()
    fresh = header("alpha", A_EPOCH, "bravo", LinkFields(ack_epoch=B_EPOCH, ack_session=S_NEW))
    assert bravo.arrived(fresh, [1], [], 1.0).deliver == (1,)


def test_a_writer_resends_at_once_when_its_reader_started_again() -> None:
    alpha = Protocol("alpha", A_EPOCH, {"bravo": SETTINGS}, session=S_ALPHA)
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields(session=S_OLD)), [], [], 0.0)
    send(alpha, 2)
    [first] = alpha.outgoing(0.0)
    assert first.link.ack_session == S_OLD
    alpha.written(first, 0.0)
    again = LinkFields(session=S_NEW, ack_epoch=A_EPOCH, ack_session=S_ALPHA)
    assert alpha.arrived(header("bravo", B_EPOCH, "alpha", again), [], [], 1.0).resend == (1, 2)
    replayed = LinkFields(session=S_OLD)  # an old file of bravo's: it moves nothing back
    assert alpha.arrived(header("bravo", B_EPOCH, "alpha", replayed), [], [], 1.5).resend == ()
    [resent] = [f for f in alpha.outgoing(1.5) if f.seqs]
    assert resent.seqs == (1, 2) and resent.link.ack_session == S_NEW


def test_files_left_from_old_epochs_do_not_stand_in_the_way() -> None:
    """Both states made anew, files of their old epochs still in the pipe: bravo first
    takes alpha's old epoch from one, then alpha's newer epoch from a file written after
    it, though that file does not know bravo's epoch yet (else neither would ever take
    the other's files). An older one never goes back."""
    bravo = Protocol("bravo", B_NEW, {"alpha": SETTINGS})
    leftover = header("alpha", "f" * 16, "bravo", LinkFields(ack_epoch=B_EPOCH))
    bravo.arrived(dataclasses.replace(leftover, created=100.0), [], [], 0.0)
    real = header("alpha", A_EPOCH, "bravo", LinkFields())
    newer = bravo.arrived(dataclasses.replace(real, created=200.0), [], [], 1.0)
    assert newer.verdict is Verdict.NEW_EPOCH and bravo.status("alpha").remote_epoch == A_EPOCH
    other_old = header("alpha", "e" * 16, "bravo", LinkFields())
    older = bravo.arrived(dataclasses.replace(other_old, created=150.0), [], [], 2.0)
    assert older.verdict is Verdict.STALE and bravo.status("alpha").remote_epoch == A_EPOCH


def test_frames_cut_from_big_files_make_the_links_files_smaller() -> None:
    """The reader names frames cut from our big files, never from small ones: the link
    learns a smaller size, shows it, and the frames it resends go in files that size."""
    mib = 1 << 20
    settings = LinkSettings(5.0, 10.0, max_bytes=64 * mib, collate_below=1)
    alpha = Protocol("alpha", A_EPOCH, {"bravo": settings})
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)  # met
    assert alpha.status("bravo").file_size == 64 * mib
    now = 0.0
    for _ in range(10):  # small files, none cut
        seq = alpha.assign("bravo")
        alpha.queued("bravo", seq, 100, now)
        alpha.written(alpha.outgoing(now)[0], now)
        now += 0.1
    for _ in range(3):  # big files (16 frames of 4 MiB), each losing its last frame
        seqs = [alpha.assign("bravo") for _ in range(16)]
        for seq in seqs:
            alpha.queued("bravo", seq, 4 * mib, now)
        [big] = alpha.outgoing(now)
        assert big.seqs == tuple(seqs)
        alpha.written(big, now)
        hint = LinkFields(missing=(seqs[-1],), ack=ReceivedState(seqs[-2]), ack_epoch=A_EPOCH)
        alpha.arrived(header("bravo", B_EPOCH, "alpha", hint), [], [], now + 0.05)
        # the frame resent, then acknowledged: the next round's files are its own alone
        alpha.written(alpha.outgoing(now + 0.05)[0], now + 0.05)
        whole = LinkFields(ack=ReceivedState(seqs[-1]), ack_epoch=A_EPOCH)
        alpha.arrived(header("bravo", B_EPOCH, "alpha", whole), [], [], now + 0.08)
        now += 0.1
    assert alpha.status("bravo").file_size == 60 * mib  # under the class cut: 64 MiB up
    seqs = [alpha.assign("bravo") for _ in range(16)]
    for seq in seqs:
        alpha.queued("bravo", seq, 4 * mib, now)
    assert [len(f.seqs) for f in alpha.outgoing(now)] == [15, 1]


def test_frames_named_missing_once_acknowledged_teach_no_file_size() -> None:
    """A file replayed into the pipe names frames long acknowledged: they were not cut,
    and the size stays."""
    mib = 1 << 20
    settings = LinkSettings(5.0, 10.0, max_bytes=64 * mib, collate_below=1)
    alpha = Protocol("alpha", A_EPOCH, {"bravo": settings})
    alpha.arrived(header("bravo", B_EPOCH, "alpha", LinkFields()), [], [], 0.0)  # met
    for n in range(10):
        seq = alpha.assign("bravo")
        alpha.queued("bravo", seq, 100, n / 10)
        alpha.written(alpha.outgoing(n / 10)[0], n / 10)
    for n in range(3):
        seqs = [alpha.assign("bravo") for _ in range(16)]
        for seq in seqs:
            alpha.queued("bravo", seq, 4 * mib, 2.0 + n)
        alpha.written(alpha.outgoing(2.0 + n)[0], 2.0 + n)
        acked = LinkFields(ack=ReceivedState(seqs[-1]), ack_epoch=A_EPOCH)
        alpha.arrived(header("bravo", B_EPOCH, "alpha", acked), [], [], 2.5 + n)
        replayed = LinkFields(missing=(seqs[-1],), ack_epoch=A_EPOCH)
        alpha.arrived(header("bravo", B_EPOCH, "alpha", replayed), [], [], 2.6 + n)
    assert alpha.status("bravo").file_size == 64 * mib
