"""Checking inbox files in a batch: what each file turns out to be, read once."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from mesh.pipe import inbox, intake
from mesh.pipe import quarantine as quarantine_module
from mesh.pipe.quarantine import Quarantine
from mesh.proto.inbound import Verdict
from mesh.proto.link import Arrival
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity, Keyring
from mesh.wire.messages import Datagram, Envelope, pack
from mesh.wire.names import FileKind, FileName

LIMITS = wire.Limits()
NAME = FileName(1_700_000_000_000_000_000, "alpha", "bravo", "0a0b0c0d", FileKind.MESSAGES)


def mesh_file(folder: Path, identities: dict[str, Identity], data: bytes, n: int = 1) -> Path:
    """A file alpha signed for bravo holding one datagram of `data`."""
    frame = pack(Envelope(1, Datagram("ab" * 16, data)))
    content = wire.encode_file(
        identities["alpha"],
        recipient="bravo",
        epoch="0123456789abcdef",
        created=1_700_000_000.0,
        nonce=os.urandom(wire.FILE_NONCE_SIZE),
        frames=[frame],
        seqs=[1],
    )
    path = folder / str(FileName(NAME.stamp + n, "alpha", "bravo", "0a0b0c0d", FileKind.MESSAGES))
    path.write_bytes(content)
    return path


def check(
    paths: list[Path], keys: Keyring, settling: dict[str, Hashable] | None = None
) -> list[inbox.Checked]:
    """`check_files` of `paths` (the names it is given are only passed through)."""
    return inbox.check_files([(NAME, path) for path in paths], keys, LIMITS, settling or {})


def test_a_small_file_is_read_whole_and_a_big_one_is_not(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    small = mesh_file(tmp_path, identities, b"x" * 100, 1)
    big = mesh_file(tmp_path, identities, os.urandom(inbox.SMALL_FILE), 2)
    first, second = check([small, big], bravo_keys)
    assert first.scanned is not None and first.scanned.complete
    assert first.content == small.read_bytes()
    assert first.mark == (small.stat().st_size, small.stat().st_mtime_ns)
    assert second.scanned is not None and second.scanned.complete
    assert second.content is None  # its frames are read from the disk when opened


def test_each_file_has_its_own_outcome(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    good = mesh_file(tmp_path, identities, b"fine", 1)
    cut = mesh_file(tmp_path, identities, b"cut short", 2)
    cut.write_bytes(cut.read_bytes()[:-3])
    gone = tmp_path / "gone.mesh"
    unreadable = mesh_file(tmp_path, identities, b"", 3)
    unreadable.unlink()
    unreadable.mkdir()  # no file: refused, never opened
    results = check([cut, gone, unreadable, good], bravo_keys)
    assert [r.path for r in results] == [cut, gone, unreadable, good]
    assert results[0].scanned is not None and results[0].scanned.cut_short
    assert results[1].mark is None and results[1].scanned is None
    assert results[2].error is not None and results[2].error.reason == "not-a-file"
    assert results[3].scanned is not None and results[3].error is results[3].failure is None


def test_a_settling_file_is_not_read_again_until_it_changes(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    path = mesh_file(tmp_path, identities, b"growing", 1)
    path.write_bytes(path.read_bytes()[:-5])
    info = path.stat()
    mark = (info.st_size, info.st_mtime_ns)
    (waiting,) = check([path], bravo_keys, {path.name: mark})
    assert waiting.waiting and waiting.error is None and waiting.scanned is None
    with path.open("ab") as out:
        out.write(b"more")
    (changed,) = check([path], bravo_keys, {path.name: mark})
    assert not changed.waiting and changed.mark != mark
    assert changed.scanned is not None or changed.error is not None


def test_remove_all_goes_on_past_files_gone_or_not_removable(tmp_path: Path) -> None:
    kept, taken, folder = tmp_path / "kept", tmp_path / "taken", tmp_path / "a-folder"
    kept.write_bytes(b"")
    taken.write_bytes(b"")
    folder.mkdir()
    failed = inbox.remove_all([tmp_path / "never-there", folder, taken])
    assert kept.exists() and not taken.exists()
    assert [path for path, _ in failed] == [folder]


@pytest.mark.parametrize("size", [inbox.SMALL_FILE - 1000, inbox.SMALL_FILE + 1000])
def test_content_is_only_kept_at_or_under_the_bound(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring, size: int
) -> None:
    path = mesh_file(tmp_path, identities, os.urandom(size - 400), 1)
    (checked,) = check([path], bravo_keys)
    assert (checked.content is not None) == (path.stat().st_size <= inbox.SMALL_FILE)


def test_a_listing_splits_off_foreign_files_and_checks_the_first_batch(
    tmp_path: Path,
    identities: dict[str, Identity],
    bravo_keys: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbox, "BATCH", 2)
    ours = [mesh_file(tmp_path, identities, b"m%d" % n, n) for n in (3, 1, 2)]
    stranger = tmp_path / str(FileName(NAME.stamp, "carol", "bravo", "0a0b0c0d", NAME.kind))
    stranger.write_bytes(b"never read")
    (tmp_path / str(FileName(NAME.stamp, "alpha", "carol", "0a0b0c0d", NAME.kind))).touch()
    listing = inbox.list_and_check(tmp_path, "bravo", {"alpha"}, bravo_keys, LIMITS, {})
    assert [path for _, path in listing.foreign] == [stranger]
    oldest_first = sorted(ours)
    assert [checked.path for checked in listing.checked] == oldest_first[:2]
    assert all(checked.scanned is not None for checked in listing.checked)
    assert [path for _, path in listing.unchecked] == oldest_first[2:]


def test_a_listing_of_small_files_only_stops_at_the_first_big_one(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    small = mesh_file(tmp_path, identities, b"s", 1)
    big = mesh_file(tmp_path, identities, os.urandom(inbox.SMALL_FILE), 2)
    after = mesh_file(tmp_path, identities, b"a", 3)
    listing = inbox.list_and_check(
        tmp_path, "bravo", {"alpha"}, bravo_keys, LIMITS, {}, small_only=True
    )
    assert [checked.path for checked in listing.checked] == [small]
    assert [path for _, path in listing.unchecked] == [big, after]  # for a thread


def test_a_listing_leaves_out_files_taken_and_not_yet_removed(
    tmp_path: Path, identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    taken, fresh = (mesh_file(tmp_path, identities, b"m%d" % n, n) for n in (1, 2))
    listing = inbox.list_and_check(
        tmp_path, "bravo", {"alpha"}, bravo_keys, LIMITS, {}, skipped={taken.name}
    )
    assert [checked.path for checked in listing.checked] == [fresh]
    assert not listing.unchecked and not listing.foreign


async def test_a_taken_file_that_cannot_be_removed_is_not_taken_again(
    tmp_path: Path,
    identities: dict[str, Identity],
    bravo_keys: Keyring,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its removal is tried again later, with one line: before, the file was read and
    taken again at every listing (every wake), with a line each time."""
    real, tries, removed = inbox.remove_all, [], trio.Event()

    def denied_twice(paths: list[Path]) -> list[tuple[Path, OSError]]:
        tries.append(len(paths))
        if len(tries) <= 2:
            return [(path, PermissionError(13, "Permission denied")) for path in paths]
        trio.from_thread.run_sync(removed.set)
        return real(paths)

    monkeypatch.setattr(inbox, "remove_all", denied_twice)
    monkeypatch.setattr(intake, "REMOVE_RETRY", 0.2)
    path = mesh_file(tmp_path, identities, b"once", 1)
    taken = await _run_intake(tmp_path, bravo_keys, Quarantine(tmp_path / "q"), removed)
    assert taken == [path.name] and not path.exists()
    assert tries == [1, 1, 1]
    assert sum("cannot remove" in record.getMessage() for record in caplog.records) == 1


