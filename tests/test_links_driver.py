"""The links driver's timers, in process, in virtual time (`MockClock`, autojump): a real
folder as the pipe and a real database, nobody at the far end but what each test does
with the files alpha writes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from mesh.pipe.bodies import Bodies
from mesh.pipe.links import Links
from mesh.proto.link import LinkSettings
from mesh.state.store import Store
from mesh.wire.crypto import Identity, Keyring
from mesh.wire.fileformat import Limits, decode_file
from mesh.wire.messages import Datagram
from tests.helpers.virtual import durability, on_the_loop

SETTINGS = LinkSettings(heartbeat=5.0, resend_after=10.0, linger=0.0)
MiB = 1 << 20


@asynccontextmanager
async def running(tmp_path: Path, identities: dict[str, Identity]) -> AsyncIterator[Links]:
    """alpha's links to bravo, writing into `tmp_path/pipe`, run for the block."""
    keyring = Keyring(identities["alpha"], {"bravo": identities["bravo"].public})
    store = Store(tmp_path / "alpha")
    (tmp_path / "pipe").mkdir()
    links = Links(
        store.database,
        store.links,
        keyring,
        {"bravo": SETTINGS},
        tmp_path / "pipe",
        Bodies(tmp_path / "alpha" / "bodies"),
        durability(store.database),
        Limits(),
        max_body=MiB,
        block=MiB,
        disk=on_the_loop(),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(links.run)
        yield links
        nursery.cancel_scope.cancel()
    store.close()


def names_in(pipe: Path) -> list[str]:
    """The files in the pipe (on the event loop, as everything here: virtual time)."""
    return sorted(path.name for path in pipe.iterdir())


def lose(pipe: Path) -> None:
    for name in names_in(pipe):
        (pipe / name).unlink()


async def take_everything(pipe: Path) -> None:
    """A pipe that takes alpha's files and loses them, looking every half second."""
    while True:
        lose(pipe)
        await trio.sleep(0.5)


async def writes_of(links: Links, seq: int, count: int) -> list[tuple[str, float]]:
    """The first `count` writes of message `seq` (sent, resent), with their times."""
    found = []
    with links.events.subscribe() as events:
        async for event in events:
            if event.seq == seq and event.state in ("sent", "resent"):
                found.append((event.state, trio.current_time()))
                if len(found) == count:
                    return found
    raise AssertionError("the events ended")


async def test_a_quiet_link_beats_each_interval_and_keeps_only_its_newest_heartbeat(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with running(tmp_path, identities) as links:
            await trio.sleep(12.0)
            assert links.protocol.status("bravo").files == 3  # at 0, 5 and 10
            left = names_in(tmp_path / "pipe")
            assert len(left) == 1 and left[0].endswith(".hb.mesh")  # the others superseded


async def test_a_message_never_acknowledged_is_resent_with_backoff(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        async with running(tmp_path, identities) as links, trio.open_nursery() as nursery:
            nursery.start_soon(take_everything, tmp_path / "pipe")
            sent = await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"lost"))
            writes = await writes_of(links, sent.seq, 4)
            assert writes == [("sent", 0.0), ("resent", 10.0), ("resent", 30.0), ("resent", 70.0)]
            assert links.protocol.status("bravo").unacked == 1
            nursery.cancel_scope.cancel()


async def test_nothing_is_resent_while_the_pipe_has_not_taken_the_first_copy(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        async with running(tmp_path, identities) as links, trio.open_nursery() as nursery:
            sent = await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"waiting"))

            async def pipe_wakes_up() -> None:
                await trio.sleep(35.0)  # until then the files stay in the outbox
                await take_everything(tmp_path / "pipe")

            nursery.start_soon(pipe_wakes_up)
            # Due at 10, put off a timeout at a time while the first copy waits; found
            # taken at 40 (the pipe took it at 35), given a timeout from then for its ack.
            assert await writes_of(links, sent.seq, 2) == [("sent", 0.0), ("resent", 50.0)]
            nursery.cancel_scope.cancel()


async def test_a_message_whose_file_was_taken_is_resent_while_later_files_wait(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    """A long stream keeps newer files of ours in the outbox: they must not hold back the
    resend of a message whose own file the pipe took and lost."""
    pipe = tmp_path / "pipe"
    with trio.fail_after(600):
        async with running(tmp_path, identities) as links, trio.open_nursery() as nursery:
            await trio.sleep(0.1)
            lose(pipe)  # the first heartbeat
            sent = await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"taken"))
            await trio.sleep(0.5)
            lose(pipe)  # taken by the pipe, and lost on the way

            async def stream() -> None:
                while True:  # a file every second, which the pipe never takes
                    await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"later"))
                    await trio.sleep(1.0)

            nursery.start_soon(stream)
            assert await writes_of(links, sent.seq, 1) == [("resent", 10.1)]  # its timeout
            nursery.cancel_scope.cancel()


async def test_a_message_is_not_resent_while_its_file_waits_behind_hundreds_of_newer(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    """The pipe takes nothing: message 1 and 300 more each in a file of their own, all
    waiting. Noting only the newest files would forget message 1's and resend it."""
    with trio.fail_after(600):
        async with running(tmp_path, identities) as links:
            first = await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"first"))
            for _ in range(300):
                await trio.sleep(0.01)
                await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"later"))
            with trio.move_on_after(30):
                writes = await writes_of(links, first.seq, 1)
                raise AssertionError(f"resent while its file still waits: {writes}")


async def test_a_heartbeat_asking_for_messages_is_not_superseded_by_the_next_file(
    tmp_path: Path, identities: dict[str, Identity], autojump_clock: trio.testing.MockClock
) -> None:
    """Asks are told once per `again_after`: the file after the heartbeat that carried
    them does not repeat them, so removing that heartbeat would lose them."""
    pipe = tmp_path / "pipe"
    bravo = Keyring(identities["bravo"], {"alpha": identities["alpha"].public})

    def asks() -> list[int]:
        files = [decode_file((pipe / name).read_bytes(), bravo) for name in names_in(pipe)]
        return [seq for file in files for seq in file.header.link.missing]

    with trio.fail_after(60):
        async with running(tmp_path, identities) as links:
            await trio.sleep(1.0)
            links.protocol.inbound("bravo").note_missing([5])
            links.kick()
            await trio.sleep(0.001)
            assert asks() == [5]
            await links.sending.send("bravo", Datagram(uuid.uuid4().hex, b"of ours"))
            await trio.sleep(0.001)
            assert asks() == [5]
