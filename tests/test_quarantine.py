"""Refused files, tried as an attacker with write access to the pipe would: links to
secrets, FIFOs, devices, folders and big files under message names. Nothing is followed,
nothing blocks, nothing big is copied, and the quarantine stays within its limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from mesh.errors import FormatError
from mesh.pipe import folder as pipe
from mesh.pipe import inbox, quarantine
from mesh.pipe.quarantine import COPY_MOST, Quarantine
from mesh.wire.names import FileKind, FileName

SECRET = b"-----BEGIN PRIVATE KEY----- the peer's own"


def name(n: int = 1) -> str:
    """The name of a message file from bravo to alpha."""
    return str(FileName(n, "bravo", "alpha", f"{n:08x}", FileKind.MESSAGES))


def kept(quarantine: Path) -> dict[str, bytes | str]:
    """What the quarantine holds: a file's bytes, or what a non-file is (never opened)."""
    found: dict[str, bytes | str] = {}
    for entry in quarantine.iterdir():
        mode = entry.lstat().st_mode
        found[entry.name] = entry.read_bytes() if stat.S_ISREG(mode) else stat.filemode(mode)
    return found


def note(quarantine: Path, file: str) -> str:
    return (quarantine / (file + ".reason")).read_text()


def test_a_refused_file_moves_with_its_reason(tmp_path: Path) -> None:
    src = tmp_path / name()
    src.write_bytes(b"forged")
    q = Quarantine(tmp_path / "q")
    assert q.put(src, "bad-signature", "signature does not verify as bravo's") is not None
    assert not src.exists() and (tmp_path / "q" / src.name).read_bytes() == b"forged"
    assert "reason: bad-signature" in note(tmp_path / "q", src.name)
    assert "kept beside this note" in note(tmp_path / "q", src.name)
    assert q.count() == 1
    assert q.put(src, "again", "already gone") is None


def test_links_fifos_and_devices_move_as_names_never_opened(tmp_path: Path) -> None:
    secret = tmp_path / "alpha.key"
    secret.write_bytes(SECRET)
    inbox_dir, q = tmp_path / "pipe", Quarantine(tmp_path / "q")
    inbox_dir.mkdir()
    link, fifo = inbox_dir / name(1), inbox_dir / name(2)
    link.symlink_to(secret)
    os.mkfifo(fifo)
    for path in (link, fifo):
        q.put(path, "not-a-file", "test")  # blocks forever if it opens the FIFO
        assert not os.path.lexists(path)
    held = kept(tmp_path / "q")
    assert held[link.name].startswith("l") and held[fifo.name].startswith("p")
    assert not any(isinstance(v, bytes) and SECRET in v for v in held.values())
    assert secret.read_bytes() == SECRET  # the target is untouched


