"""Quarantine: where refused files go, bounded, without ever following a link or copying
an arbitrary amount of data.

A refused file is renamed into the quarantine folder (the name itself moves: a link,
FIFO or device is never opened). When the inbox is on another filesystem than the state,
a regular file of at most `COPY_MOST` bytes is copied through a descriptor opened
without following links; anything else is only recorded, by name and reason. Either way
a ``.reason`` note is written beside it and the file leaves the inbox. A folder under a
message's name is recorded once: removed when empty, else left where it is (moved here,
what it holds would escape the limit) and no longer listed (`left`; at most
`FOLDERS_KEPT` of them are recorded, more are left unrecorded).

The folder holds at most `limit` bytes and `ENTRIES_MOST` files and notes: the oldest go
first, and a file bigger than the limit is never kept. Their count and size are kept in
memory as files come and go, from one listing at the first use, so a refusal costs the
same however many are held.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

from ..wire.names import SUFFIX

COPY_MOST = 1 << 20  # bytes of a file copied across filesystems; bigger ones are noted only
NOTE = ".reason"
FOLDERS_KEPT = 100_000  # folders under message names recorded and left in the inbox
ENTRIES_MOST = 200_000  # files and notes held (a note is about 300 bytes): bounds memory
_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def kind_of(mode: int) -> str:
    """What a file of `mode` is, in words (``a FIFO``); ``a regular file`` for one."""
    return _KINDS.get(stat.S_IFMT(mode), "a regular file")


class Quarantine:
    """A folder of refused files, each with a ``.reason`` note, of at most `limit` bytes."""

    def __init__(self, folder: Path, limit: int = 1 << 30) -> None:
        self.folder, self.limit = folder, limit
        self._sizes: OrderedDict[str, int] | None = None  # kept files and notes, oldest first
        self._total = self._notes = 0  # bytes and notes in `_sizes`
        self._folders: set[str] = set()  # folders recorded and left in the inbox, by name
        self._reasons: Counter[str] = Counter()  # files refused since start, by reason
        self._lock = threading.Lock()  # `put` runs in worker threads, `count` on the loop

    def put(self, path: Path, reason: str, detail: str) -> Path | None:
        """Take refused `path` out of the inbox, keeping it here if it may be kept, and
        its reason; the note's path, or None if `path` was already gone (or is a folder
        not to be recorded: `_folder`). OSError when the inbox or the quarantine cannot
        be written (the file then stays where it is)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(info.st_mode):
            what = self._folder(path)
            if what is None:
                return None
        else:
            kept = self._take(path, info)
            what = "kept beside this note" if kept else f"not kept ({kept_why(info, self.limit)})"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        note = (
            f"reason: {reason}\ndetail: {detail}\nfrom: {path.parent}\nat: {stamp}\n"
            f"file: {kind_of(info.st_mode)} of {info.st_size} bytes, {what}\n"
        )
        written = self._note(path.name + NOTE, note.encode())
        with self._lock:
            self._reasons[reason] += 1
        return written

    def put_all(self, paths: Iterable[Path], reason: str, detail: str) -> list[str]:
        """`put` each of `paths`, for one `reason`; the names of those noted now."""
        return [path.name for path in paths if self.put(path, reason, detail) is not None]

    def records_folders(self) -> bool:
        """Whether a folder not yet recorded would be (fewer than `FOLDERS_KEPT` are)."""
        with self._lock:
            return len(self._folders) < FOLDERS_KEPT

    def left(self) -> frozenset[str]:
        """The names of the folders recorded and left in the inbox: not to be listed."""
        with self._lock:
            return frozenset(self._folders)

    def _folder(self, path: Path) -> str | None:
        """What became of folder `path`, to be recorded: removed if it was empty, else
        left (and then in `left`); None when it is not to be recorded (it was already,
        here or before a restart, or `FOLDERS_KEPT` are)."""
        with self._lock:
            if path.name in self._folders or len(self._folders) >= FOLDERS_KEPT:
                return None
        try:
            os.rmdir(path)  # only an empty folder, never what a link points to
        except OSError:
            with self._lock:
                self._folders.add(path.name)
            if os.path.lexists(self.folder / (path.name + NOTE)):
                return None  # noted before this peer started again
            return "not kept (a folder that holds something is left where it is)"
        return "not kept (an empty folder, removed)"

    def count(self) -> int:
        """How many refused files are recorded here (kept or noted)."""
        with self._lock:
            self._listed()
            return self._notes

    def reasons(self) -> dict[str, int]:
        """How many files were refused since start, by reason (``bad-signature``...)."""
        with self._lock:
            return dict(self._reasons)

    def size(self) -> int:
        """Bytes held here, notes included."""
        with self._lock:
            self._listed()
            return self._total

    def _take(self, path: Path, info: os.stat_result) -> bool:
        """Move `path` here if it may be kept, else remove it from the inbox; whether it
        was kept."""
        dest = self.folder / path.name
        keep = info.st_size <= self.limit and info.st_nlink == 1
        if keep:
            try:
                os.rename(path, dest)
            except FileNotFoundError:
                return False
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                keep = _copy_small(path, info, dest)
        if keep:
            self._added(dest.name, os.lstat(dest).st_size)
        _remove(path)
        return keep

    def _note(self, name: str, note: bytes) -> Path:
        path = self.folder / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(note)
        self._added(name, len(note))
        return path

    def _added(self, name: str, size: int) -> None:
        """Record `name` as the newest here, then drop the oldest until within the limit."""
        with self._lock:
            dropped = self._record(name, size)
        for oldest in dropped:
            _remove(self.folder / oldest)

    def _record(self, name: str, size: int) -> list[str]:
        """`_added`'s bookkeeping: the names to remove."""
        sizes = self._listed()
        if name in sizes:
            self._counted(name, sizes.pop(name), -1)
        sizes[name] = size
        self._counted(name, size, 1)
        dropped = []
        while (self._total > self.limit or len(sizes) > ENTRIES_MOST) and len(sizes) > 1:
            oldest, freed = sizes.popitem(last=False)
            self._counted(oldest, freed, -1)
            dropped.append(oldest)
        return dropped

    def _counted(self, name: str, size: int, sign: int) -> None:
        """Count `name`, of `size` bytes, in the totals (`sign` 1) or out of them (-1)."""
        self._total += sign * size
        if name.endswith(NOTE):
            self._notes += sign

    def _listed(self) -> OrderedDict[str, int]:
        """The files here by age, listed once (then kept up to date in memory)."""
        if self._sizes is None:
            found = []
            try:
                with os.scandir(self.folder) as entries:
                    for entry in entries:
                        if entry.name.endswith((SUFFIX, NOTE)):
                            info = entry.stat(follow_symlinks=False)
                            found.append((info.st_mtime_ns, entry.name, info.st_size))
            except FileNotFoundError:
                pass
            self._sizes = OrderedDict()
            for _, name, size in sorted(found):
                self._sizes[name] = size
                self._counted(name, size, 1)
        return self._sizes


