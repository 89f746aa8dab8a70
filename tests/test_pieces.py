"""Fragments read where they arrived: big raw fragments are linked from their pipe files
as pieces of their bodies (each byte written once on the receiving side), only when nobody
else may change the file, and read back exactly; all others are copied."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest
import trio

from mesh.peer import Peer
from mesh.pipe.bodies import Bodies, incoming_name
from mesh.pipe.pieces import LINK_FROM, Piece, Pieces, parse
from mesh.pipe.sending import receive_body
from mesh.wire.layout import new_digest
from mesh.wire.messages import Datagram, Fragment, Request
from tests.test_links import start, streaming_roster, until

MiB = 1 << 20
BODY = incoming_name("alpha", "a" * 32)


def piece(data: bytes, offset: int = 0) -> Piece:
    """`data` as bytes `offset`.. of a body, the whole frame at 16 in its `carrier`."""
    return Piece(offset, len(data), 16, len(data), new_digest(data).digest())


def carrier(folder: Path, data: bytes, mode: int = 0o600) -> int:
    """A file holding 16 bytes of header, then `data`, open for reading."""
    path = folder / f"carrier-{uuid.uuid4().hex}"
    path.write_bytes(b"h" * 16 + data)
    path.chmod(mode)
    return os.open(path, os.O_RDONLY)


def test_a_body_reads_from_its_pieces_and_its_file_and_never_through_a_hole(
    tmp_path: Path,
) -> None:
    bodies = Bodies(tmp_path / "bodies")
    data = os.urandom(3 * LINK_FROM)
    first, third = carrier(tmp_path, data[:LINK_FROM]), carrier(tmp_path, data[2 * LINK_FROM :])
    assert bodies.pieces.link(first, BODY, piece(data[:LINK_FROM]))
    assert bodies.pieces.link(third, BODY, piece(data[2 * LINK_FROM :], 2 * LINK_FROM))
    assert bodies.size(BODY) == 3 * LINK_FROM and bodies.has(BODY)
    with bodies.ranges(BODY) as ranges, pytest.raises(OSError):
        ranges.read(LINK_FROM - 10, 20)  # the middle is not here
    with bodies.writer() as writer:  # the middle came copied (compressed, say)
        writer.write(BODY, LINK_FROM, data[LINK_FROM : 2 * LINK_FROM])
    with bodies.ranges(BODY) as ranges:
        assert ranges.read(0, len(data)) == data
        assert (
            ranges.read(LINK_FROM - 10, 2 * LINK_FROM) == data[LINK_FROM - 10 : 3 * LINK_FROM - 10]
        )
    # The folder is the map: a peer started again reads the same
    assert Bodies(bodies.folder).ranges(BODY).read(0, len(data)) == data
    bodies.remove([BODY])
    assert not bodies.has(BODY) and os.listdir(bodies.folder) == []
    assert not Bodies(bodies.folder).has(BODY)


def test_a_body_removed_while_it_is_read_is_never_read_as_zeros(tmp_path: Path) -> None:
    """The body file, held open by its reader, has a hole where a piece was: once the
    body is removed (its sender gave it up, say), what came copied is still read (as it
    was before it was removed), a piece never seen is an error, never zeros."""
    bodies = Bodies(tmp_path / "bodies")
    data = os.urandom(2 * LINK_FROM)
    with bodies.writer() as writer:  # the second half came copied
        writer.write(BODY, LINK_FROM, data[LINK_FROM:])
    with bodies.ranges(BODY) as ranges:
        assert ranges.read(LINK_FROM, 10) == data[LINK_FROM : LINK_FROM + 10]  # file open
        assert bodies.pieces.link(
            carrier(tmp_path, data[:LINK_FROM]), BODY, piece(data[:LINK_FROM])
        )
        bodies.remove([BODY])
        assert ranges.read(LINK_FROM + 10, 10) == data[LINK_FROM + 10 : LINK_FROM + 20]
        with pytest.raises(OSError, match="hole"):
            ranges.read(0, 10)


def test_the_very_file_checked_is_linked_whatever_its_name_is_now(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    checked = tmp_path / "inbox-file"
    checked.write_bytes(b"h" * 16 + b"checked" * LINK_FROM)
    fd = os.open(checked, os.O_RDONLY)
    os.rename(checked, tmp_path / "moved")  # another moves it, and puts its own there
    checked.write_bytes(b"h" * 16 + b"SWAPPED" * LINK_FROM)
    assert bodies.pieces.link(fd, BODY, piece(b"checked" * LINK_FROM))
    assert bodies.ranges(BODY).read(0, 7) == b"checked"
    gone = os.open(checked, os.O_RDONLY)
    os.replace(tmp_path / "moved", checked)  # the one checked has no name left: copied
    assert not bodies.pieces.link(gone, BODY, piece(b"SWAPPED" * LINK_FROM, 7 * LINK_FROM))
    assert [piece.offset for piece in bodies.pieces.of(BODY)] == [0]


def test_a_file_adopted_is_out_of_reach_of_a_mirror_rewriting_its_name(tmp_path: Path) -> None:
    bodies = Bodies(tmp_path / "bodies")
    inbox = tmp_path / "inbox-file"
    inbox.write_bytes(b"h" * 16 + b"checked" * LINK_FROM)
    fd = os.open(inbox, os.O_RDONLY)
    adopted = bodies.pieces.adopt(inbox, fd)
    assert adopted is not None and adopted.parent == bodies.folder and not inbox.exists()
    with inbox.open("wb") as rewritten:  # as an SFTP put of that name would: a new file
        rewritten.write(b"h" * 16 + b"FORGED!" * LINK_FROM)
    assert bodies.pieces.link(fd, BODY, piece(b"checked" * LINK_FROM))
    assert bodies.ranges(BODY).read(0, 7) == b"checked"
    # A name that stands for another file than the one open is not adopted (and that
    # other file, out of the inbox now, is dropped)
    assert bodies.pieces.adopt(inbox, fd) is None and not inbox.exists()
    assert [p.name for p in bodies.folder.iterdir() if p.name.startswith("tmp-")] == [adopted.name]


def test_only_a_file_nobody_else_may_change_is_linked(tmp_path: Path) -> None:
    (tmp_path / "bodies").mkdir()
    pieces = Pieces(tmp_path / "bodies")
    assert pieces.linkable(carrier(tmp_path, b"x"))
    assert pieces.linkable(carrier(tmp_path, b"x", 0o400))
    assert not pieces.linkable(carrier(tmp_path, b"x", 0o620))  # the group may write it
    assert not pieces.linkable(carrier(tmp_path, b"x", 0o602))  # anyone may
    other = carrier(tmp_path, b"x")
    if os.geteuid() == 0:
        os.fchown(other, 65534, 65534)  # another user's: it could rewrite it later
        assert not pieces.linkable(other)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        elsewhere = shm / f"mesh-test-{uuid.uuid4().hex}"
        elsewhere.write_bytes(b"x")
        try:
            assert not pieces.linkable(os.open(elsewhere, os.O_RDONLY))  # another filesystem
        finally:
            elsewhere.unlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert not pieces.linkable(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


def test_only_names_mesh_makes_are_pieces() -> None:
    made = Piece(1 << 33, 4 * MiB, 4096, 4 * MiB + 90, b"\x07" * 32).named(BODY)
    assert parse(made.name) == (BODY, made)
    digest = "07" * 32
    for other in (
        "in-alpha-" + "a" * 32,
        f"p-1-2-3-4-{digest}-out-x",
        f"p-1-2-3-{digest}-{BODY}",
        f"p-x-2-3-4-{digest}-{BODY}",
        f"p-1-2-3-4-{digest[:-2]}-{BODY}",
        f"p-01-2-3-4-{digest}-{BODY}",  # not as mesh writes it
    ):
        assert parse(other) is None, other


async def _cross(tmp_path: Path, data: bytes, **bravo_settings: str) -> tuple[Peer, str]:
    """Send `data` as a body from alpha to bravo (fragments of 1 MiB); bravo, and the
    body's name there, once all of it is there (`resent` holds how many of alpha's
    messages were sent again)."""
    path = streaming_roster(tmp_path)
    for key, value in bravo_settings.items():
        text = path.read_text()
        path.write_text(text.replace("defaults:\n", f"defaults:\n  {key}: {value}\n", 1))
    async with trio.open_nursery() as nursery:
        peers = await start(path, nursery)
        alpha, bravo = peers["alpha"], peers["bravo"]
        stream = alpha.links.sending.stream("bravo", uuid.uuid4().hex, len(data))

        async def arriving() -> object:
            for start_at in range(0, len(data), 64 << 10):
                yield data[start_at : start_at + (64 << 10)]

        body = await receive_body(alpha.bodies, alpha.links.sending, arriving(), 1 << 30, stream)
        request = Request(stream.message_id, "PUT", "/", (), b"", 1e10)
        await alpha.links.sending.send("bravo", request, body, stream)
        await until(
            bravo.links.receiving,
            lambda: bravo.links.receiving.body_here("alpha", stream.transfer, len(data)),
        )
        resent.append(alpha.links.protocol.status("bravo").resends)
        nursery.cancel_scope.cancel()
    return bravo, incoming_name("alpha", stream.transfer)


resent: list[int] = []


async def test_a_raw_body_is_read_where_it_arrived_not_copied(tmp_path: Path) -> None:
    data = os.urandom(6 * MiB + 5)  # random: it does not compress
    with trio.fail_after(30):
        bravo, name = await _cross(tmp_path, data)
    assert bravo.bodies.pieces.of(name), "no fragment was linked"
    copied = bravo.bodies.path(name)  # only what is under LINK_FROM: the 5 bytes at the end
    assert not copied.exists() or copied.stat().st_blocks * 512 < LINK_FROM
    assert b"".join([chunk async for chunk in bravo.bodies.chunks(name)]) == data
    for entry in os.scandir(bravo.bodies.folder):
        if entry.name.startswith("p-"):
            info = entry.stat()
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0
    bravo.bodies.remove([name])
    assert not any(bravo.bodies.folder.iterdir())


async def test_an_encrypted_body_is_copied(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    with trio.fail_after(30):
        bravo, name = await _cross(tmp_path, data, encrypt="true")
    assert bravo.bodies.pieces.of(name) == []
    assert bravo.bodies.path(name).read_bytes() == data


async def test_a_body_that_compresses_is_copied(tmp_path: Path) -> None:
    data = b"mesh " * (MiB // 2)
    with trio.fail_after(30):
        bravo, name = await _cross(tmp_path, data)
    assert bravo.bodies.pieces.of(name) == []
    assert bravo.bodies.path(name).read_bytes() == data


def test_a_piece_changed_after_it_came_is_an_error_never_data(tmp_path: Path) -> None:
    """Whoever had the file open for writing before it was checked could change it
    later: each read checks the piece's frame against its signed digest again."""
    bodies = Bodies(tmp_path / "bodies")
    data = os.urandom(LINK_FROM)
    fd = carrier(tmp_path, data)
    writer = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)  # held from before
    assert bodies.pieces.link(fd, BODY, piece(data))
    assert bodies.ranges(BODY).read(0, LINK_FROM) == data
    os.pwrite(writer, b"E" * 1000, 16 + LINK_FROM - 1000)
    with bodies.ranges(BODY) as ranges, pytest.raises(OSError, match="changed"):
        ranges.read(0, 10)  # before the change, too: the frame is checked whole
    os.pwrite(writer, data[-1000:], 16 + LINK_FROM - 1000)  # as it was: readable again
    assert bodies.ranges(BODY).read(LINK_FROM - 10, 10) == data[-10:]
    os.ftruncate(writer, 16 + LINK_FROM - 1)
    with bodies.ranges(BODY) as ranges, pytest.raises(OSError):
        ranges.read(0, 10)


