"""Reading the inbox: the files addressed to a peer are measured and checked in batches,
from one worker thread per batch rather than several thread round trips per file (each
costs milliseconds on a busy event loop). A small file is read whole, so its frames can
then be opened without the disk or another thread."""

from __future__ import annotations

import errno
import io
import itertools
import os
import stat
from collections.abc import Container, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..errors import FormatError
from ..wire.fileformat import KeySource, Limits, ScannedFile, scan_file
from ..wire.names import FileName
from . import folder as pipe
from .quarantine import kind_of

SMALL_FILE = 256 << 10  # bytes: a file this big or smaller is read into memory whole
BATCH = 64  # files checked per thread round trip (bounds the memory small files hold)

Mark = tuple[int, int]  # (size, mtime_ns): a file that keeps its mark has stopped changing


@dataclass(frozen=True)
class Checked:
    """What `check_files` found of one file. `mark` is None when the file was gone;
    `waiting` when it kept the mark it is settling with (not read again); `failure` when
    it could not be read (left where it is, tried again later). Else either `scanned`
    (with `content`, the whole file, when it is small) or `error` (refused)."""

    name: FileName
    path: Path
    mark: Mark | None
    waiting: bool = False
    scanned: ScannedFile | None = None
    content: bytes | None = None
    error: FormatError | None = None
    failure: OSError | None = None


@dataclass(frozen=True)
class Listing:
    """What `list_and_check` found: files from peers not talked to (`foreign`, to be
    quarantined unread), the first `BATCH` of the others checked, the rest of them
    (`unchecked`, oldest first) for later batches, and folders under message names."""

    foreign: list[tuple[FileName, Path]]
    checked: list[Checked]
    unchecked: list[tuple[FileName, Path]]
    folders: list[tuple[FileName, Path]]  # under message names: refused, never opened


def list_and_check(
    folder: Path,
    me: str,
    talks_to: Container[str],
    keys: KeySource,
    limits: Limits,
    settling: Mapping[str, Hashable],
    small_only: bool = False,
    skipped: Container[str] = (),
) -> Listing:
    """The files in `folder` addressed to `me`, the first batch of them checked, in one
    call (`folder.list_addressed`, then `check_files`); with `small_only`, checking stops at
    the first file over `SMALL_FILE` bytes (to be checked in a thread). Names in
    `skipped` (files taken already, being removed; folders recorded and left where they
    are) are left out. OSError when the folder cannot be listed. Blocking."""
    foreign: list[tuple[FileName, Path]] = []
    readable: list[tuple[FileName, Path]] = []
    files, folders = pipe.list_addressed(folder, me, skipped)
    for name, path in files:
        (readable if name.sender in talks_to else foreign).append((name, path))
    batch = readable[:BATCH]
    if small_only:
        batch = list(itertools.takewhile(lambda file: _size(file[1]) <= SMALL_FILE, batch))
    checked = check_files(batch, keys, limits, settling)
    return Listing(foreign, checked, readable[len(batch) :], folders)


def _size(path: Path) -> int:
    """The size of `path`, never following a link (0 if it is gone: `check_files` then
    says so)."""
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def check_files(
    files: Iterable[tuple[FileName, Path]],
    keys: KeySource,
    limits: Limits,
    settling: Mapping[str, Hashable],
) -> list[Checked]:
    """Each file's `Checked`, in order. `settling` maps the names of files known to be
    settling to their mark: such a file is skipped while it keeps that mark. Blocking."""
    return [_check(name, path, keys, limits, settling.get(path.name)) for name, path in files]


def _check(
    name: FileName, path: Path, keys: KeySource, limits: Limits, settling: Hashable | None
) -> Checked:
    mark: Mark | None = None
    try:
        info = os.lstat(path)
        mark = (info.st_size, info.st_mtime_ns)
        if mark == settling:
            return Checked(name, path, mark, waiting=True)
        with open_regular(path, info) as source:
            content = source.read(SMALL_FILE + 1) if info.st_size <= SMALL_FILE else None
            if content is not None and len(content) > SMALL_FILE:  # grew meanwhile
                content = None
            whole = io.BytesIO(content) if content is not None else None
            scanned = scan_file(source if whole is None else whole, keys, limits)
    except FileNotFoundError:
        return Checked(name, path, None)
    except FormatError as exc:
        return Checked(name, path, mark, error=_alone(exc))
    except OSError as exc:  # unreadable for now (permissions, a share gone away)
        return Checked(name, path, mark, failure=_alone(exc))
    return Checked(name, path, mark, scanned=scanned, content=content)


Raised = TypeVar("Raised", bound=BaseException)


def _alone(exc: Raised) -> Raised:
    """`exc`, to be kept, without its traceback and the exceptions it was raised from
    or while handling: their frames hold what was read (a stranger's megabyte, in a
    cycle only the collector breaks, and the allocator keeps the memory after)."""
    exc.__traceback__ = exc.__context__ = exc.__cause__ = None
    return exc


def open_regular(path: Path, info: os.stat_result | None = None) -> BinaryIO:
    """`path` open for reading if it is a regular file of one name, as `info` (its lstat,
    taken now when not given) says and its descriptor confirms (it may have been swapped
    between the two); FormatError ``not-a-file`` otherwise. Never follows a link and
    never blocks (a FIFO is not even opened). OSError as `os.open` raises it."""
    info = os.lstat(path) if info is None else info
    if not stat.S_ISREG(info.st_mode):
        raise FormatError("not-a-file", f"{kind_of(info.st_mode)}, not a file: never opened")
    if info.st_nlink > 1:  # mesh's files have one name; another could be a secret's
        raise FormatError("not-a-file", "a file with other names (a hard link): never opened")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since
            raise FormatError("not-a-file", "a symbolic link, not a file: never opened") from None
        raise
    source = os.fdopen(fd, "rb")
    held = os.fstat(fd)
    if not stat.S_ISREG(held.st_mode):  # swapped since: a FIFO opened without blocking
        source.close()
        raise FormatError("not-a-file", f"{kind_of(held.st_mode)}, not a file: never read")
    if held.st_nlink > 1:  # swapped since for a link to a secret
        source.close()
        raise FormatError("not-a-file", "a file with other names (a hard link): never read")
    return source


def remove_all(paths: Iterable[Path]) -> list[tuple[Path, OSError]]:
    """Delete each of `paths` (those already gone are fine); those that could not be,
    with why. Blocking."""
    failed = []
    for path in paths:
        try:
            pipe.remove(path)
        except OSError as exc:
            failed.append((path, exc))
    return failed