async def test_folders_under_message_names_are_recorded_once_and_then_passed_over(
    tmp_path: Path,
    identities: dict[str, Identity],
    bravo_keys: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each was checked and handed to the quarantine in a thread of its own at every
    listing (3,000 of them made every request take a second; past the 10,000 then
    remembered, each was noted again at every listing). Now an empty one is removed, one
    that holds something is left and no longer listed, and a file beside them is taken."""
    names = _folders(tmp_path, 4)
    path = mesh_file(tmp_path, identities, b"beside them", 9)
    quarantine = Quarantine(tmp_path / "q")
    folders, puts, taken = await _listed(tmp_path, bravo_keys, quarantine, monkeypatch)
    assert sorted(puts) == sorted(names) and taken == [path.name]
    assert [(tmp_path / name).exists() for name in names] == [False, True, False, True]
    assert folders[0] == 4 and max(folders[1:]) == 0  # passed over from then on
    assert quarantine.count() == 4


async def test_folders_past_those_recorded_are_passed_over_with_a_line_a_minute(
    tmp_path: Path,
    bravo_keys: Keyring,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past `FOLDERS_KEPT`, a folder is neither remembered nor handed to the quarantine
    at each listing (a thread round trip each: 3,000 made every request take a second)."""
    monkeypatch.setattr(quarantine_module, "FOLDERS_KEPT", 2)
    names = _folders(tmp_path, 8)
    for empty in names[::2]:
        (tmp_path / empty).rmdir()
    names = names[1::2]
    quarantine = Quarantine(tmp_path / "q")
    folders, puts, _ = await _listed(tmp_path, bravo_keys, quarantine, monkeypatch)
    assert puts == names and set(folders[1:]) == {2}  # each handed over once, in all
    assert quarantine.left() == set(names[:2]) and quarantine.count() == 2
    said = [r.getMessage() for r in caplog.records if "unrecorded" in r.getMessage()]
    assert len(said) == 1 and "2 folders under message names" in said[0]
    quarantined = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert quarantined == [f"bravo: quarantined {names[0]} and 1 more folders: not-a-file "
                           "(a folder, not a file: never opened)"]  # fmt: skip


async def test_a_flood_of_folders_is_recorded_a_batch_a_listing_and_once_across_starts(
    tmp_path: Path,
    identities: dict[str, Identity],
    bravo_keys: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Files are not held up behind folders: a listing records at most `FOLDERS_AT_ONCE`
    of them, then takes its files, then lists again at once. After a restart, folders
    noted before are not noted again (100,000 of them took 70 s and 100,000 lines)."""
    monkeypatch.setattr(intake, "FOLDERS_AT_ONCE", 3)
    names = _folders(tmp_path, 14)[1::2]  # 7 that hold something
    path = mesh_file(tmp_path, identities, b"not held up", 99)
    folders, puts, taken = await _listed(
        tmp_path, bravo_keys, Quarantine(tmp_path / "q"), monkeypatch
    )
    assert folders[:6] == [14, 11, 8, 5, 2, 0] and taken == [path.name]
    assert sorted(puts) == sorted(_folders_made(tmp_path)) and len(puts) == 14
    again = Quarantine(tmp_path / "q")  # a new start, the folders still there
    _, puts, _ = await _listed(tmp_path, bravo_keys, again, monkeypatch)
    assert sorted(puts) == names and again.count() == 14  # not noted twice
    assert again.left() == set(names)


def _folders_made(inbox_dir: Path) -> list[str]:
    """The names `_folders` made in `inbox_dir` (the empty ones were removed since)."""
    return [
        str(FileName(NAME.stamp + n, "alpha", "bravo", "0a0b0c0d", FileKind.MESSAGES))
        for n in range(14)
    ]


def _folders(inbox_dir: Path, count: int) -> list[str]:
    """`count` folders under message names in `inbox_dir`, every other one empty."""
    names = [
        str(FileName(NAME.stamp + n, "alpha", "bravo", "0a0b0c0d", FileKind.MESSAGES))
        for n in range(count)
    ]
    for n, name in enumerate(names):
        (inbox_dir / name).mkdir()
        if n % 2:
            (inbox_dir / name / "inside").write_bytes(b"x")
    return names


async def _listed(
    inbox_dir: Path, keys: Keyring, quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], list[str], list[str]]:
    """Run bravo's intake on `inbox_dir` for 20 listings: the folders each listed, the
    names handed to `quarantine`, the files taken."""
    real_list, folders, listed_enough = inbox.list_and_check, [], trio.Event()

    def counted(*args: Any, **kwargs: Any) -> inbox.Listing:
        listing = real_list(*args, **kwargs)
        folders.append(len(listing.folders))
        if len(folders) == 20:  # listed on the loop, or in a thread
            try:
                trio.lowlevel.current_task()
            except RuntimeError:
                trio.from_thread.run_sync(listed_enough.set)
            else:
                listed_enough.set()
        return listing

    monkeypatch.setattr(inbox, "list_and_check", counted)
    puts: list[str] = []
    real_put = quarantine.put
    monkeypatch.setattr(
        quarantine, "put", lambda *args: puts.append(args[0].name) or real_put(*args)
    )
    taken = await _run_intake(inbox_dir, keys, quarantine, listed_enough)
    return folders, puts, taken


async def _run_intake(
    inbox_dir: Path, keys: Keyring, quarantine: Quarantine, until: trio.Event
) -> list[str]:
    """Run bravo's intake on `inbox_dir` (polled every 10 ms) until `until` is set; the
    names of the files it took."""
    taken: list[str] = []

    async def arrived(path: Path, scanned: wire.ScannedFile, content: bytes | None) -> Arrival:
        taken.append(path.name)
        return Arrival("alpha", Verdict.CURRENT, (), (), (), 1)

    settings: Any = SimpleNamespace(
        name="bravo", settle=0.2, inbox=inbox_dir, watch="poll", poll_interval=0.01
    )
    settings.talks_to = ("alpha",)
    reader = intake.Intake(settings, keys, LIMITS, quarantine, arrived, lambda *_: None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run)
            await until.wait()
            nursery.cancel_scope.cancel()
    return taken


def test_a_refused_file_holds_none_of_what_was_read(tmp_path: Path, bravo_keys: Keyring) -> None:
    """Its refusal is kept without the traceback, whose frames held the bytes read (and
    in a cycle, so only the collector freed them: 1,000 files of 800 KB headers from a
    stranger took a peer from 64 to 1,010 MB, kept by the allocator after)."""
    headers = {
        "wrong-recipient": b"\x81\xa1r\xc6" + (800_000).to_bytes(4, "big") + bytes(800_000),
        "bad-header": b"\x91" * 500_000 + b"\x90",  # refused while decoding: a chain
    }
    for reason, header in headers.items():
        path = tmp_path / str(NAME)
        path.write_bytes(b"MESH\x02" + len(header).to_bytes(4, "big") + header + bytes(64))
        [checked] = inbox.check_files([(NAME, path)], bravo_keys, LIMITS, {})
        assert checked.error is not None and checked.error.reason == reason
        error = checked.error
        assert error.__traceback__ is error.__context__ is error.__cause__ is None