async def test_a_file_mostly_of_other_messages_is_copied_not_kept_whole(
    tmp_path: Path,
) -> None:
    """A piece keeps its whole pipe file on disk: a file whose linked fragments would be
    a small share of it is copied, so a small body kept long holds no big file."""
    path = streaming_roster(tmp_path)
    text = path.read_text().replace("fragment_size: 1MiB", "fragment_size: 8MiB")
    path.write_text(text)
    transfer, data = uuid.uuid4().hex, os.urandom(LINK_FROM)
    name = incoming_name("alpha", transfer)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha, bravo = peers["alpha"], peers["bravo"]
            with alpha.store.database.transaction():  # queued together: one file
                fragment = Fragment(uuid.uuid4().hex, transfer, 0, 0, 8 * MiB, data)
                await alpha.links.sending.send("bravo", fragment)
                for _ in range(4):
                    other = Datagram(uuid.uuid4().hex, os.urandom(LINK_FROM))
                    await alpha.links.sending.send("bravo", other)
            await until(
                bravo.links.receiving,
                lambda: bravo.links.receiving.body_here("alpha", transfer, LINK_FROM),
            )
            nursery.cancel_scope.cancel()
    assert bravo.bodies.pieces.of(name) == []
    assert bravo.bodies.path(name).read_bytes() == data


