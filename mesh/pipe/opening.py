"""Opening the frames a file delivers: each read, checked and decoded; fragments written
straight to their body files, messages kept for the store. Blocking (a small file's
content is opened on the event loop, a big file from a worker thread)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import FormatError, MessageError
from ..wire.crypto import Keyring
from ..wire.fileformat import Limits, ReadBuffer, ScannedFile, read_frame
from ..wire.messages import (
    Control,
    Envelope,
    Fragment,
    Message,
    is_id,
    kind_of,
    pack,
    unpack_envelope,
    unpack_fragment,
    unreadable,
)
from .bodies import Bodies, BodyWriter, incoming_name
from .streams import ABANDON


@dataclass
class Opened:
    """The delivered frames of one file, read: messages to store (seq, kind, envelope),
    fragments already written to their body files ((transfer, message id, total (0 for
    a body that streams), length), and where each lies ((transfer, offset, length)),
    transfers given up, seqs refused (authentic but malformed: acknowledged, never
    delivered as they are; a request or response among them whose id can be read is
    delivered as an ``unreadable`` note of its kind instead, so that it is answered)
    and seqs that could not be read now (left for a resend)."""

    messages: list[tuple[int, int, bytes]] = field(default_factory=list)  # with stand-ins
    fragments: list[tuple[str, str, int, int]] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
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
    ) -> Opened:
        """Read the frames `deliver` names from `source` (a file from `remote`, as
        `scanned`); fragments go straight to their body files (durable on return), unless
        their transfer was given up (`given_up`, or an ``abandon`` among these frames,
        whose body file is removed here)."""
        index_of: dict[int, int] = {}
        for index, info in enumerate(scanned.header.frames):
            if scanned.intact[index]:
                index_of.setdefault(info.seq, index)
        opened = Opened()
        buffer = ReadBuffer()  # each frame is done with before the next is read
        with self.bodies.writer() as bodies:
            for seq in deliver:
                try:
                    data = read_frame(
                        source, scanned.parsed, index_of[seq], self.keyring, self.limits, buffer
                    )
                except FormatError:  # changed since it was scanned: wait for a resend
                    opened.unread.add(seq)
                    continue
                try:
                    message, fragment_data = self.message(seq, data)
                except MessageError as exc:
                    opened.refused.append((seq, str(exc)))
                    _stand_in(seq, data, str(exc), opened)
                    continue
                self._take(remote, seq, data, message, fragment_data, bodies, opened, given_up)
        return opened

    def _take(
        self,
        remote: str,
        seq: int,
        data: bytes | memoryview,
        message: Message,
        fragment_data: bytes | memoryview,
        bodies: BodyWriter,
        opened: Opened,
        given_up: set[str],
    ) -> None:
        """Add one opened frame to `opened` (a fragment written to its body file)."""
        if isinstance(message, Fragment):
            if message.transfer not in given_up:
                name = incoming_name(remote, message.transfer)
                bodies.write(name, message.offset, fragment_data)
                length = len(fragment_data)
                total = message.total or 0  # a body that streams: known at its end
                opened.fragments.append((message.transfer, message.id, total, length))
                opened.spans.append((message.transfer, message.offset, length))
        elif isinstance(message, Control) and message.op == ABANDON:
            transfer = str(message.args["transfer"])
            given_up.add(transfer)
            opened.abandoned.append(transfer)
            # Gone before it is marked abandoned: never a partial file left over
            self.bodies.remove([incoming_name(remote, transfer)])
        else:
            opened.messages.append((seq, int(kind_of(message)), bytes(data)))

    def message(self, seq: int, data: bytes | memoryview) -> tuple[Message, bytes | memoryview]:
        """The message in frame `data` and, for a fragment, its data (a view of `data`).
        MessageError for one that is malformed, misnumbered or over the body limit."""
        split = unpack_fragment(data, len(data))
        envelope, fragment_data = split if split else (unpack_envelope(data, len(data)), b"")
        if envelope.seq != seq:
            raise MessageError(f"frame says seq {envelope.seq}, header {seq}")
        message = envelope.message
        if isinstance(message, Fragment):
            fragment_data = fragment_data if split else message.data
            end = max(message.total or 0, message.offset + len(fragment_data))
            if end > self.max_body:
                raise MessageError(f"a body of {end} bytes or more is over the body limit")
        if (
            isinstance(message, Control)
            and message.op == ABANDON
            and not is_id(message.args.get("transfer"))
        ):
            raise MessageError("abandon names no transfer")
        return message, fragment_data


def _stand_in(seq: int, data: bytes | memoryview, problem: str, opened: Opened) -> None:
    """Add to `opened` the ``unreadable`` note of frame `seq`, if it has one (`unreadable`)."""
    found = unreadable(data, problem)
    if found is not None:
        kind, note = found
        opened.messages.append((seq, int(kind), pack(Envelope(seq, note))))
