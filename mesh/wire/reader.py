"""Reading mesh files: nothing is trusted before the signature checks out, and
everything decoded is bounded by `Limits`. A truncated file keeps the frames that
arrived whole. See `fileformat`."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from ..errors import FormatError
from ..proto.link import LinkFields
from ..proto.received import ReceivedState
from . import bounded
from .crypto import SIGNATURE_SIZE, unseal
from .layout import (
    DEFAULT_LIMITS,
    EPOCH,
    FILE_NONCE_SIZE,
    FRAME_ENTRY,
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    VERSION,
    Buffer,
    Codec,
    FrameInfo,
    Header,
    KeySource,
    Limits,
    blocks,
    frame_aad,
    frame_nonce,
    new_digest,
)
from .names import PEER_NAME


@dataclass(frozen=True)
class ParsedHeader:
    """A verified header and where each frame lies in the file (offset, stored length)."""

    header: Header
    size: int  # the file's full size as the header declares it
    spans: tuple[tuple[int, int], ...]
    blocks: tuple[range, ...] = ()  # the frames under each digest (`layout.blocks`)
    in_block: tuple[int, ...] = ()  # per frame, the number of its block

    def block_of(self, index: int) -> range:
        """The block frame `index` is in."""
        return self.blocks[self.in_block[index]]


def header_size(data: bytes, limits: Limits = DEFAULT_LIMITS) -> int:
    """How many leading bytes `read_header` needs; `data` must hold at least the prefix."""
    magic, version, head_len = _prefix(data, limits)
    del magic, version
    return PREFIX_SIZE + head_len + SIGNATURE_SIZE


def _prefix(data: bytes, limits: Limits) -> tuple[bytes, int, int]:
    if len(data) < PREFIX_SIZE:
        raise FormatError("truncated", f"file cut short: {len(data)} bytes, not even a prefix")
    magic, version, head_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("bad-magic", "not a mesh file (bad magic)")
    if version != VERSION:
        why = " (its frame digests, xxh3, vouch for nothing)" if version < VERSION else ""
        detail = f"mesh file version {version}{why}; this mesh reads version {VERSION} only"
        raise FormatError("bad-version", detail)
    if head_len > limits.max_header:
        raise FormatError("bad-header", f"header of {head_len} bytes is over {limits.max_header}")
    return magic, version, head_len


def read_header(data: bytes, keys: KeySource, limits: Limits = DEFAULT_LIMITS) -> ParsedHeader:
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
        detail = f"addressed to {_shown(recipient)}, not {keys.me!r}"
        raise FormatError("wrong-recipient", detail)
    public = keys.public(sender) if isinstance(sender, str) else None
    if public is None:
        raise FormatError("unknown-sender", f"sender {_shown(sender)} is not a peer we talk to")
    if not public.verify(data[:head_end], data[head_end:need]):
        raise FormatError("bad-signature", f"signature does not verify as {sender}'s")
    header = _header_fields(raw, limits)
    if not header.encrypted and keys.requires_encryption(header.sender):
        raise FormatError("not-encrypted", f"link {header.sender}>{keys.me} must be encrypted")
    spans, offset = [], need
    for frame in header.frames:
        spans.append((offset, frame.length))
        offset += frame.length
    grouped = tuple(blocks([frame.length for frame in header.frames]))
    numbers = tuple(number for number, block in enumerate(grouped) for _ in block)
    return ParsedHeader(header, offset, tuple(spans), grouped, numbers)


def _shown(value: object, most: int = 64) -> str:
    """An unchecked `value` as a line may show it: a string, cut to `most` characters;
    anything else by its type and size (never whole: it may be a megabyte)."""
    if value is None:
        return "none"
    if isinstance(value, str):
        text = repr(value[:most])
        return text if len(value) <= most else f"{text}... ({len(value)} characters)"
    if isinstance(value, bytes | list | dict):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _header_map(region: bytes, limits: Limits) -> dict[str, Any]:
    bounds = bounded.MsgpackBounds(
        max_bin=limits.max_frames * FRAME_ENTRY.size,
        max_str=256,
        max_array=limits.max_ranges + 2,
        max_map=limits.max_clock + 16,
        max_arrays=limits.max_ranges + 8,  # the ack's ranges, the ack, missing, unseen
        max_maps=4,  # the header, its clock
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
    if not (isinstance(sender, str) and PEER_NAME.fullmatch(sender)):
        raise bad("s (sender) is not a peer name")
    if not (isinstance(epoch, str) and EPOCH.fullmatch(epoch)):
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
    session, ack_session = raw.get("ss"), raw.get("as")
    for key, value in (("ae", ack_epoch), ("ss", session), ("as", ack_session)):
        if value is not None and not (isinstance(value, str) and EPOCH.fullmatch(value)):
            raise FormatError("bad-header", f"header field {key} is not 16 hex digits")
    if type(floor) is not int or floor < 1:
        raise FormatError("bad-header", "header field b (floor) is not a whole number >= 1")
    written, unseen = raw.get("w", 0), raw.get("u", [])
    if type(written) is not int or written < 0:
        raise FormatError("bad-header", "header field w (written) is not a whole number >= 0")
    for key, seqs in (("m (missing)", missing), ("u (unseen)", unseen)):
        ok = isinstance(seqs, list) and len(seqs) <= limits.max_ranges
        if not ok or not all(type(seq) is int and seq >= 1 for seq in seqs):
            raise FormatError("bad-header", f"header field {key} is not a list of numbers")
    return LinkFields(
        ack=_ack(raw.get("a"), limits),
        ack_epoch=ack_epoch,
        session=session,
        ack_session=ack_session,
        floor=floor,
        missing=tuple(missing),
        written=written,
        unseen=tuple(unseen),
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
            isinstance(k, str) and PEER_NAME.fullmatch(k) and type(v) is int and v >= 0
            for k, v in value.items()
        )
    )
    if not ok:
        raise FormatError("bad-header", "header field c (clock) is not a map of peer to count")
    return dict(value)


def _frame_table(table: Any, limits: Limits) -> tuple[FrameInfo, ...]:
    if not isinstance(table, bytes) or len(table) % FRAME_ENTRY.size:
        raise FormatError("bad-header", "header field f (frames) is not a frame table")
    frames = []
    for length, codec, seq, listed in FRAME_ENTRY.iter_unpack(table):
        if length > limits.max_frame or codec not in (Codec.RAW, Codec.ZSTD):
            raise FormatError("bad-header", f"frame of {length} bytes, codec {codec}: refused")
        frames.append(FrameInfo(length, Codec(codec), seq, listed))
    if len(frames) > limits.max_frames:
        raise FormatError("bad-header", f"{len(frames)} frames is over {limits.max_frames}")
    return tuple(frames)


def open_frame(
    parsed: ParsedHeader,
    index: int,
    stored: Buffer,
    keys: KeySource,
    limits: Limits = DEFAULT_LIMITS,
) -> Buffer:
    """The envelope bytes of frame `index`, given its stored bytes, already checked
    against their block's digest (returned as they are for a raw frame); FormatError if
    they do not open."""
    header = parsed.header
    info = header.frames[index]
    if len(stored) != info.length:
        raise FormatError("truncated", f"frame {index} cut short")
    data = stored
    if header.encrypted:
        key = keys.link_key(header.sender, header.recipient)
        aad = frame_aad(header.sender, header.recipient, index)
        opened = unseal(key, frame_nonce(header.nonce, index), stored, aad)
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


Hasher = Any  # what `layout.new_digest` makes: update(bytes), digest()


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


def decode_file(data: bytes, keys: KeySource, limits: Limits = DEFAULT_LIMITS) -> DecodedFile:
    """Decode a whole file held in memory.

    A file longer than its header declares is refused ("trailing-bytes"): mesh never
    appends, so the extra bytes mean someone else wrote into it.
    """
    parsed = _checked_header(data, len(data), keys, limits)
    view = memoryview(data)

    def hash_span(hasher: Hasher, index: int, offset: int, length: int) -> None:
        hasher.update(view[offset : offset + length])

    def take(index: int, offset: int, length: int) -> bytes:
        return bytes(open_frame(parsed, index, data[offset : offset + length], keys, limits))

    frames, problems = _each_frame(parsed, len(data), hash_span, take)
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


def scan_file(f: BinaryIO, keys: KeySource, limits: Limits = DEFAULT_LIMITS) -> ScannedFile:
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

    def hash_span(hasher: Hasher, index: int, offset: int, length: int) -> None:
        f.seek(offset)
        left = length
        while left:
            chunk = buffer.view(min(left, _CHUNK))
            got = f.readinto(chunk)  # type: ignore[attr-defined]
            if not got:  # shrank since we measured it
                raise FormatError("truncated", f"frame {index} cut short")
            hasher.update(chunk[:got])
            left -= got

    found, problems = _each_frame(parsed, size, hash_span, lambda *_: True)
    intact = tuple(ok is not None for ok in found)
    return ScannedFile(parsed, intact, problems, size < parsed.size)


def read_frame(
    f: BinaryIO,
    parsed: ParsedHeader,
    index: int,
    keys: KeySource,
    limits: Limits = DEFAULT_LIMITS,
    buffer: ReadBuffer | None = None,
) -> Buffer:
    """The envelope bytes of frame `index` of the file open as `f`, whose header is
    `parsed` (from `scan_file`), checked again against its digest (the file may have
    changed since); FormatError when it is cut short, does not match or does not open.
    A small frame is read with its block (kept in `buffer` for the next frames of it);
    with `buffer`, a raw frame with a digest of its own comes as a view of it, valid
    until the buffer's next use."""
    block = parsed.block_of(index)
    if len(block) > 1:
        whole, start = _verified_block(f, parsed, block, buffer), parsed.spans[block[0]][0]
        offset, length = parsed.spans[index]
        return open_frame(
            parsed, index, whole[offset - start : offset - start + length], keys, limits
        )
    stored = _read_span(f, parsed, index, buffer)
    if new_digest(stored).digest() != parsed.header.frames[index].digest:
        raise _corrupt(index)
    return open_frame(parsed, index, stored, keys, limits)


