"""Bodies: kept in memory when small, spooled to a file when big, refused past the limit."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from mesh.pipe import bodies as bodies_module
from mesh.pipe.bodies import CHUNK, INLINE, WRITES_AHEAD, Bodies, Body, BodyTooLarge, incoming_name
from mesh.pipe.flowing import pump_noting


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_small_body_stays_in_memory(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    body = await bodies.receive(chunks(b"x" * INLINE), INLINE * 4)
    assert body == Body.of(b"x" * INLINE) and not body.spooled
    assert list(bodies.folder.iterdir()) == []


async def test_a_big_body_is_spooled_whole_and_read_back_in_chunks(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    data = os.urandom(3 * INLINE + 5)
    body = await bodies.receive(chunks(data), 1 << 30)
    assert body.spooled and body.size == len(data) and body.data == b""
    assert body.file is not None and body.file.startswith("out-")
    assert b"".join([c async for c in bodies.chunks(body.file)]) == data
    with bodies.reader() as reader:
        buffer = bytearray(10)
        reader.read_into(body.file, INLINE, memoryview(buffer))
        assert buffer == data[INLINE : INLINE + 10]
        with pytest.raises(OSError):
            reader.read_into(body.file, len(data) - 2, memoryview(buffer))  # never short data


async def test_a_body_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    with pytest.raises(BodyTooLarge):
        await bodies.receive(chunks(b"y" * (2 * INLINE + 1)), 2 * INLINE)
    with pytest.raises(BodyTooLarge):
        await bodies.receive(chunks(b"y" * 11), 10)
    assert list(bodies.folder.iterdir()) == []


async def test_a_growing_body_is_reported_durable_as_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mesh.pipe.folder.SYNC_EVERY", 2 * INLINE)
    bodies = Bodies(tmp_path / "bodies")
    data = os.urandom(5 * INLINE + 3)
    told: list[tuple[str, int]] = []

    def grew(name: str, durable: int) -> None:
        assert bodies.path(name).read_bytes()[:durable] == data[:durable]
        told.append((name, durable))

    body = await bodies.receive(chunks(data), 1 << 30, grew)
    assert told[-1] == (body.file, len(data))  # whole, at the end
    sizes = [durable for _, durable in told]
    assert sizes == sorted(sizes) and len(sizes) >= 3  # and along the way


async def test_a_failed_body_leaves_its_file_only_if_it_was_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mesh.pipe.folder.SYNC_EVERY", 2 * INLINE)
    bodies = Bodies(tmp_path / "bodies")

    async def cut(size: int) -> AsyncIterator[bytes]:
        async for chunk in chunks(b"z" * size):
            yield chunk
        raise ConnectionError("the client went away")

    with pytest.raises(ConnectionError):
        await bodies.receive(cut(INLINE + 10), 1 << 30, lambda name, size: None)
    assert list(bodies.folder.iterdir()) == []  # nothing told: nobody owns it
    told: list[str] = []
    with pytest.raises(ConnectionError):
        await bodies.receive(cut(4 * INLINE), 1 << 30, lambda name, size: told.append(name))
    assert [p.name for p in bodies.folder.iterdir()] == told[:1]  # its owner removes it


async def test_a_spooled_body_is_read_on_while_the_disk_writes_but_only_so_far_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = Bodies(tmp_path / "bodies")
    disk_free = threading.Event()
    real_append = bodies_module._append

    def slow_append(*args: object) -> bool:
        assert disk_free.wait(10)
        return real_append(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bodies_module, "_append", slow_append)
    pulled = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(12):
            pulled += 1
            yield b"w" * CHUNK

    got: list[Body] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _receive_into(bodies, counted(), got))
            try:
                await trio.testing.wait_all_tasks_blocked()
                # The first write (the 3 CHUNKs read by then: INLINE is one) hangs on the
                # disk; the socket is read on meanwhile, but only WRITES_AHEAD CHUNKs more
                # and one in hand.
                assert INLINE == CHUNK and pulled == 3 + WRITES_AHEAD + 1
            finally:
                disk_free.set()
    [body] = got
    assert body.size == 12 * CHUNK and bodies.path(body.file or "").stat().st_size == body.size


async def _receive_into(bodies: Bodies, source: AsyncIterator[bytes], got: list[Body]) -> None:
    got.append(await bodies.receive(source, 1 << 30))


def test_fragments_written_in_any_order_make_the_body(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    name = incoming_name("alpha", "a" * 32)
    with bodies.writer() as writer:
        writer.write(name, 6, b"world")
        writer.write(name, 0, b"hello ")
    assert bodies.path(name).read_bytes() == b"hello world"


def test_only_safe_names_become_body_files() -> None:
    for remote, message_id in [("../x", "a" * 32), ("alpha", "../../etc"), ("Alpha", "a" * 32)]:
        with pytest.raises(ValueError):
            incoming_name(remote, message_id)


def test_sweep_removes_leftovers_but_keeps_what_is_referred_to(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    for name in ("tmp-1", "out-kept", "out-gone", "in-alpha-" + "a" * 32):
        bodies.path(name).write_bytes(b"x")
    assert bodies.sweep({"out-kept"}) == 2
    assert sorted(p.name for p in bodies.folder.iterdir()) == ["in-alpha-" + "a" * 32, "out-kept"]


async def test_a_body_that_broke_is_known_broken_by_the_time_its_channel_ends() -> None:
    """Whoever reads a body pumped from a source that broke, to the channel's end, sees
    the break noted then: never a cut body taken for whole (the reader ran first at
    the end about half the time, when the note came after the channel's close)."""

    async def breaking() -> AsyncIterator[bytes]:
        yield b"first"
        raise ConnectionError("the caller went away")

    for _ in range(50):  # the order trio runs the two in at the end varies
        send, receive = trio.open_memory_channel[bytes](4)
        broke: list[ConnectionError] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_noting, breaking(), send, ConnectionError, broke)
            assert [piece async for piece in receive] == [b"first"]
            assert [str(exc) for exc in broke] == ["the caller went away"]
