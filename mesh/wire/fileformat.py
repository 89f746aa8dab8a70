"""The mesh file format, version 1. No clock, and no I/O but on file objects it is handed.

Layout::

    prefix     b"MESH" | version (u8) | header length (u32, big-endian)
    header     msgpack map, then zero padding up to the header length
    signature  Ed25519 by the sender over prefix + header (64 bytes)
    frames     stored frames back to back, as the header's frame table lists them

The header carries sender, recipient, epoch, creation time, a per-file nonce, whether
frames are sealed, the link fields (ack state, floor, missing hints, clock vector), and a
frame table: per frame its stored length, codec, sequence number and xxh3-128 digest, so a
reader knows which messages a cut file lost without opening them. A frame's stored bytes
are its envelope, zstd-compressed when that helps, then AES-256-GCM sealed on encrypted
links.

Reading trusts nothing before the signature checks out. Truncation, the common fault,
loses only the frames it cut: every frame that arrived whole, with a matching digest,
is still good. Everything decoded is bounded by `Limits`.

Files live in memory (`encode_file`, `decode_file`) or, when big, on disk: `write_file`
and `scan_file`/`read_frame` hold one frame at a time, never the whole file.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any, BinaryIO, Protocol, TypeAlias, TypeVar

import msgpack
import xxhash

from ..errors import FormatError
from ..proto.received import ReceivedState
from . import bounded
from .crypto import NONCE_SIZE, SIGNATURE_SIZE, TAG_SIZE, Identity, PublicIdentity, seal, unseal

Buffer: TypeAlias = bytes | memoryview  # a frame's bytes, perhaps a view of a buffer

MAGIC = b"MESH"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")
PREFIX_SIZE = _PREFIX.size
_FRAME_ENTRY = struct.Struct(">QBQ16s")  # stored length, codec, seq, xxh3-128 digest
FILE_NONCE_SIZE = 8
_PEER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_EPOCH = re.compile(r"[0-9a-f]{16}")
_COMPRESS_FROM = 128  # smaller frames are stored raw: zstd cannot win back its overhead
_SAMPLE_FROM, _SAMPLE = 1 << 20, 64 << 10  # frames this big are first judged by a sample


class Codec(IntFlag):
    RAW = 0
    ZSTD = 1


@dataclass(frozen=True)
class Limits:
    """Bounds on what a reader accepts; anything beyond is refused, not allocated."""

    max_header: int = 1 << 20
    max_frames: int = 16384
    max_frame: int = 128 << 20  # stored bytes of one frame
    max_message: int = 128 << 20  # decompressed bytes of one frame
    max_clock: int = 1024  # peers in the clock vector
    max_ranges: int = 4096  # ranges in the ack state


@dataclass(frozen=True)
class FrameInfo:
    length: int
    codec: Codec
    seq: int
    digest: bytes


@dataclass(frozen=True)
class LinkFields:
    """What a file tells its recipient about the link, besides its frames.

    `ack` is what the writer has durably received from the recipient while the recipient
    had epoch `ack_epoch`; `floor` is the writer's lowest unacknowledged sequence number
    (everything below it was acknowledged, or never existed); `missing` names messages
    the writer saw cut from a file and wants again; `clock` is the writer's `upto` per peer.
    """

    ack: ReceivedState | None = None
    ack_epoch: str | None = None
    floor: int = 1
    missing: tuple[int, ...] = ()
    clock: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Header:
    """The signed header. `created` is the writer's wall clock (seconds)."""

    sender: str
    recipient: str
    epoch: str
    created: float
    nonce: bytes
    encrypted: bool
    link: LinkFields = LinkFields()
    frames: tuple[FrameInfo, ...] = ()


class KeySource(Protocol):
    """What a reader needs to know about keys; `mesh.crypto.Keyring` is the real one."""

    @property
    def me(self) -> str: ...

    def public(self, name: str) -> PublicIdentity | None: ...

    def link_key(self, sender: str, recipient: str) -> bytes: ...

    def requires_encryption(self, peer: str) -> bool: ...


