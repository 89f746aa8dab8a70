"""The folder pipe: atomic drops into an outbox, scans and watches of an inbox.

A folder may be shared by many peers: a peer only lists, reads, moves or deletes files
whose name says they are addressed to it (or, in its outbox, that it wrote). File names
come from `mesh.wire.names`, never from outside input, so nothing here builds a path from
untrusted text.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Container
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, cast

from ..wire.names import SUFFIX, TEMP_PREFIX, FileName, parse_name

WatchMode = Literal["auto", "notify", "poll"]
FILE_MODE = 0o600  # of the files mesh writes in the pipe (the roster's `file_mode`)
log = logging.getLogger("mesh.pipe")


def write_atomically(folder: Path, name: FileName, data: bytes, mode: int = FILE_MODE) -> Path:
    """Write `data` as `name` in `folder` so no reader ever sees it half written
    (see `replace_atomically`). Blocking: call from a thread."""
    return replace_atomically(folder, str(name), name.temporary, data, mode)


def write_atomically_with(
    folder: Path, name: FileName, write: Callable[[BinaryIO], object], mode: int = FILE_MODE
) -> Path:
    """`write_atomically` of what `write(file)` writes to a file opened "w+b" (seekable,
    so a writer may come back to fill in a header), never holding it all in memory.
    If `write` raises, nothing is left behind. Blocking: call from a thread."""
    return _replace_with(folder, str(name), name.temporary, write, mode)


def replace_atomically(
    folder: Path, name: str, temporary: str, data: bytes, mode: int = FILE_MODE
) -> Path:
    """`data` as `folder/name` with `mode` (whatever the umask), replacing what was
    there: written as `temporary` (a name readers skip), fsync'd, renamed into place,
    and the folder fsync'd so the rename survives a power cut. A failed write leaves no
    temporary behind. Blocking."""
    return _replace_with(folder, name, temporary, lambda f: f.write(data), mode)


def _replace_with(
    folder: Path, name: str, temporary: str, write: Callable[[BinaryIO], object], mode: int
) -> Path:
    """`replace_atomically`, the content written by `write` to the open temporary."""
    temp, final = folder / temporary, folder / name
    try:
        with open(temp, "w+b", opener=partial(_create, mode=mode)) as f:
            write(cast(BinaryIO, _SyncingFile(f)))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.replace(temp, final)
    fsync_folder(folder)
    return final


SYNC_EVERY = 32 << 20  # bytes written between two fdatasyncs of a big file


class SyncEvery:
    """fdatasync a file each `SYNC_EVERY` bytes written to it. A big write left to the
    page cache gets throttled by the kernel and ends in one long flush; synced as it goes,
    the disk writes while more comes (about three times faster for 1 GiB here)."""

    def __init__(self, fd: int, flush: Callable[[], object] | None = None) -> None:
        self.fd, self._flush, self._unsynced = fd, flush, 0

    def wrote(self, size: int) -> bool:
        """`size` more bytes were written (flushed first by `flush`, for a buffered file);
        whether the file was synced just now (all written so far is durable)."""
        self._unsynced += size
        if self._unsynced < SYNC_EVERY:
            return False
        if self._flush is not None:
            self._flush()
        os.fdatasync(self.fd)
        self._unsynced = 0
        return True


class _SyncingFile:
    """A buffered binary file that is written in pieces and synced as it grows."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self._sync = f, SyncEvery(f.fileno(), f.flush)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for start in range(0, len(view), SYNC_EVERY):
            piece = view[start : start + SYNC_EVERY]
            self._f.write(piece)
            self._sync.wrote(len(piece))
        return len(view)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()


def _create(path: str, flags: int, mode: int) -> int:
    """Open a new file with exactly `mode` (the umask only ever takes bits away)."""
    fd = os.open(path, flags | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)
    return fd


def folder_mode(file_mode: int) -> int:
    """The mode of a pipe folder mesh creates for files of `file_mode`: the owner's
    alone, plus entry for those who may read the files (0640 files: a 0750 folder)."""
    readers = file_mode & 0o044
    return 0o700 | readers | (readers >> 2)


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (os.write may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some network filesystems cannot fsync a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def addressed_to(folder: Path, me: str) -> list[tuple[FileName, Path]]:
    """Finished mesh files in `folder` addressed to `me`, oldest first (`list_addressed`'s
    files)."""
    return list_addressed(folder, me)[0]


def list_addressed(
    folder: Path, me: str, skipped: Container[str] = ()
) -> tuple[list[tuple[FileName, Path]], list[tuple[FileName, Path]]]:
    """What is in `folder` under the names of finished mesh files addressed to `me`:
    files (links, FIFOs and the like included, so that they are refused, never opened)
    and folders (told apart without a stat where the filesystem says), oldest first.
    Names in `skipped` are passed over before any other work, files of other peers,
    files being written and names mesh did not make are skipped. A folder that vanished
    (an unmounted share) lists as empty."""
    files: list[tuple[FileName, Path]] = []
    folders: list[tuple[FileName, Path]] = []
    addressed = f".{me}."  # the second of the name's parts, looked for before the rest
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in skipped or not entry.name.endswith(SUFFIX):
                    continue
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                dot = entry.name.find(".")
                if not entry.name.startswith(addressed, dot):  # another's: not parsed
                    continue
                name = parse_name(entry.name)
                if name is not None and name.recipient == me:  # of any kind: see inbox
                    found = (name, Path(entry.path))
                    (folders if _is_folder(entry) else files).append(found)
    except FileNotFoundError:
        return [], []
    files.sort()
    folders.sort()
    return files, folders


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:  # gone meanwhile: a file, then, that the check finds gone
        return False


def remove_stale_temporaries(folder: Path, me: str) -> int:
    """Delete half-written files `me` left in `folder` when it crashed; how many."""
    removed = 0
    prefix = f"{TEMP_PREFIX}{me}."
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".part"):
                stem = entry.name[len(TEMP_PREFIX) : -len(".part")]
                name = parse_name(stem)
                if name is not None and name.sender == me:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


def remove(path: Path) -> bool:
    """Delete `path`; False if it was already gone (taken by a mirror or a cleanup)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# Filesystems whose changes made elsewhere inotify does not see: watch them by polling.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "virtiofs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "fuse.sshfs",
        "fuse.rclone",
        "fuse.s3fs",
    }
)


def is_local(folder: Path, mounts: str | None = None) -> bool:
    """Whether `folder` is on a known local filesystem (not a network share, not FUSE),
    where a small read or write never hangs for long."""
    kind = filesystem_type(folder, mounts)
    return kind is not None and kind not in NETWORK_FILESYSTEMS and not kind.startswith("fuse")


def filesystem_type(folder: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem `folder` is on, from /proc/self/mounts (None if unknown)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(folder)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].encode().decode("unicode_escape")  # \040 is a space, and so on
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def resolve_watch_mode(mode: WatchMode, folder: Path) -> Literal["notify", "poll"]:
    """``auto`` becomes ``poll`` on a network filesystem and ``notify`` elsewhere."""
    if mode != "auto":
        return mode
    return "poll" if filesystem_type(folder) in NETWORK_FILESYSTEMS else "notify"