async def test_a_file_with_a_name_elsewhere_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link made before the file was moved out of the inbox would let whoever made
    it reach the file later: such a file is copied, not linked."""
    adopt = Pieces.adopt
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def linked_meanwhile(self: Pieces, path: Path, fd: int) -> Path | None:
        os.link(path, elsewhere / uuid.uuid4().hex)
        return adopt(self, path, fd)

    monkeypatch.setattr(Pieces, "adopt", linked_meanwhile)
    data = os.urandom(3 * MiB)
    with trio.fail_after(30):
        bravo, name = await _cross(tmp_path, data)
    assert list(elsewhere.iterdir()), "no file was adopted"
    assert bravo.bodies.pieces.of(name) == []
    assert bravo.bodies.path(name).read_bytes() == data


async def test_a_file_that_fails_midway_goes_back_to_the_inbox_and_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moved out of the inbox before it is read, a file whose opening fails (the disk,
    say) is put back, read again later, and its body comes whole."""
    link, failed = Pieces.link, []

    def failing_once(self: Pieces, fd: int, body: str, found: Piece) -> bool:
        if not failed:
            failed.append(body)
            raise OSError(28, "No space left on device")
        return link(self, fd, body, found)

    monkeypatch.setattr(Pieces, "link", failing_once)
    data = os.urandom(3 * MiB)
    with trio.fail_after(30):
        bravo, name = await _cross(tmp_path, data)
    assert failed and bravo.bodies.pieces.of(name)
    assert resent[-1] == 0, "not put back: it came again only when alpha sent it again"
    assert b"".join([chunk async for chunk in bravo.bodies.chunks(name)]) == data