# -- writing ---------------------------------------------------------------------------


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
    link: LinkFields = LinkFields(),
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
    link: LinkFields = LinkFields(),
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
    link: LinkFields = LinkFields(),
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
    head_size = len(head(bytes(count * _FRAME_ENTRY.size))) + SIGNATURE_SIZE
    out.write(bytes(head_size))  # no mesh file (bad magic) until the real header is in
    size, entries = head_size, list[bytes]()
    for codec, data in stored:
        index = len(entries)
        if index == count:
            raise ValueError(f"more than the {count} frames announced")
        out.write(data)
        size += len(data)
        seq = 0 if seqs is None else seqs[index]
        entries.append(_FRAME_ENTRY.pack(len(data), codec, seq, _digest(data)))
        del data  # hold no frame while the next one is made
    if len(entries) != count:
        raise ValueError(f"{len(entries)} frames, not the {count} announced")
    signed = head(b"".join(entries))
    signed += identity.sign(signed)
    if len(signed) != head_size:  # cannot happen: the table's size is all that varies
        raise AssertionError(f"header of {len(signed)} bytes over a {head_size}-byte space")
    out.seek(start)
    out.write(signed)
    out.seek(start + size)
    return size


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
        "b": link.floor,
        "m": list(link.missing),
        "c": dict(link.clock),
        "f": table,
    }
    head: bytes = msgpack.packb(header, use_bin_type=True)
    return _PREFIX.pack(MAGIC, VERSION, len(head)) + head


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
        data = seal(key, _frame_nonce(nonce, index), data, _frame_aad(sender, recipient, index))
    return codec, data


def _may_compress(payload: Buffer) -> bool:
    """Whether zstd may win on `payload`: a big one is judged by a sample from its middle
    (already compressed or encrypted bodies do not shrink; trying costs a pass over them)."""
    if len(payload) < _SAMPLE_FROM:
        return True
    middle = len(payload) // 2
    sample = payload[middle : middle + _SAMPLE]
    return len(bounded.compress(sample)) < 0.9 * len(sample)


def _digest(data: Buffer) -> bytes:
    return bytes(xxhash.xxh3_128_digest(data))


def _frame_nonce(nonce: bytes, index: int) -> bytes:
    return nonce + index.to_bytes(NONCE_SIZE - FILE_NONCE_SIZE, "big")


def _frame_aad(sender: str, recipient: str, index: int) -> bytes:
    return f"mesh/1 {sender}>{recipient} #{index}".encode()


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedHeader:
    """A verified header and where each frame lies in the file (offset, stored length)."""

    header: Header
    size: int  # the file's full size as the header declares it
    spans: tuple[tuple[int, int], ...]


def header_size(data: bytes, limits: Limits = Limits()) -> int:
    """How many leading bytes `read_header` needs; `data` must hold at least the prefix."""
    magic, version, head_len = _prefix(data, limits)
    del magic, version
    return PREFIX_SIZE + head_len + SIGNATURE_SIZE


def _prefix(data: bytes, limits: Limits) -> tuple[bytes, int, int]:
    if len(data) < PREFIX_SIZE:
        raise FormatError("truncated", f"file cut short: {len(data)} bytes, not even a prefix")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("bad-magic", "not a mesh file (bad magic)")
    if version != VERSION:
        raise FormatError("bad-version", f"mesh file version {version}; this mesh reads {VERSION}")
    if head_len > limits.max_header:
        raise FormatError("bad-header", f"header of {head_len} bytes is over {limits.max_header}")
    return magic, version, head_len


def read_header(data: bytes, keys: KeySource, limits: Limits = Limits()) -> ParsedHeader:
    """Check and parse the header at the start of `data` (frames need not be there).

    Order: prefix, bounded header decode, recipient is us, sender is known, signature,
    then every field. `FormatError` says what failed; nothing is trusted before the
    signature is checked.
    """
    need = header_size(data, limits)
    if len(data) < need:
        raise FormatError("truncated", f"file cut short inside its header ({len(data)} bytes)")
    head_end = need - SIGNATURE_SIZE
    raw = _header_map(data[PREFIX_SIZE:head_end], limits)
    sender, recipient = raw.get("s"), raw.get("r")
    if recipient != keys.me:
        raise FormatError("wrong-recipient", f"addressed to {recipient!r}, not {keys.me!r}")
    public = keys.public(sender) if isinstance(sender, str) else None
    if public is None:
        raise FormatError("unknown-sender", f"sender {sender!r} is not a peer we talk to")
    if not public.verify(data[:head_end], data[head_end:need]):
        raise FormatError("bad-signature", f"signature does not verify as {sender}'s")
    header = _header_fields(raw, limits)
    if not header.encrypted and keys.requires_encryption(header.sender):
        raise FormatError("not-encrypted", f"link {header.sender}>{keys.me} must be encrypted")
    spans, offset = [], need
    for frame in header.frames:
        spans.append((offset, frame.length))
        offset += frame.length
    return ParsedHeader(header, offset, tuple(spans))


