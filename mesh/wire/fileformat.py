"""The mesh file format, version 2. No clock, and no I/O but on file objects it is handed.
This module is its public face: `layout` (the parts), `writer` and `reader` hold it.

Layout::

    prefix     b"MESH" | version (u8) | header length (u32, big-endian)
    header     msgpack map, then zero padding up to the header length
    signature  Ed25519 by the sender over prefix + header (64 bytes)
    frames     stored frames back to back, as the header's frame table lists them

The header carries sender, recipient, epoch, creation time, a per-file nonce, whether
frames are sealed, the link fields (ack state, floor, missing hints, the highest number
written before, numbers not seen, clock vector), and a
frame table: per frame its stored length, codec, sequence number and a BLAKE3-256 digest
(small neighbours share one: `layout.blocks`), so a reader knows which messages a cut
file lost without opening them, and the signature vouches for every frame's bytes (a
cryptographic digest: no other bytes match it). A
frame's stored bytes are its envelope, zstd-compressed when that helps, then AES-256-GCM
sealed on encrypted links.

Reading trusts nothing before the signature checks out. Truncation, the common fault,
loses only the frames it cut (and the small frames sharing a digest with them): every
block that arrived whole, with a matching digest, is still good. Everything decoded is
bounded by `Limits`.

Files live in memory (`encode_file`, `decode_file`) or, when big, on disk: `write_file`
and `scan_file`/`read_frame` hold one frame at a time, never the whole file.
"""

from __future__ import annotations

from ..proto.link import LinkFields
from .crypto import TAG_SIZE
from .layout import (
    FILE_NONCE_SIZE,
    MAGIC,
    NO_LINK,
    PREFIX_SIZE,
    VERSION,
    Codec,
    FrameInfo,
    Header,
    KeySource,
    Limits,
)
from .reader import (
    DecodedFile,
    ParsedHeader,
    ReadBuffer,
    ScannedFile,
    decode_file,
    header_size,
    open_frame,
    read_frame,
    read_header,
    scan_file,
)
from .writer import assemble, encode_file, write_file

__all__ = [
    "FILE_NONCE_SIZE",
    "MAGIC",
    "NO_LINK",
    "PREFIX_SIZE",
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
