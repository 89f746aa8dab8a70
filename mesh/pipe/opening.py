"""Opening the frames a file delivers: each read, checked and decoded; fragments written
straight to their body files (or, big ones stored raw, left in the file, linked as pieces
of their bodies: `pieces`), messages kept for the store. Blocking (a small file's content
is opened on the event loop, a big file from a worker thread)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import FormatError, MessageError
from ..wire.crypto import Keyring
from ..wire.fileformat import Codec, Limits, ReadBuffer, ScannedFile, read_frame
from ..wire.messages import (
    Control,
    Envelope,
    Fragment,
    Kind,
    Message,
    is_id,
    kind_of,
    pack,
    unpack_envelope,
    unpack_fragment,
    unreadable,
)
from .bodies import Bodies, BodyWriter, incoming_name
from .folder import fsync_folder
from .pieces import LINK_FROM, Piece, Pieces
from .streams import ABANDON, ENDED


@dataclass
class Opened:
    """The delivered frames of one file, read: messages to store (seq, kind, envelope),
    fragments already written to their body files ((transfer, message id, total (0 for
    a body that streams), length), and where each lies ((transfer, offset, length)),
    transfers given up, the lengths told at their end ((transfer, length): ``ended``),
    transfers over the body limit here (dropped as given up, with the seqs that said
    so, `too_big`), seqs refused (authentic but malformed: acknowledged, never
    delivered as they are; a request or response among them whose id can be read is
    delivered as an ``unreadable`` note of its kind instead, so that it is answered)
    and seqs that could not be read now (left for a resend)."""

    messages: list[tuple[int, int, bytes]] = field(default_factory=list)  # with stand-ins
    fragments: list[tuple[str, str, int, int]] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    ended: list[tuple[str, int]] = field(default_factory=list)
    oversized: list[str] = field(default_factory=list)
    too_big: list[tuple[int, str]] = field(default_factory=list)  # seqs refused for that
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    unread: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Reader:
    """What opening frames needs: keys to check and open them, bounds, where bodies go,
    and the largest body taken in fragments."""

    keyring: Keyring
    limits: Limits
    bodies: Bodies
    max_body: int

    def open(
        self,
        remote: str,
        deliver: Sequence[int],
        source: BinaryIO,
        scanned: ScannedFile,
        given_up: set[str],
        path: Path | None = None,
    ) -> Opened:
        """Read the frames `deliver` names from `source` (a file from `remote`, as
        `scanned`; the file at `path` in the inbox, when it is one, whose big raw
        fragments may then be linked as pieces: it is moved out of the inbox first);
        fragments go to their body files (durable on return), unless their transfer was
        given up (`given_up`, or an ``abandon`` among these frames, whose body file is
        removed here)."""
        index_of: dict[int, int] = {}
        for index, info in enumerate(scanned.header.frames):
            if scanned.intact[index]:
                index_of.setdefault(info.seq, index)
        opened = Opened()
        buffer = ReadBuffer()  # each frame is done with before the next is read
        linker = _Linker(self.bodies.pieces, scanned)
        if path is not None:
            linker.adopt(path, source.fileno(), [index_of[seq] for seq in deliver])
        try:
            with self.bodies.writer() as bodies:
                for seq in deliver:
                    index = index_of[seq]
                    try:
                        data = read_frame(
                            source, scanned.parsed, index, self.keyring, self.limits, buffer
                        )
                    except FormatError:  # changed since it was scanned: wait for a resend
                        opened.unread.add(seq)
                        continue
                    try:
                        message, fragment_data = self.message(seq, data)
                    except OverLimit as exc:  # refused, and the rest of its body with it
                        if exc.transfer not in given_up:  # else dropped already: no news
                            opened.too_big.append((seq, str(exc)))
                            self._drop(remote, exc.transfer, given_up, opened.oversized)
                        continue
                    except MessageError as exc:
                        opened.refused.append((seq, str(exc)))
                        _stand_in(seq, data, str(exc), opened)
                        continue
                    taken = _Taken(remote, seq, index, data, fragment_data)
                    self._take(taken, message, bodies, linker, opened, given_up)
        except BaseException:
            linker.give_back()
            raise
        linker.settle()
        return opened

    def _take(
        self,
        taken: _Taken,
        message: Message,
        bodies: BodyWriter,
        linker: _Linker,
        opened: Opened,
        given_up: set[str],
    ) -> None:
        """Add one opened frame to `opened` (a fragment linked as a piece of its body, or
        written to its body file)."""
        remote, fragment_data = taken.remote, taken.fragment_data
        if isinstance(message, Fragment):
            if message.transfer not in given_up:
                name = incoming_name(remote, message.transfer)
                if not linker.link(taken, name, message.offset):
                    bodies.write(name, message.offset, fragment_data)
                length = len(fragment_data)
                total = message.total or 0  # a body that streams: known at its end
                opened.fragments.append((message.transfer, message.id, total, length))
                opened.spans.append((message.transfer, message.offset, length))
        elif isinstance(message, Control) and message.op == ABANDON:
            self._drop(remote, str(message.args["transfer"]), given_up, opened.abandoned)
        elif isinstance(message, Control) and message.op == ENDED:
            if message.args["transfer"] not in given_up:
                opened.ended.append((message.args["transfer"], message.args["length"]))
        else:
            opened.messages.append((taken.seq, int(kind_of(message)), bytes(taken.data)))

    def _drop(self, remote: str, transfer: str, given_up: set[str], into: list[str]) -> None:
        """Drop body `transfer` (given up, or over the limit), noted in `into`: its file
        goes before that is stored (never a partial file left over), and its fragments
        later in this file are dropped."""
        given_up.add(transfer)
        into.append(transfer)
        self.bodies.remove([incoming_name(remote, transfer)])

    def message(self, seq: int, data: bytes | memoryview) -> tuple[Message, bytes | memoryview]:
        """The message in frame `data` and, for a fragment, its data (a view of `data`).
        MessageError for one that is malformed or misnumbered; OverLimit for a fragment
        past the body limit, or an ``ended`` telling a length over it."""
        split = unpack_fragment(data, len(data))
        envelope, fragment_data = split if split else (unpack_envelope(data, len(data)), b"")
        if envelope.seq != seq:
            raise MessageError(f"frame says seq {envelope.seq}, header {seq}")
        message = envelope.message
        if isinstance(message, Fragment):
            fragment_data = fragment_data if split else message.data
            end = max(message.total or 0, message.offset + len(fragment_data))
            if end > self.max_body:
                raise OverLimit(message.transfer, end)
        if isinstance(message, Control) and message.op in (ABANDON, ENDED):
            self._check_control(message)
        return message, fragment_data

    def _check_control(self, message: Control) -> None:
        """MessageError unless `message` (an ``abandon`` or ``ended``) names a transfer,
        and for ``ended``, a length in bytes; OverLimit for one over the body limit."""
        transfer = message.args.get("transfer")
        if not is_id(transfer):
            raise MessageError(f"{message.op} names no transfer")
        if message.op == ENDED:
            length = message.args.get("length")
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise MessageError("ended tells no length")
            if length > self.max_body:
                raise OverLimit(str(transfer), length)


class OverLimit(MessageError):
    """A body of `size` bytes or more, as transfer `transfer`: over the body limit."""

    def __init__(self, transfer: str, size: int) -> None:
        super().__init__(f"a body of {size} bytes or more is over the body limit")
        self.transfer = transfer


LINKED_SHARE = 0.75  # of a file's bytes its linked fragments make, at least
FRAGMENT_START = bytes([0x98, Kind.FRAGMENT])  # how a fragment's envelope begins


@dataclass(frozen=True)
class _Taken:
    """A frame read and checked: from `remote`, numbered `seq`, the `index`-th of its
    file, its envelope `data` and, for a fragment, the fragment's data."""

    remote: str
    seq: int
    index: int
    data: bytes | memoryview
    fragment_data: bytes | memoryview


class _Linker:
    """Links the big raw fragments of one file as pieces of their bodies (`pieces`), once
    the file is adopted (`adopt`); then makes the links durable (`settle`)."""

    def __init__(self, pieces: Pieces, scanned: ScannedFile) -> None:
        self.pieces, self.scanned = pieces, scanned
        self._fd: int | None = None  # the file's, once adopted
        self._adopted: Path | None = None
        self._inbox_path = Path()
        self._linked = False

    def adopt(self, path: Path, fd: int, indexes: Sequence[int]) -> None:
        """Before any frame is read: move the file (`path`, open as `fd`) out of the inbox
        when frames `indexes` worth linking make nearly all of it (`LINKED_SHARE`: a piece
        keeps its whole file) and it may be linked. Blocking."""
        if not self.pieces.linkable(fd):  # one fstat, before a read per frame
            return
        frames = self.scanned.header.frames
        worth = sum(frames[i].length for i in indexes if self._fragment_at(fd, i))
        if worth < LINKED_SHARE * self.scanned.parsed.size:
            return
        self._adopted, self._inbox_path = self.pieces.adopt(path, fd), path
        if self._adopted is not None and os.fstat(fd).st_nlink == 1:  # no name elsewhere
            self._fd = fd

    def _fragment_at(self, fd: int, index: int) -> bool:
        """Whether frame `index` looks like a fragment worth linking (by its first bytes,
        read unchecked: this only decides whether to try)."""
        start = self.scanned.parsed.spans[index][0]
        return self._raw_and_big(index) and os.pread(fd, 2, start) == FRAGMENT_START

    def _raw_and_big(self, index: int) -> bool:
        info, header = self.scanned.header.frames[index], self.scanned.header
        return info.codec == Codec.RAW and not header.encrypted and info.length >= LINK_FROM

    def link(self, taken: _Taken, body: str, offset: int) -> bool:
        """Whether fragment `taken` (bytes `offset`.. of `body`) is now a piece of it."""
        data, fragment = taken.data, taken.fragment_data
        # a view of the frame's end (its data last, as the frame lies in the file)
        in_place = isinstance(fragment, memoryview) and len(fragment) >= LINK_FROM
        if self._fd is None or not (in_place and self._raw_and_big(taken.index)):
            return False
        position = self.scanned.parsed.spans[taken.index][0] + len(data) - len(fragment)
        info = self.scanned.header.frames[taken.index]
        piece = Piece(offset, len(fragment), position, info.length, info.digest)
        linked = self.pieces.link(self._fd, body, piece)
        self._linked = self._linked or linked
        return linked

    def give_back(self) -> None:
        """Opening the file failed: put the adopted file back in the inbox (unless another
        took its name meanwhile, or pieces of it were linked: a file with other names is
        never read from an inbox), to be read again; else its sender sends it again.
        Blocking."""
        if self._adopted is not None:
            with contextlib.suppress(OSError):
                if not self._linked:
                    os.link(self._adopted, self._inbox_path)
            os.unlink(self._adopted)
            self._adopted = None

    def settle(self) -> None:
        """Make what was linked durable (the file's bytes, which a mirror may not have
        synced, then the names), and let the adopted file's own name go. Blocking."""
        if self._linked and self._fd is not None:
            os.fsync(self._fd)
            fsync_folder(self.pieces.folder)
        if self._adopted is not None:
            os.unlink(self._adopted)


def _stand_in(seq: int, data: bytes | memoryview, problem: str, opened: Opened) -> None:
    """Add to `opened` the ``unreadable`` note of frame `seq`, if it has one (`unreadable`)."""
    found = unreadable(data, problem)
    if found is not None:
        kind, note = found
        opened.messages.append((seq, int(kind), pack(Envelope(seq, note))))