def _header_map(region: bytes, limits: Limits) -> dict[str, Any]:
    bounds = bounded.MsgpackBounds(
        max_bin=limits.max_frames * _FRAME_ENTRY.size,
        max_str=256,
        max_array=limits.max_ranges + 2,
        max_map=limits.max_clock + 16,
    )
    try:
        raw, end = bounded.unpack_prefix(region, bounds)
    except bounded.DecodeError as exc:
        raise FormatError("bad-header", f"header is not valid msgpack: {exc}") from None
    if region[end:].strip(b"\0"):
        raise FormatError("bad-header", "header has bytes after its map that are not padding")
    if not isinstance(raw, dict):
        raise FormatError("bad-header", "header is not a map")
    return raw


def _header_fields(raw: dict[str, Any], limits: Limits) -> Header:
    """The typed header of a signed map; FormatError("bad-header") naming the bad field."""

    def bad(what: str) -> FormatError:
        return FormatError("bad-header", f"header field {what}")

    sender, recipient, epoch, created = raw.get("s"), raw.get("r"), raw.get("e"), raw.get("t")
    nonce, encrypted, table = raw.get("n"), raw.get("x"), raw.get("f")
    if not (isinstance(sender, str) and _PEER.fullmatch(sender)):
        raise bad("s (sender) is not a peer name")
    if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch)):
        raise bad("e (epoch) is not 16 hex digits")
    if not (type(created) is float and math.isfinite(created)):
        raise bad("t (created) is not a finite time")
    if not (isinstance(nonce, bytes) and len(nonce) == FILE_NONCE_SIZE):
        raise bad(f"n (nonce) is not {FILE_NONCE_SIZE} bytes")
    if type(encrypted) is not bool:
        raise bad("x (encrypted) is not a bool")
    return Header(
        sender=sender,
        recipient=str(recipient),
        epoch=epoch,
        created=created,
        nonce=nonce,
        encrypted=encrypted,
        link=_link_fields(raw, limits),
        frames=_frame_table(table, limits),
    )


def _link_fields(raw: dict[str, Any], limits: Limits) -> LinkFields:
    ack_epoch, floor, missing = raw.get("ae"), raw.get("b", 1), raw.get("m", [])
    if ack_epoch is not None and not (isinstance(ack_epoch, str) and _EPOCH.fullmatch(ack_epoch)):
        raise FormatError("bad-header", "header field ae (ack epoch) is not 16 hex digits")
    if type(floor) is not int or floor < 1:
        raise FormatError("bad-header", "header field b (floor) is not a whole number >= 1")
    ok = isinstance(missing, list) and len(missing) <= limits.max_ranges
    if not ok or not all(type(seq) is int and seq >= 1 for seq in missing):
        raise FormatError("bad-header", "header field m (missing) is not a list of numbers")
    return LinkFields(
        ack=_ack(raw.get("a"), limits),
        ack_epoch=ack_epoch,
        floor=floor,
        missing=tuple(missing),
        clock=_clock(raw.get("c", {}), limits),
    )


def _ack(value: Any, limits: Limits) -> ReceivedState | None:
    if value is None:
        return None
    try:
        return ReceivedState.from_wire(value, limits.max_ranges)
    except ValueError as exc:
        raise FormatError("bad-header", f"header field a (ack): {exc}") from None


def _clock(value: Any, limits: Limits) -> dict[str, int]:
    ok = (
        isinstance(value, dict)
        and len(value) <= limits.max_clock
        and all(
            isinstance(k, str) and _PEER.fullmatch(k) and type(v) is int and v >= 0
            for k, v in value.items()
        )
    )
    if not ok:
        raise FormatError("bad-header", "header field c (clock) is not a map of peer to count")
    return dict(value)