def test_the_limit_drops_the_oldest_and_never_keeps_a_bigger_file(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "pipe"
    inbox_dir.mkdir()
    q = Quarantine(tmp_path / "q", limit=2000)
    for n in range(1, 6):
        (inbox_dir / name(n)).write_bytes(bytes(400))
        q.put(inbox_dir / name(n), "bad", "test")
    assert q.size() <= 2000 and q.size() == sum(len(b) for b in _bytes(tmp_path / "q"))
    assert name(5) in kept(tmp_path / "q") and name(1) not in kept(tmp_path / "q")
    big = inbox_dir / name(9)
    with open(big, "wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MiB that cost nothing to make
    q.put(big, "bad", "test")
    assert not big.exists() and name(9) not in kept(tmp_path / "q")
    assert "bigger than quarantine_limit" in note(tmp_path / "q", name(9))
    assert q.size() <= 2000
    assert Quarantine(tmp_path / "q").count() == q.count()  # counted in memory as listed


def _bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.iterdir()]


def test_a_folder_under_a_message_name_is_recorded_once(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "pipe"
    (inbox_dir / name() / "inside").mkdir(parents=True)
    (inbox_dir / name() / "inside" / "big").write_bytes(bytes(5000))
    q = Quarantine(tmp_path / "q", limit=1000)
    assert q.put(inbox_dir / name(), "not-a-file", "a folder") is not None
    assert q.put(inbox_dir / name(), "not-a-file", "a folder") is None  # not again
    assert (inbox_dir / name() / "inside" / "big").exists()  # left, not moved in
    assert "a folder that holds something is left where it is" in note(tmp_path / "q", name())
    assert Quarantine(tmp_path / "q").left() == frozenset()  # a new start notes it again
    assert q.left() == {name()}


def test_folders_recorded_are_remembered_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who makes folder after folder under message names cannot grow the peer's
    memory, nor its log: past the bound, folders are left unrecorded (they were
    forgotten oldest first before, and each then noted again at every listing). An empty
    folder is removed, so it needs no remembering."""
    monkeypatch.setattr(quarantine, "FOLDERS_KEPT", 3)
    q = Quarantine(tmp_path / "q")
    folders = [tmp_path / "pipe" / f"alpha.bravo.{n:016x}-0000000{n}.msg.mesh" for n in range(6)]
    for folder in folders:
        (folder / "inside").mkdir(parents=True)
    assert [q.put(f, "not-a-file", "a folder") is not None for f in folders[:5]] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert q.put(folders[0], "not-a-file", "a folder") is None  # recorded already
    assert q.left() == {f.name for f in folders[:3]} and q.count() == 3
    (folders[5] / "inside").rmdir()
    monkeypatch.setattr(quarantine, "FOLDERS_KEPT", 4)
    assert q.put(folders[5], "not-a-file", "a folder") is not None
    assert not folders[5].exists() and "an empty folder, removed" in note(
        tmp_path / "q", folders[5].name
    )
    assert folders[5].name not in q.left()


def test_the_count_held_is_bounded_as_the_bytes_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file and note held costs memory, whatever its size: past `ENTRIES_MOST`, the
    oldest go, as past the limit in bytes; the count and size kept in memory stay those
    of what is there."""
    monkeypatch.setattr(quarantine, "ENTRIES_MOST", 10)
    inbox_dir = tmp_path / "pipe"
    inbox_dir.mkdir()
    q = Quarantine(tmp_path / "q")
    for n in range(12):
        junk = inbox_dir / f"alpha.bravo.{n:016x}-00000000.msg.mesh"
        junk.write_bytes(b"junk")
        q.put(junk, "bad-magic", "not a mesh file")
    held = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert len(held) == 10 and held[0].startswith("alpha.bravo.0000000000000007")
    assert q.count() == 5 == Quarantine(tmp_path / "q").count()
    assert q.size() == sum(p.stat().st_size for p in (tmp_path / "q").iterdir())


def other_filesystem(tmp_path: Path) -> Path:
    """A folder on another filesystem than `tmp_path` (/dev/shm), or skip."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem here (/dev/shm) to put the pipe on")
    folder = shm / f"mesh-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    return folder


def test_across_filesystems_only_small_regular_files_are_copied(tmp_path: Path) -> None:
    pipe_dir = other_filesystem(tmp_path)
    try:
        secret = tmp_path / "alpha.key"
        secret.write_bytes(SECRET)
        small, big, link = pipe_dir / name(1), pipe_dir / name(2), pipe_dir / name(3)
        small.write_bytes(b"junk")
        with open(big, "wb") as f:
            f.truncate(COPY_MOST + 1)
        link.symlink_to(secret)
        q = Quarantine(tmp_path / "q")
        for path in (small, big, link):
            q.put(path, "bad", "test")
            assert not os.path.lexists(path)
        held = kept(tmp_path / "q")
        assert held[small.name] == b"junk"
        assert big.name not in held and link.name not in held
        assert "not kept (on another filesystem and over" in note(tmp_path / "q", big.name)
        assert "a symbolic link is never opened" in note(tmp_path / "q", link.name)
        assert not any(isinstance(v, bytes) and SECRET in v for v in held.values())
    finally:
        for leftover in pipe_dir.iterdir():
            leftover.unlink()
        pipe_dir.rmdir()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])  # a folder: `test_inbox`
async def test_the_inbox_refuses_what_is_no_file_without_blocking(
    tmp_path: Path, kind: str
) -> None:
    """Checked on the event loop as small files are: a FIFO must not block it."""
    path = tmp_path / name()
    if kind == "symlink":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # as /dev/zero
        except PermissionError:
            pytest.skip("making a device node needs root")
    listed = pipe.addressed_to(tmp_path, "alpha")
    assert [p for _, p in listed] == [path]
    with trio.fail_after(5):
        checked = await trio.to_thread.run_sync(
            inbox.check_files, listed, None, None, {}, abandon_on_cancel=True
        )
    assert checked[0].error is not None and checked[0].error.reason == "not-a-file"


def test_a_file_swapped_for_a_fifo_after_its_check_is_refused(tmp_path: Path) -> None:
    path = tmp_path / name()
    os.mkfifo(path)
    values = list(os.lstat(path))
    values[0] = stat.S_IFREG | 0o600  # what the check saw, before the swap
    with pytest.raises(FormatError) as caught:  # this test hangs if it opens it blocking
        inbox.open_regular(path, os.stat_result(values))
    assert caught.value.reason == "not-a-file"


def test_a_file_swapped_for_a_hard_link_after_its_check_is_refused_unread(
    tmp_path: Path,
) -> None:
    """The check saw a file of one name; a link to a secret is renamed over it before it
    is opened: refused on the open descriptor, never read, and never copied into a
    quarantine on another filesystem."""
    secret, path = tmp_path / "alpha.key", tmp_path / name()
    secret.write_bytes(SECRET)
    path.write_bytes(b"MESH junk")
    seen = os.lstat(path)
    os.link(secret, tmp_path / "swap")
    os.rename(tmp_path / "swap", path)
    with pytest.raises(FormatError) as caught:
        inbox.open_regular(path, seen)
    assert caught.value.reason == "not-a-file" and "hard link" in caught.value.detail
    assert not quarantine._copy_small(path, seen, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_a_hard_link_to_a_secret_is_refused_and_never_kept(tmp_path: Path) -> None:
    """A hard link is the secret itself under another name: renamed into quarantine it
    would be a copy of the key there. It is refused unread, and only noted."""
    secret = tmp_path / "alpha.key"
    secret.write_bytes(SECRET)
    inbox_dir = tmp_path / "pipe"
    inbox_dir.mkdir()
    linked = inbox_dir / name()
    os.link(secret, linked)
    [checked] = inbox.check_files(
        [(FileName(1, "bravo", "alpha", "00000001", FileKind.MESSAGES), linked)], None, None, {}
    )  # type: ignore[arg-type]
    assert checked.error is not None and "hard link" in checked.error.detail
    q = Quarantine(tmp_path / "q")
    q.put(linked, checked.error.reason, checked.error.detail)
    assert not linked.exists() and secret.read_bytes() == SECRET
    assert name() not in kept(tmp_path / "q")
    assert "a hard link, perhaps to a secret" in note(tmp_path / "q", name())
