"""The mesh file format's layout, version 2: what every part of a file is, shared by the
writer and the reader (`fileformat` has the whole picture).

Frame digests are BLAKE3-256, a cryptographic hash: the signed header lists them, so the
signature vouches for every frame. (Version 1 listed xxh3-128 digests, which anyone can
make collide from xxh3's public secret; its files are refused.) Small frames share one
digest with their neighbours (`blocks`): hashed one by one, 1 KiB messages would cost
more in digest calls than in everything else.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Protocol, TypeAlias

import blake3

from ..proto.link import LinkFields
from .crypto import NONCE_SIZE, PublicIdentity

Buffer: TypeAlias = bytes | memoryview  # a frame's bytes, perhaps a view of a buffer

MAGIC = b"MESH"
VERSION = 2
PREFIX = struct.Struct(">4sBI")
PREFIX_SIZE = PREFIX.size
DIGEST_SIZE = 32
FRAME_ENTRY = struct.Struct(">QBQ32s")  # stored length, codec, seq, BLAKE3-256 digest
FILE_NONCE_SIZE = 8
SMALL_FRAME = 4096  # stored bytes: a frame of at most this shares a digest (see `blocks`)
BLOCK = 64 << 10  # stored bytes of small frames under one digest at most
NO_DIGEST = bytes(32)  # listed for a frame whose block's digest is listed further on
EPOCH = re.compile(r"[0-9a-f]{16}")
NO_LINK = LinkFields()  # a file that tells nothing about the link (tests, tools)


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


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class FrameInfo:
    length: int
    codec: Codec
    seq: int
    digest: bytes


@dataclass(frozen=True)
class Header:
    """The signed header. `created` is the writer's wall clock (seconds)."""

    sender: str
    recipient: str
    epoch: str
    created: float
    nonce: bytes
    encrypted: bool
    link: LinkFields = NO_LINK
    frames: tuple[FrameInfo, ...] = ()


class KeySource(Protocol):
    """What a reader needs to know about keys; `mesh.wire.crypto.Keyring` is the real one."""

    @property
    def me(self) -> str: ...

    def public(self, name: str) -> PublicIdentity | None: ...

    def link_key(self, sender: str, recipient: str) -> bytes: ...

    def requires_encryption(self, peer: str) -> bool: ...


def digest(data: Buffer) -> bytes:
    """A frame's digest, as the frame table lists it."""
    return new_digest(data).digest()


def new_digest(data: Buffer = b"") -> blake3.blake3:
    """A frame digest to feed piece by piece (``update``), then read (``digest``)."""
    return blake3.blake3(data)


def blocks(lengths: Sequence[int]) -> list[range]:
    """The frames under each digest, in file order, from the frames' stored lengths: a
    frame over `SMALL_FRAME` bytes alone; consecutive small frames together, up to
    `BLOCK` bytes. A block's digest covers its frames' stored bytes back to back and is
    listed at its last frame (the others list `NO_DIGEST`). Whether a frame starts a new
    block depends only on it and the frames before it, so a writer decides as it goes."""
    found, start, size = [], 0, 0
    for index, length in enumerate(lengths):
        if index > start and not joins(lengths[start], size, length):
            found.append(range(start, index))
            start, size = index, 0
        size += length
    if start < len(lengths):
        found.append(range(start, len(lengths)))
    return found


def joins(first: int, size: int, length: int) -> bool:
    """Whether a frame of `length` joins a block of `size` bytes whose first frame has
    `first` bytes."""
    return small(first) and small(length) and size + length <= BLOCK


def small(length: int) -> bool:
    """Whether a frame of `length` stored bytes may share its digest."""
    return length <= SMALL_FRAME


def frame_nonce(nonce: bytes, index: int) -> bytes:
    """The AES-GCM nonce of frame `index` of the file with nonce `nonce`."""
    return nonce + index.to_bytes(NONCE_SIZE - FILE_NONCE_SIZE, "big")


def frame_aad(sender: str, recipient: str, index: int) -> bytes:
    """What a sealed frame is bound to: its link and its place in the file."""
    return f"mesh/{VERSION} {sender}>{recipient} #{index}".encode()