def _frame_table(table: Any, limits: Limits) -> tuple[FrameInfo, ...]:
    if not isinstance(table, bytes) or len(table) % _FRAME_ENTRY.size:
        raise FormatError("bad-header", "header field f (frames) is not a frame table")
    frames = []
    for length, codec, seq, digest in _FRAME_ENTRY.iter_unpack(table):
        if length > limits.max_frame or codec not in (Codec.RAW, Codec.ZSTD):
            raise FormatError("bad-header", f"frame of {length} bytes, codec {codec}: refused")
        frames.append(FrameInfo(length, Codec(codec), seq, digest))
    if len(frames) > limits.max_frames:
        raise FormatError("bad-header", f"{len(frames)} frames is over {limits.max_frames}")
    return tuple(frames)


def open_frame(
    parsed: ParsedHeader, index: int, stored: Buffer, keys: KeySource, limits: Limits = Limits()
) -> Buffer:
    """The envelope bytes of frame `index`, given its stored bytes (returned as they are
    for a raw frame); FormatError if bad."""
    header = parsed.header
    info = header.frames[index]
    if len(stored) != info.length:
        raise FormatError("truncated", f"frame {index} cut short")
    if _digest(stored) != info.digest:
        raise _corrupt(index)
    data = stored
    if header.encrypted:
        key = keys.link_key(header.sender, header.recipient)
        aad = _frame_aad(header.sender, header.recipient, index)
        opened = unseal(key, _frame_nonce(header.nonce, index), stored, aad)
        if opened is None:
            raise FormatError("frame-corrupt", f"frame {index} does not decrypt")
        data = opened
    if info.codec == Codec.ZSTD:
        try:
            data = bounded.decompress(data, limits.max_message)
        except bounded.DecodeError as exc:
            raise FormatError("frame-corrupt", f"frame {index}: {exc}") from None
    elif len(data) > limits.max_message:
        raise FormatError("frame-corrupt", f"frame {index} is over {limits.max_message} bytes")
    return data


def _corrupt(index: int) -> FormatError:
    return FormatError("frame-corrupt", f"frame {index} does not match its digest")


@dataclass(frozen=True)
class DecodedFile:
    """A decoded file: one entry per declared frame, None where it was cut or damaged.

    `problems` says, per missing frame, why; `complete` is True when every frame is here.
    """

    header: Header
    frames: tuple[bytes | None, ...]
    problems: tuple[str, ...]
    cut_short: bool = False  # the file ends before the size its header declares

    @property
    def complete(self) -> bool:
        return all(f is not None for f in self.frames)

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.frames) if f is None)


def decode_file(data: bytes, keys: KeySource, limits: Limits = Limits()) -> DecodedFile:
    """Decode a whole file held in memory.

    A file longer than its header declares is refused ("trailing-bytes"): mesh never
    appends, so the extra bytes mean someone else wrote into it.
    """
    parsed = _checked_header(data, len(data), keys, limits)

    def take(index: int, offset: int, length: int) -> bytes:
        return bytes(open_frame(parsed, index, data[offset : offset + length], keys, limits))

    frames, problems = _each_frame(parsed, len(data), take)
    return DecodedFile(parsed.header, frames, problems, len(data) < parsed.size)


@dataclass(frozen=True)
class ScannedFile:
    """A file checked on disk without holding its frames: per frame, whether it is all
    there and matches its digest (`intact`), and why each one that is not is not."""

    parsed: ParsedHeader
    intact: tuple[bool, ...]
    problems: tuple[str, ...]
    cut_short: bool = False  # the file ends before the size its header declares

    @property
    def header(self) -> Header:
        return self.parsed.header

    @property
    def complete(self) -> bool:
        return all(self.intact)

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(i for i, ok in enumerate(self.intact) if not ok)


_CHUNK = 1 << 20  # how much of a frame scan_file reads at a time