def _read_span(f: BinaryIO, parsed: ParsedHeader, index: int, buffer: ReadBuffer | None) -> Buffer:
    """The stored bytes of frame `index` (into `buffer` when given); FormatError when
    the file is cut before its end."""
    offset, length = parsed.spans[index]
    if f.seek(0, io.SEEK_END) < offset + length:  # an empty frame too, past the cut
        raise FormatError("truncated", f"frame {index} cut short")
    f.seek(offset)
    if buffer is None:
        return _read_up_to(f, length)
    stored = buffer.view(length)
    got = 0
    while got < length and (more := f.readinto(stored[got:])):  # type: ignore[attr-defined]
        got += more
    return stored[:got]


def _verified_block(
    f: BinaryIO, parsed: ParsedHeader, block: range, buffer: ReadBuffer | None
) -> bytes:
    """The stored bytes of `block` (small frames, at most `layout.BLOCK`), checked
    against its digest; the last one read is kept in `buffer`."""
    if buffer is not None and buffer.block is not None:
        kept_parsed, kept_start, kept = buffer.block
        if kept_parsed is parsed and kept_start == block.start:
            return kept
    start, (last, length) = parsed.spans[block[0]][0], parsed.spans[block[-1]]
    f.seek(start)
    whole = _read_up_to(f, last + length - start)
    if len(whole) < last + length - start:
        raise FormatError("truncated", f"frame {block[-1]} cut short")
    if new_digest(whole).digest() != parsed.header.frames[block[-1]].digest:
        raise _corrupt(block[-1])
    if buffer is not None:
        buffer.block = (parsed, block.start, whole)
    return whole


