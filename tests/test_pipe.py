"""The folder pipe on real folders: atomic drops, scans, watching, quarantine, the lock."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
import trio.testing

from mesh.errors import PeerLockedError
from mesh.pipe import folder as pipe
from mesh.pipe.watch import watch
from mesh.state.database import Database
from mesh.state.lock import StateLock
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity, Keyring
from mesh.wire.names import FileKind, FileName


def name(sender: str = "alpha", recipient: str = "bravo", stamp: int = 1) -> FileName:
    return FileName(stamp, sender, recipient, os.urandom(4).hex(), FileKind.MESSAGES)


def test_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    n = name()
    path = pipe.write_atomically(tmp_path, n, b"payload")
    assert path == tmp_path / str(n) and path.read_bytes() == b"payload"
    assert [p.name for p in tmp_path.iterdir()] == [str(n)]


def test_atomic_write_with_a_writer_leaves_only_the_final_file(tmp_path: Path) -> None:
    def writer(f: BinaryIO) -> None:
        f.write(b"????payload")
        f.seek(0)  # a seekable file: come back to fill in a header
        f.write(b"head")

    n = name()
    path = pipe.write_atomically_with(tmp_path, n, writer)
    assert path == tmp_path / str(n) and path.read_bytes() == b"headpayload"
    assert [p.name for p in tmp_path.iterdir()] == [str(n)]


def test_a_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    def writer(f: BinaryIO) -> None:
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        pipe.write_atomically_with(tmp_path, name(), writer)
    with pytest.raises(TypeError):
        pipe.write_atomically(tmp_path, name(), "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_mesh_file_streams_into_the_pipe(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    frames = [os.urandom(100_000), b"y" * 50_000, b""]
    args = {
        "recipient": "bravo",
        "epoch": "0123456789abcdef",
        "created": 1.5,
        "nonce": b"\x02" * wire.FILE_NONCE_SIZE,
        "seqs": [4, 5, 6],
    }
    path = pipe.write_atomically_with(
        tmp_path,
        name(),
        lambda f: wire.write_file(f, identities["alpha"], frames=iter(frames), count=3, **args),
    )
    assert path.read_bytes() == wire.encode_file(identities["alpha"], frames=frames, **args)
    with open(path, "rb") as f:
        scanned = wire.scan_file(f, bravo_keys)
        assert scanned.complete and [i.seq for i in scanned.header.frames] == [4, 5, 6]
        assert [wire.read_frame(f, scanned.parsed, i, bravo_keys) for i in range(3)] == frames


def test_scan_takes_only_finished_files_addressed_to_me(tmp_path: Path) -> None:
    mine_late, mine_early = name(stamp=20), name(stamp=10)
    for n in (mine_late, mine_early, name("alpha", "carol"), name("bravo", "alpha")):
        pipe.write_atomically(tmp_path, n, b"x")
    (tmp_path / name().temporary).write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not mesh's")
    folder = name(stamp=30)
    (tmp_path / f"{folder}").mkdir()  # listed apart, so that it is refused (never opened)
    found = pipe.addressed_to(tmp_path, "bravo")
    assert [n for n, _ in found] == [mine_early, mine_late]
    files, folders = pipe.list_addressed(tmp_path, "bravo", skipped={str(mine_late)})
    assert [n for n, _ in files] == [mine_early] and [n for n, _ in folders] == [folder]
    assert pipe.addressed_to(tmp_path / "gone", "bravo") == []


def test_stale_temporaries_of_mine_are_removed_and_others_kept(tmp_path: Path) -> None:
    (tmp_path / name("alpha").temporary).write_bytes(b"half")
    others = tmp_path / name("carol").temporary
    others.write_bytes(b"half")
    assert pipe.remove_stale_temporaries(tmp_path, "alpha") == 1
    assert [p.name for p in tmp_path.iterdir()] == [others.name]


@pytest.mark.parametrize("mode", ["notify", "poll", "auto"])
async def test_watch_wakes_when_a_file_arrives(tmp_path: Path, mode: pipe.WatchMode) -> None:
    send, recv = trio.open_memory_channel[None](1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, tmp_path, "bravo", mode, 0.05, send)
            while True:  # in notify mode the watcher may start after our first write
                pipe.write_atomically(tmp_path, name(), b"x")
                with trio.move_on_after(1):
                    await recv.receive()
                    break
            nursery.cancel_scope.cancel()


async def test_cancelling_a_notify_watch_is_prompt(tmp_path: Path) -> None:
    send, _ = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, tmp_path, "bravo", "notify", 60.0, send)
        await trio.testing.wait_all_tasks_blocked()
        started = time.monotonic()
        nursery.cancel_scope.cancel()
    assert time.monotonic() - started < 1.0  # the watcher thread would hold it for 5s


async def test_a_file_copied_in_wakes_once_it_is_closed_not_at_each_write(
    tmp_path: Path,
) -> None:
    async with watching(tmp_path) as recv:
        with trio.fail_after(5):
            with (tmp_path / str(name())).open("wb") as copying:  # as a mirror writes one
                await recv.receive()  # created: looked at (it is cut short for now)
                for _ in range(50):
                    copying.write(b"x" * 4096)
                    copying.flush()
                with trio.move_on_after(0.2):  # (watchfiles, before, woke at these)
                    await recv.receive()
                    pytest.fail("woken while the file was still being written")
            await recv.receive()  # closed: looked at again at once


async def test_a_shared_folders_files_to_others_wake_nobody(tmp_path: Path) -> None:
    """In a folder two peers share, bravo's own files (to alpha) do not wake bravo's
    reader (it listed the folder for nothing at each): only files to bravo do."""
    async with watching(tmp_path) as recv:
        with trio.fail_after(5):
            pipe.write_atomically(tmp_path, name("bravo", "alpha"), b"x")
            with trio.move_on_after(0.2):
                await recv.receive()
                pytest.fail("woken by a file to another peer")
            pipe.write_atomically(tmp_path, name("alpha", "bravo"), b"x")
            await recv.receive()


def test_a_second_lock_on_the_same_state_is_refused(tmp_path: Path) -> None:
    first = StateLock(tmp_path, "alpha")
    first.acquire()
    with pytest.raises(PeerLockedError, match=rf"already running .*pid {os.getpid()}"):
        StateLock(tmp_path, "alpha").acquire()
    first.release()
    again = StateLock(tmp_path, "alpha")
    again.acquire()
    again.release()


def test_store_keeps_its_epoch_across_opens(tmp_path: Path) -> None:
    store = Database(tmp_path / "s")
    epoch, created = store.epoch, store.created
    store.close()
    reopened = Database(tmp_path / "s")
    assert created and not reopened.created and reopened.epoch == epoch
    reopened.close()


@contextlib.asynccontextmanager
async def watching(folder: Path) -> AsyncIterator[trio.MemoryReceiveChannel[None]]:
    """bravo's inotify watch of `folder` (safety tick a minute away): watching already,
    no wake-up pending. Its wake-ups come on what it gives."""
    send, recv = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, folder, "bravo", "notify", 60.0, send)
        await wait_for_wake(folder, recv)
        drain(recv)
        yield recv
        nursery.cancel_scope.cancel()


def drain(recv: trio.MemoryReceiveChannel[None]) -> None:
    """Drop the wake-ups already posted."""
    while recv.statistics().current_buffer_used:
        recv.receive_nowait()


async def wait_for_wake(folder: Path, recv: trio.MemoryReceiveChannel[None]) -> None:
    """Drop files until one wake-up arrives (the watcher may not be watching yet)."""
    with trio.fail_after(10):
        while True:
            pipe.write_atomically(folder, name(), b"x")
            with trio.move_on_after(0.5):
                await recv.receive()
                return


async def test_notify_watch_survives_its_folder_vanishing(tmp_path: Path) -> None:
    """An unmounted share: the folder is missing at start, appears, vanishes, comes back.
    The safety tick is 20s away, so only a re-established inotify watch wakes us in time."""
    folder = tmp_path / "inbox"
    send, recv = trio.open_memory_channel[None](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, folder, "bravo", "notify", 2.0, send)
        await trio.testing.wait_all_tasks_blocked()
        folder.mkdir()
        await wait_for_wake(folder, recv)
        shutil.rmtree(folder)
        folder.mkdir()
        drain(recv)  # wake-ups of the swap itself
        await wait_for_wake(folder, recv)
        nursery.cancel_scope.cancel()


MOUNTS = """\
/dev/vda / ext4 rw 0 0
server:/export /mnt/share nfs4 rw 0 0
//nas/pipe /mnt/my\\040pipe cifs rw 0 0
tmpfs /mnt/share/tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("folder", "kind"),
    [
        ("/work/x", "ext4"),
        ("/mnt/share/in", "nfs4"),
        ("/mnt/shared", "ext4"),
        ("/mnt/my pipe/in", "cifs"),
        ("/mnt/share/tmp/in", "tmpfs"),
    ],
)
def test_filesystem_type_takes_the_deepest_mount(folder: str, kind: str) -> None:
    assert pipe.filesystem_type(Path(folder), MOUNTS) == kind


