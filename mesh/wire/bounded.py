"""Decoding untrusted bytes within fixed bounds: msgpack with explicit limits, zstd with an
output cap that holds even when the frame lies about its size."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

ZSTD_WINDOW_LIMIT = 1 << 24  # 16 MiB: refuse frames that would make zstd allocate more


class DecodeError(ValueError):
    """Untrusted bytes broke a bound or were malformed; the message says which."""


@dataclass(frozen=True)
class MsgpackBounds:
    """Each bound is per item (``max_array``: the length of one array); `max_arrays`
    and `max_maps`, when set, bound how many there are in all (nested empty arrays cost
    a byte each to send and an object each to decode)."""

    max_bin: int
    max_str: int = 64 * 1024
    max_array: int = 4096
    max_map: int = 1024
    max_arrays: int | None = None
    max_maps: int | None = None


def _counted(most: int | None, what: str) -> Callable[[Any], Any] | None:
    """A hook msgpack calls with each array (or map) decoded, raising DecodeError past
    `most` of them; None when there is no bound."""
    if most is None:
        return None
    seen = itertools.count(1)

    def hook(item: Any) -> Any:
        if next(seen) > most:
            raise DecodeError(f"bad msgpack: over {most} {what}")
        return item

    return hook


def unpack(data: bytes | memoryview, bounds: MsgpackBounds) -> Any:
    """Exactly one msgpack object filling `data`; extension types are refused."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=bounds.max_bin,
            max_str_len=bounds.max_str,
            max_array_len=bounds.max_array,
            max_map_len=bounds.max_map,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException) as exc:
        # StackError, FormatError and "exceeds max_*_len" are ValueErrors.
        raise DecodeError(f"bad msgpack: {_why(exc)}") from None


def unpack_prefix(data: bytes, bounds: MsgpackBounds) -> tuple[Any, int]:
    """The first msgpack object in `data` and the offset just past it."""
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(len(data), 1),
        max_bin_len=bounds.max_bin,
        max_str_len=bounds.max_str,
        max_array_len=bounds.max_array,
        max_map_len=bounds.max_map,
        max_ext_len=0,
        list_hook=_counted(bounds.max_arrays, "arrays"),
        object_hook=_counted(bounds.max_maps, "maps"),
    )
    unpacker.feed(data)
    try:
        obj = unpacker.unpack()
    except msgpack.OutOfData:
        raise DecodeError("bad msgpack: incomplete object") from None
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"bad msgpack: {_why(exc)}") from None
    return obj, unpacker.tell()


def _why(exc: Exception) -> str:
    """What msgpack's `exc` says; its name when it says nothing (StackError: nested too
    deep)."""
    if isinstance(exc, msgpack.StackError):
        return "nested too deep"
    return str(exc) or type(exc).__name__


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_LIMIT)
    return dctx


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        cctx = _local.cctx = zstandard.ZstdCompressor(level=3)
    return cctx


def compress(data: bytes | memoryview) -> bytes:
    return bytes(_compressor().compress(data))


def decompress(data: bytes | memoryview, cap: int) -> bytes:
    """The decompressed bytes, refusing more than `cap` of output.

    A single frame that declares its size (as ours do) is decompressed in one call: the
    output buffer is that size, already checked against `cap`, and zstd refuses a frame
    whose content differs from it; anything after that frame is refused. Otherwise the
    cap is enforced by reading a stream, never trusting the header.
    """
    declared = zstandard.frame_content_size(data) if len(data) >= 18 else -1
    if declared > cap:
        raise DecodeError(f"decompresses to more than {cap} bytes (declares {declared})")
    if declared >= 0:
        return _decompress_declared(data, declared)
    chunks: list[bytes] = []
    total = 0
    try:
        with _decompressor().stream_reader(data, read_across_frames=True) as reader:
            while chunk := reader.read(min(cap + 1 - total, 1 << 20) or 1):
                total += len(chunk)
                if total > cap:
                    raise DecodeError(f"decompresses to more than {cap} bytes")
                chunks.append(chunk)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"bad zstd data: {exc}") from None
    if declared >= 0 and declared != total:
        raise DecodeError(f"zstd data is cut short ({total} of {declared} bytes)")
    return b"".join(chunks)


def _decompress_declared(data: bytes | memoryview, declared: int) -> bytes:
    try:
        out = _decompressor().decompress(data, max_output_size=declared, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"bad zstd data: {exc}") from None
    if len(out) != declared:
        raise DecodeError(f"zstd data is cut short ({len(out)} of {declared} bytes)")
    return bytes(out)