def scan_file(f: BinaryIO, keys: KeySource, limits: Limits = Limits()) -> ScannedFile:
    """Check the file open as `f` (seekable, binary) as `decode_file` does, in memory
    bounded by the header and one chunk: the same checks and FormatErrors for the header
    and the file's size, then each frame's digest, read a chunk at a time. A frame that
    is intact may still not open (sealed under another key, a bad zstd stream):
    `read_frame` tells."""
    f.seek(0)
    head = _read_up_to(f, PREFIX_SIZE)
    if len(head) == PREFIX_SIZE:  # else read_header says the file is cut short
        head += _read_up_to(f, header_size(head, limits) - PREFIX_SIZE)
    size = f.seek(0, io.SEEK_END)
    parsed = _checked_header(head, size, keys, limits)

    buffer = ReadBuffer()

    def take(index: int, offset: int, length: int) -> bool:
        f.seek(offset)
        digest = xxhash.xxh3_128()
        left = length
        while left:
            chunk = buffer.view(min(left, _CHUNK))
            got = f.readinto(chunk)  # type: ignore[attr-defined]
            if not got:  # shrank since we measured it
                raise FormatError("truncated", f"frame {index} cut short")
            digest.update(chunk[:got])
            left -= got
        if digest.digest() != parsed.header.frames[index].digest:
            raise _corrupt(index)
        return True

    found, problems = _each_frame(parsed, size, take)
    intact = tuple(ok is not None for ok in found)
    return ScannedFile(parsed, intact, problems, size < parsed.size)


def read_frame(
    f: BinaryIO,
    parsed: ParsedHeader,
    index: int,
    keys: KeySource,
    limits: Limits = Limits(),
    buffer: ReadBuffer | None = None,
) -> Buffer:
    """The envelope bytes of frame `index` of the file open as `f`, whose header is
    `parsed` (from `scan_file`); FormatError when it is cut short or does not open. With
    `buffer`, a raw frame comes as a view of it, valid until the buffer's next use."""
    offset, length = parsed.spans[index]
    if f.seek(0, io.SEEK_END) < offset + length:  # an empty frame too, past the cut
        raise FormatError("truncated", f"frame {index} cut short")
    f.seek(offset)
    if buffer is None:
        return open_frame(parsed, index, _read_up_to(f, length), keys, limits)
    stored = buffer.view(length)
    got = 0
    while got < length and (more := f.readinto(stored[got:])):  # type: ignore[attr-defined]
        got += more
    return open_frame(parsed, index, stored[:got], keys, limits)


class ReadBuffer:
    """One buffer read into again and again, instead of a new one per read (big reads
    cost page faults each time). A view it gave is overwritten by its next use."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def view(self, size: int) -> memoryview:
        """A view of `size` bytes of the buffer (grown as needed: a view given before
        keeps the old buffer alive, never resized under it)."""
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        return memoryview(self._buffer)[:size]


def _checked_header(head: bytes, size: int, keys: KeySource, limits: Limits) -> ParsedHeader:
    """`read_header` of `head`, the start of a file of `size` bytes, refusing a file
    longer than its header declares."""
    parsed = read_header(head, keys, limits)
    if size > parsed.size:
        raise FormatError("trailing-bytes", f"{size - parsed.size} bytes after the last frame")
    return parsed


_T = TypeVar("_T")


def _each_frame(
    parsed: ParsedHeader, size: int, take: Callable[[int, int, int], _T]
) -> tuple[tuple[_T | None, ...], tuple[str, ...]]:
    """`take(index, offset, length)` of each frame a file of `size` bytes holds whole,
    None for the others and where `take` raised FormatError; and why, per None."""
    results: list[_T | None] = []
    problems = []
    for index, (offset, length) in enumerate(parsed.spans):
        try:
            if offset + length > size:
                raise FormatError("truncated", f"frame {index} cut short")
            results.append(take(index, offset, length))
        except FormatError as exc:
            results.append(None)
            problems.append(str(exc))
    return tuple(results), tuple(problems)


def _read_up_to(f: BinaryIO, size: int) -> bytes:
    """`size` bytes from `f`, fewer only at its end."""
    data = f.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    left = size - len(data)
    while left and (more := f.read(left)):
        parts.append(more)
        left -= len(more)
    return b"".join(parts)


__all__ = [
    "MAGIC",
    "TAG_SIZE",
    "VERSION",
    "Codec",
    "DecodedFile",
    "FrameInfo",
    "Header",
    "KeySource",
    "Limits",
    "LinkFields",
    "ParsedHeader",
    "ReadBuffer",
    "ScannedFile",
    "assemble",
    "decode_file",
    "encode_file",
    "header_size",
    "open_frame",
    "read_frame",
    "read_header",
    "scan_file",
    "write_file",
]
