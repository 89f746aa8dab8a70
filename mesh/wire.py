"""The mesh file format, version 1. Pure: bytes in, bytes out, no I/O, no clock.

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
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any, Protocol

import msgpack
import xxhash

from . import bounded
from .crypto import NONCE_SIZE, SIGNATURE_SIZE, TAG_SIZE, Identity, PublicIdentity, seal, unseal
from .errors import FormatError
from .received import ReceivedState

MAGIC = b"MESH"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")
PREFIX_SIZE = _PREFIX.size
_FRAME_ENTRY = struct.Struct(">QBQ16s")  # stored length, codec, seq, xxh3-128 digest
FILE_NONCE_SIZE = 8
_PEER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_EPOCH = re.compile(r"[0-9a-f]{16}")
_COMPRESS_FROM = 128  # smaller frames are stored raw: zstd cannot win back its overhead


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
    if len(nonce) != FILE_NONCE_SIZE:
        raise ValueError(f"nonce must be {FILE_NONCE_SIZE} bytes")
    stored = [
        _store_frame(i, payload, identity.name, recipient, nonce, link_key)
        for i, payload in enumerate(frames)
    ]
    return assemble(
        identity,
        recipient=recipient,
        epoch=epoch,
        created=created,
        nonce=nonce,
        encrypted=link_key is not None,
        stored=stored,
        seqs=seqs,
        link=link,
    )


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
    header = {
        "s": identity.name,
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
        "f": b"".join(
            _FRAME_ENTRY.pack(len(data), codec, seq, _digest(data))
            for (codec, data), seq in zip(stored, seqs or [0] * len(stored), strict=True)
        ),
    }
    head = msgpack.packb(header, use_bin_type=True)
    prefix = _PREFIX.pack(MAGIC, VERSION, len(head))
    signature = identity.sign(prefix + head)
    return b"".join([prefix, head, signature, *(s for _, s in stored)])


def _store_frame(
    index: int, payload: bytes, sender: str, recipient: str, nonce: bytes, key: bytes | None
) -> tuple[Codec, bytes]:
    codec, data = Codec.RAW, payload
    if len(payload) >= _COMPRESS_FROM:
        packed = bounded.compress(payload)
        if len(packed) < len(payload):
            codec, data = Codec.ZSTD, packed
    if key is not None:
        data = seal(key, _frame_nonce(nonce, index), data, _frame_aad(sender, recipient, index))
    return codec, data


def _digest(data: bytes) -> bytes:
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
    parsed: ParsedHeader, index: int, stored: bytes, keys: KeySource, limits: Limits = Limits()
) -> bytes:
    """The envelope bytes of frame `index`, given its stored bytes; FormatError if bad."""
    header = parsed.header
    info = header.frames[index]
    if len(stored) != info.length:
        raise FormatError("truncated", f"frame {index} cut short")
    if _digest(stored) != info.digest:
        raise FormatError("frame-corrupt", f"frame {index} does not match its digest")
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
    parsed = read_header(data, keys, limits)
    if len(data) > parsed.size:
        raise FormatError("trailing-bytes", f"{len(data) - parsed.size} bytes after the last frame")
    frames: list[bytes | None] = []
    problems = []
    for index, (offset, length) in enumerate(parsed.spans):
        if offset + length > len(data):
            frames.append(None)
            problems.append(f"frame {index} cut short")
            continue
        try:
            frames.append(open_frame(parsed, index, data[offset : offset + length], keys, limits))
        except FormatError as exc:
            frames.append(None)
            problems.append(str(exc))
    return DecodedFile(parsed.header, tuple(frames), tuple(problems), len(data) < parsed.size)


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
    "assemble",
    "decode_file",
    "encode_file",
    "header_size",
    "open_frame",
    "read_header",
]
