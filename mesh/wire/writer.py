"""Writing mesh files: frames stored (compressed when it helps, sealed on encrypted
links) one at a time, then the signed header over them. See `fileformat`."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import msgpack

from ..proto.link import LinkFields
from . import bounded
from .crypto import SIGNATURE_SIZE, Identity, seal
from .layout import (
    FILE_NONCE_SIZE,
    FRAME_ENTRY,
    MAGIC,
    NO_DIGEST,
    NO_LINK,
    PREFIX,
    VERSION,
    Buffer,
    Codec,
    frame_aad,
    frame_nonce,
    joins,
    new_digest,
    small,
)

_COMPRESS_FROM = 128  # smaller frames are stored raw: zstd cannot win back its overhead
_SAMPLE_FROM, _SAMPLE = 1 << 20, 64 << 10  # frames this big are first judged by a sample


def write_file(
    out: BinaryIO,
    identity: Identity,
    *,
    recipient: str,
    epoch: str,
    created: float,
    nonce: bytes,
    frames: Iterable[Buffer],
    count: int,
    seqs: Sequence[int] | None = None,
    link_key: bytes | None = None,
    link: LinkFields = NO_LINK,
) -> int:
    """Write the file `encode_file` makes to `out` (seekable, at the file's start), taking
    `frames` one at a time so only one frame is in memory; how many bytes it wrote.

    `count` is how many frames `frames` yields (ValueError if another number). The header
    is the same size whatever the frame table holds, so a zeroed placeholder of its size
    goes first and the signed header over it once every frame is written.
    """
    if len(nonce) != FILE_NONCE_SIZE:
        raise ValueError(f"nonce must be {FILE_NONCE_SIZE} bytes")
    stored = _store_frames(frames, identity.name, recipient, nonce, link_key)
    return _write(
        out,
        identity,
        recipient=recipient,
        epoch=epoch,
        created=created,
        nonce=nonce,
        encrypted=link_key is not None,
        stored=stored,
        count=count,
        seqs=seqs,
        link=link,
    )


def encode_file(
    identity: Identity,
    *,
    recipient: str,
    epoch: str,
    created: float,
    nonce: bytes,
    frames: Sequence[bytes],
    seqs: Sequence[int] | None = None,
    link_key: bytes | None = None,
    link: LinkFields = NO_LINK,
) -> bytes:
    """A complete signed file holding `frames` (envelope bytes, with sequence numbers
    `seqs`, all 0 when None), sealed when `link_key` is given."""
    out = io.BytesIO()
    write_file(
        out,
        identity,
        recipient=recipient,
        epoch=epoch,
        created=created,
        nonce=nonce,
        frames=frames,
        count=len(frames),
        seqs=seqs,
        link_key=link_key,
        link=link,
    )
    return out.getvalue()


def assemble(
    identity: Identity,
    *,
    recipient: str,
    epoch: str,
    created: float,
    nonce: bytes,
    encrypted: bool,
    stored: Sequence[tuple[Codec, bytes]],
    seqs: Sequence[int] | None = None,
    link: LinkFields = NO_LINK,
) -> bytes:
    """Sign a header over frames already stored (compressed/sealed) and join the file."""
    out = io.BytesIO()
    _write(
        out,
        identity,
        recipient=recipient,
        epoch=epoch,
        created=created,
        nonce=nonce,
        encrypted=encrypted,
        stored=stored,
        count=len(stored),
        seqs=seqs,
        link=link,
    )
    return out.getvalue()


def _write(
    out: BinaryIO,
    identity: Identity,
    *,
    recipient: str,
    epoch: str,
    created: float,
    nonce: bytes,
    encrypted: bool,
    stored: Iterable[tuple[Codec, Buffer]],
    count: int,
    seqs: Sequence[int] | None,
    link: LinkFields,
) -> int:
    """Write a placeholder header, the `count` stored frames as they come, then the signed
    header over the placeholder; the file's size."""
    if count < 0:
        raise ValueError(f"frame count {count} is negative")
    if seqs is not None and len(seqs) != count:
        raise ValueError(f"{len(seqs)} sequence numbers for {count} frames")

    def head(table: bytes) -> bytes:
        return _head(
            identity.name,
            recipient=recipient,
            epoch=epoch,
            created=created,
            nonce=nonce,
            encrypted=encrypted,
            link=link,
            table=table,
        )

    start = out.tell()
    head_size = len(head(bytes(count * FRAME_ENTRY.size))) + SIGNATURE_SIZE
    out.write(bytes(head_size))  # no mesh file (bad magic) until the real header is in
    size, table = head_size, _Table()
    for codec, data in stored:
        index = len(table.entries)
        if index == count:
            raise ValueError(f"more than the {count} frames announced")
        out.write(data)
        size += len(data)
        table.add(data, codec, 0 if seqs is None else seqs[index])
        del data  # hold no frame while the next one is made
    if len(table.entries) != count:
        raise ValueError(f"{len(table.entries)} frames, not the {count} announced")
    signed = head(table.packed())
    signed += identity.sign(signed)
    if len(signed) != head_size:  # cannot happen: the table's size is all that varies
        raise AssertionError(f"header of {len(signed)} bytes over a {head_size}-byte space")
    out.seek(start)
    out.write(signed)
    out.seek(start + size)
    return size


class _Table:
    """The frame table as frames come: each frame's entry, and the digest of each block
    (`layout.blocks`) listed at its last frame once the block is closed. A block of
    small frames is hashed in one call when it closes (one call per frame would cost
    more than the hashing)."""

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []  # length, codec, seq, digest
        self._parts: list[bytes] = []  # the open block's small frames
        self._hasher = new_digest()  # the open block's big frame, fed as it comes
        self._start = self._size = 0  # the open block: its first frame, its bytes

    def add(self, data: Buffer, codec: Codec, seq: int) -> None:
        opened = len(self.entries) > self._start
        if opened and not joins(self.entries[self._start][0], self._size, len(data)):
            self._close()
        if small(len(data)):
            self._parts.append(bytes(data))
        else:
            self._hasher.update(data)
        self._size += len(data)
        self.entries.append([len(data), codec, seq, NO_DIGEST])

    def _close(self) -> None:
        if self._parts:
            self._hasher.update(b"".join(self._parts))
        self.entries[-1][3] = self._hasher.digest()
        self._hasher, self._parts = new_digest(), []
        self._start, self._size = len(self.entries), 0

    def packed(self) -> bytes:
        """The table, with the last block closed."""
        if len(self.entries) > self._start:
            self._close()
        return b"".join(FRAME_ENTRY.pack(*entry) for entry in self.entries)


def _head(
    sender: str,
    *,
    recipient: str,
    epoch: str,
    created: float,
    nonce: bytes,
    encrypted: bool,
    link: LinkFields,
    table: bytes,
) -> bytes:
    """Prefix and header, to be signed. Its size depends on `table`'s size only: the
    table is one bin whose entries are fixed-size structs."""
    header = {
        "s": sender,
        "r": recipient,
        "e": epoch,
        "t": float(created),
        "n": nonce,
        "x": encrypted,
        "a": link.ack.to_wire() if link.ack is not None else None,
        "ae": link.ack_epoch,
        "ss": link.session,
        "as": link.ack_session,
        "b": link.floor,
        "m": list(link.missing),
        "w": link.written,
        "u": list(link.unseen),
        "c": dict(link.clock),
        "f": table,
    }
    head: bytes = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(MAGIC, VERSION, len(head)) + head


def _store_frames(
    frames: Iterable[Buffer], sender: str, recipient: str, nonce: bytes, key: bytes | None
) -> Iterator[tuple[Codec, Buffer]]:
    """Each frame stored as it is asked for, holding no reference to the one before."""
    index = 0
    for payload in frames:  # not enumerate: it would hold the last frame meanwhile
        stored = _store_frame(index, payload, sender, recipient, nonce, key)
        del payload
        yield stored
        del stored
        index += 1  # noqa: SIM113 (enumerate would hold the last frame meanwhile)


def _store_frame(
    index: int, payload: Buffer, sender: str, recipient: str, nonce: bytes, key: bytes | None
) -> tuple[Codec, Buffer]:
    codec, data = Codec.RAW, payload
    if len(payload) >= _COMPRESS_FROM and _may_compress(payload):
        packed = bounded.compress(payload)
        if len(packed) < len(payload):
            codec, data = Codec.ZSTD, packed
        del packed  # an attempt that did not win is not kept while sealing
    if key is not None:
        data = seal(key, frame_nonce(nonce, index), data, frame_aad(sender, recipient, index))
    return codec, data


def _may_compress(payload: Buffer) -> bool:
    """Whether zstd may win on `payload`: a big one is judged by a sample from its middle
    (already compressed or encrypted bodies do not shrink; trying costs a pass over them)."""
    if len(payload) < _SAMPLE_FROM:
        return True
    middle = len(payload) // 2
    sample = payload[middle : middle + _SAMPLE]
    return len(bounded.compress(sample)) < 0.9 * len(sample)
