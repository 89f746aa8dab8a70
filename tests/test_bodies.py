"""Bodies: kept in memory when small, spooled to a file when big, refused past the limit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.bodies import BLOCK, INLINE, Bodies, Body, BodyTooLarge, fragments, incoming_name


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
    assert bodies.read_at(body.file, INLINE, 10) == data[INLINE : INLINE + 10]
    with pytest.raises(OSError):
        bodies.read_at(body.file, len(data) - 2, 10)  # past the end: never short data


async def test_a_body_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    with pytest.raises(BodyTooLarge):
        await bodies.receive(chunks(b"y" * (2 * INLINE + 1)), 2 * INLINE)
    with pytest.raises(BodyTooLarge):
        await bodies.receive(chunks(b"y" * 11), 10)
    assert list(bodies.folder.iterdir()) == []


def test_fragments_cover_the_body_exactly() -> None:
    body = Body(b"", "out-x", 2 * BLOCK + 1)
    assert fragments(body, BLOCK) == [(0, 0, BLOCK), (1, BLOCK, BLOCK), (2, 2 * BLOCK, 1)]
    assert fragments(Body(b"", "out-x", BLOCK), BLOCK) == [(0, 0, BLOCK)]


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
