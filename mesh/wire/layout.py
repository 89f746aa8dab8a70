"""The mesh file format's layout, version 2: what every part of a file is, shared by the
writer and the reader (`fileformat` has the whole picture).

Frame digests are BLAKE3-256, a cryptographic hash: the signed header lists them, so the
signature vouches for every frame. (Version 1 listed xxh3-128 digests, which anyone can
make collide from xxh3's public secret; its files are refused.)
"""

from __future__ import annotations

import re
import struct
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


def frame_nonce(nonce: bytes, index: int) -> bytes:
    """The AES-GCM nonce of frame `index` of the file with nonce `nonce`."""
    return nonce + index.to_bytes(NONCE_SIZE - FILE_NONCE_SIZE, "big")


def frame_aad(sender: str, recipient: str, index: int) -> bytes:
    """What a sealed frame is bound to: its link and its place in the file."""
    return f"mesh/{VERSION} {sender}>{recipient} #{index}".encode()