def kept_why(info: os.stat_result, limit: int) -> str:
    """Why a refused file was not kept: only regular files within the limits are."""
    if not stat.S_ISREG(info.st_mode):
        return f"{kind_of(info.st_mode)} is never opened or copied"
    if info.st_nlink > 1:
        return "a file with other names (a hard link, perhaps to a secret) is never kept"
    if info.st_size > limit:
        return f"bigger than quarantine_limit, {limit} bytes"
    return f"on another filesystem and over {COPY_MOST} bytes"


def _copy_small(path: Path, info: os.stat_result, dest: Path) -> bool:
    """Copy regular file `path` of at most `COPY_MOST` bytes and one name to `dest`,
    never following a link; whether it was copied."""
    if not stat.S_ISREG(info.st_mode) or info.st_size > COPY_MOST:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or swapped for a link since
    with os.fdopen(fd, "rb") as source:
        held = os.fstat(source.fileno())
        if not stat.S_ISREG(held.st_mode) or held.st_nlink > 1:  # swapped since
            return False
        data = source.read(COPY_MOST + 1)
    if len(data) > COPY_MOST:
        return False
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(dest, flags, 0o600), "wb") as out:
        out.write(data)
    return True


def _remove(path: Path) -> None:
    """Remove `path` (never a folder); fine if it is gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