class ReadBuffer:
    """One buffer read into again and again, instead of a new one per read (big reads
    cost page faults each time). A view it gave is overwritten by its next use."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.block: tuple[ParsedHeader, int, bytes] | None = None  # a verified block

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
    parsed: ParsedHeader,
    size: int,
    hash_span: Callable[[Hasher, int, int, int], None],
    take: Callable[[int, int, int], _T],
) -> tuple[tuple[_T | None, ...], tuple[str, ...]]:
    """`take(index, offset, length)` of each frame of a file of `size` bytes whose block is
    whole and matches its digest (fed by `hash_span(hasher, index, offset, length)`), None
    for the others and where `take` raised FormatError; and why, per None."""
    results: list[_T | None] = []
    problems: list[str] = []
    for block in parsed.blocks:
        try:
            _check_block(parsed, size, block, hash_span)
        except FormatError as exc:
            results.extend(None for _ in block)
            problems.extend(_per_frame(exc, index) for index in block)
            continue
        for index in block:
            try:
                results.append(take(index, *parsed.spans[index]))
            except FormatError as exc:
                results.append(None)
                problems.append(str(exc))
    return tuple(results), tuple(problems)


def _check_block(
    parsed: ParsedHeader,
    size: int,
    block: range,
    hash_span: Callable[[Hasher, int, int, int], None],
) -> None:
    """FormatError unless every frame of `block` is in a file of `size` bytes and their
    bytes (back to back in the file: hashed in one go) match the digest listed at its
    last frame."""
    start = parsed.spans[block[0]][0]
    for index in block:
        offset, length = parsed.spans[index]
        if offset + length > size:
            raise FormatError("truncated", f"frame {index} cut short")
    hasher = new_digest()
    end = parsed.spans[block[-1]][0] + parsed.spans[block[-1]][1]
    hash_span(hasher, block[0], start, end - start)
    if hasher.digest() != parsed.header.frames[block[-1]].digest:
        raise _corrupt(block[-1])


def _per_frame(error: FormatError, index: int) -> str:
    """What `error` about a block means for its frame `index`."""
    if error.reason == "truncated":
        return f"frame {index} cut short"
    return f"frame {index} does not match its digest"


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
