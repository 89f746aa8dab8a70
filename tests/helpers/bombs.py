"""Inputs made to exhaust a decoder."""

from __future__ import annotations

import io

import zstandard


def zstd_bomb(size: int, declare_size: bool) -> bytes:
    """`size` bytes of zeros, zstd-compressed (a few KiB), its size declared or not."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare_size)
    with cctx.stream_writer(out, size=size if declare_size else -1, closefd=False) as writer:
        zeros = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            writer.write(zeros)
    return out.getvalue()