def test_only_known_local_filesystems_count_as_local() -> None:
    assert pipe.is_local(Path("/work/x"), MOUNTS)
    assert pipe.is_local(Path("/mnt/share/tmp/in"), MOUNTS)
    assert not pipe.is_local(Path("/mnt/share/in"), MOUNTS)  # nfs4
    assert not pipe.is_local(Path("/mnt/my pipe/in"), MOUNTS)  # cifs
    assert not pipe.is_local(Path("/mnt/fuse"), MOUNTS + "me@host: /mnt/fuse fuse.foo rw 0 0\n")
    assert not pipe.is_local(Path("/anywhere"), "")  # unknown


def test_auto_watch_polls_network_shares_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pipe.resolve_watch_mode("poll", tmp_path) == "poll"
    assert pipe.resolve_watch_mode("notify", tmp_path) == "notify"
    monkeypatch.setattr(pipe, "filesystem_type", lambda folder: "nfs4")
    assert pipe.resolve_watch_mode("auto", tmp_path) == "poll"
    monkeypatch.setattr(pipe, "filesystem_type", lambda folder: "ext4")
    assert pipe.resolve_watch_mode("auto", tmp_path) == "notify"


def test_a_big_write_is_synced_as_it_goes_and_comes_out_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(pipe, "SYNC_EVERY", 1000)
    monkeypatch.setattr(pipe.os, "fdatasync", synced.append)
    data = os.urandom(4500)

    def writer(f: BinaryIO) -> None:
        f.write(b"????")
        f.write(data)  # split into pieces of SYNC_EVERY
        f.seek(0)
        f.write(b"head")

    path = pipe.write_atomically_with(tmp_path, name(), writer)
    assert path.read_bytes() == b"head" + data
    assert len(synced) == 4  # 4504 bytes: a sync after each full 1000
