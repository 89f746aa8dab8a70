"""The file format against every fault a pipe or a forger can produce."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import pytest
import xxhash
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import FormatError, MessageError
from mesh.proto.received import ReceivedState
from mesh.wire import bounded, layout
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity, Keyring
from mesh.wire.messages import (
    UNREADABLE,
    Control,
    Datagram,
    Envelope,
    Fragment,
    Kind,
    Request,
    Response,
    fragment_head,
    pack,
    unpack_envelope,
    unpack_fragment,
    unreadable,
)
from tests.helpers.bombs import zstd_bomb
from tests.helpers.keys import keyring_for

NONCE = b"\x01" * wire.FILE_NONCE_SIZE
EPOCH = "0123456789abcdef"
ID = "ab" * 16
TRANSFER = "cd" * 16
LINK = wire.LinkFields(
    ack=ReceivedState(7, ((9, 12),)),
    ack_epoch="fedcba9876543210",
    floor=5,
    missing=(3, 4),
    clock={"alpha": 3, "carol": 0},
)

MESSAGES = [
    Request(
        ID,
        "POST",
        "/orders?x=1&y=%C3%A9",
        ((b"content-type", b"application/octet-stream"), (b"x-raw", b"\xff\xfe latin \xe9")),
        bytes(range(256)) * 3 + b"\x80\x81 not utf-8 \xc3\x28",
        1_800_000_000.5,
    ),
    Response(ID, 418, ((b"content-encoding", b"gzip"),), b"\x1f\x8b\x08\x00" + os.urandom(64)),
    Response(ID, 204, (), b""),
    Request(
        ID, "PUT", "/big", (), b"", 1.5, body_length=40 << 20, body_id=TRANSFER
    ),  # body in fragments
    Response(ID, 200, (), b"", body_length=3 << 30, body_id=TRANSFER),
    Response(ID, 200, ((b"content-type", b"text/event-stream"),), b"", body_id=TRANSFER),  # head
    Fragment(ID, TRANSFER, 3, 1024, 4096, b"\x00" * 512 + os.urandom(512)),
    Fragment(ID, TRANSFER, 0, 7 << 30, None, b"a body that streams"),  # its total not known
    Control("missing", {"seq": [4, 5, 9], "note": "frames cut"}),
    Datagram(ID, b"\x00\xff opaque"),
    Request(ID, "GET", "/", (), b"a" * 100_000, 1.0),  # compressible: zstd codec
]


def encode(
    identities: dict[str, Identity],
    frames: list[bytes],
    *,
    sender: str = "alpha",
    recipient: str = "bravo",
    encrypted: bool = False,
) -> bytes:
    keys = keyring_for(identities, sender, (recipient,), encrypted)
    return wire.encode_file(
        identities[sender],
        recipient=recipient,
        epoch=EPOCH,
        created=1_700_000_000.25,
        nonce=NONCE,
        frames=frames,
        seqs=list(range(1, len(frames) + 1)),
        link_key=keys.sending_key(recipient),
        link=LINK,
    )


def write(
    out: BinaryIO,
    identities: dict[str, Identity],
    frames: Iterable[bytes],
    count: int,
    *,
    encrypted: bool = False,
) -> int:
    """`wire.write_file` with the arguments `encode` gives `encode_file`."""
    keys = keyring_for(identities, "alpha", ("bravo",), encrypted)
    return wire.write_file(
        out,
        identities["alpha"],
        recipient="bravo",
        epoch=EPOCH,
        created=1_700_000_000.25,
        nonce=NONCE,
        frames=frames,
        count=count,
        seqs=list(range(1, count + 1)),
        link_key=keys.sending_key("bravo"),
        link=LINK,
    )


def packed_frames() -> list[bytes]:
    return [pack(Envelope(seq, m)) for seq, m in enumerate(MESSAGES, start=1)]


@pytest.mark.parametrize("encrypted", [False, True])
def test_round_trip_of_every_message_kind(identities: dict[str, Identity], encrypted: bool) -> None:
    frames = packed_frames()
    data = encode(identities, frames, encrypted=encrypted)
    decoded = wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",), encrypted))
    assert decoded.complete and not decoded.problems
    envelopes = [unpack_envelope(f, 1 << 20) for f in decoded.frames if f is not None]
    assert [e.message for e in envelopes] == MESSAGES
    assert [e.seq for e in envelopes] == list(range(1, len(MESSAGES) + 1))
    header = decoded.header
    assert (header.sender, header.recipient, header.epoch) == ("alpha", "bravo", EPOCH)
    assert header.created == 1_700_000_000.25 and header.encrypted is encrypted
    assert header.link == LINK
    assert [f.seq for f in header.frames] == list(range(1, len(MESSAGES) + 1))
    assert wire.Codec.ZSTD in {f.codec for f in header.frames}
    if encrypted:
        assert MESSAGES[0].body not in data  # type: ignore[union-attr]


def test_heartbeat_is_a_file_without_frames(identities: dict[str, Identity]) -> None:
    data = encode(identities, [])
    decoded = wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",)))
    assert decoded.frames == () and decoded.complete


@pytest.mark.parametrize("encrypted", [False, True])
def test_flipping_any_single_byte_is_detected(
    identities: dict[str, Identity], encrypted: bool
) -> None:
    frames = [pack(Envelope(1, MESSAGES[2])), pack(Envelope(2, MESSAGES[3])), b"\x93\x04\x03\xa1x"]
    data = encode(identities, frames, encrypted=encrypted)
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    for offset in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            try:
                decoded = wire.decode_file(bytes(damaged), keys)
            except FormatError:
                continue
            assert not decoded.complete, f"flip at {offset} ^{mask:#x} went unnoticed"
            for got, want in zip(decoded.frames, frames, strict=True):
                assert got is None or got == want


@pytest.mark.parametrize("encrypted", [False, True])
def test_truncation_at_every_offset_keeps_exactly_the_whole_blocks(
    identities: dict[str, Identity], encrypted: bool
) -> None:
    frames = [os.urandom(40), b"b" * 300, pack(Envelope(3, MESSAGES[0])), b"", b"tail"]
    data = encode(identities, frames, encrypted=encrypted)
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    parsed = wire.read_header(data, keys)
    for cut in range(len(data)):
        try:
            decoded = wire.decode_file(data[:cut], keys)
        except FormatError as exc:
            assert cut < parsed.spans[0][0], f"cut at {cut} lost the whole file: {exc}"
            continue
        whole = {  # frames whose whole block arrived (small frames share a digest)
            i
            for block in parsed.blocks
            if all(sum(parsed.spans[j]) <= cut for j in block)
            for i in block
        }
        assert {i for i, f in enumerate(decoded.frames) if f is not None} == whole
        for i in whole:
            assert decoded.frames[i] == frames[i]


def test_forged_signature_is_rejected(identities: dict[str, Identity]) -> None:
    forger = Identity.generate("alpha")  # claims to be alpha, with other keys
    data = wire.encode_file(
        forger, recipient="bravo", epoch=EPOCH, created=1.0, nonce=NONCE, frames=[b"x"]
    )
    with pytest.raises(FormatError) as caught:
        wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",)))
    assert caught.value.reason == "bad-signature"


def test_altered_header_is_rejected_even_if_well_formed(identities: dict[str, Identity]) -> None:
    data = encode(identities, [b"x"])
    altered = data.replace(b"bravo", b"bravx", 1).replace(b"bravx", b"bravo", 1)
    assert altered == data  # sanity: the replace trick round trips
    head_end = wire.header_size(data) - 64
    tampered = data[:head_end].replace(b"\xa5alpha", b"\xa5carol", 1) + data[head_end:]
    keys = keyring_for(identities, "bravo", ("alpha", "carol"))
    with pytest.raises(FormatError) as caught:
        wire.decode_file(tampered, keys)
    assert caught.value.reason == "bad-signature"


# The low halves of xxh3's public secret at offsets 0 and 8 (xxhash.h, XXH3_kSecret).
XXH3_SECRET_LOWS = (bytes.fromhex("b8fe6c39"), bytes.fromhex("7c01812c"))


def xxh3_twins(size: int = 1024) -> tuple[bytes, bytes]:
    """Two different frames with the same xxh3-128, made without any key.

    Past 240 bytes xxh3 adds each 8-byte word of a 64-byte stripe to a neighbouring
    accumulator and multiplies its halves after xoring the secret: a word whose low half
    equals the secret's multiplies to 0 whatever its high half. Two such words in lane 0
    of stripes 0 and 1 add to the same accumulator, so raising one high half by `d` and
    lowering the other by `d` changes the bytes and not the hash."""
    base = bytearray(random.Random(7).randbytes(size))
    twins = []
    for shift in (0, 0x1234567):
        frame = bytearray(base)
        for offset, low, high in ((0, XXH3_SECRET_LOWS[0], 1000), (64, XXH3_SECRET_LOWS[1], 5000)):
            moved = (high + shift) if offset == 0 else (high - shift)
            frame[offset : offset + 8] = low + struct.pack("<I", moved % 2**32)
        twins.append(bytes(frame))
    return twins[0], twins[1]


def test_a_frame_swapped_for_its_xxh3_twin_is_refused(identities: dict[str, Identity]) -> None:
    """Version 1 checked a frame against the xxh3-128 its signed header listed: the twin
    would have passed. Version 2 lists BLAKE3-256, which no one can match this way."""
    honest, forged = xxh3_twins()
    assert honest != forged
    assert xxhash.xxh3_128_digest(honest) == xxhash.xxh3_128_digest(forged)  # v1's check
    keys = keyring_for(identities, "bravo", ("alpha",))
    data = encode(identities, [honest])
    offset, length = wire.read_header(data, keys).spans[0]
    assert data[offset : offset + length] == honest  # stored as it is (it does not compress)
    swapped = data[:offset] + forged + data[offset + length :]
    decoded = wire.decode_file(swapped, keys)
    assert decoded.frames == (None,) and not decoded.complete
    assert "frame 0" in decoded.problems[0]
    assert wire.decode_file(data, keys).frames == (honest,)


def test_unknown_sender_is_rejected(identities: dict[str, Identity]) -> None:
    data = encode(identities, [b"x"], sender="carol")
    with pytest.raises(FormatError) as caught:
        wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",)))
    assert caught.value.reason == "unknown-sender"


def test_wrong_recipient_is_rejected(identities: dict[str, Identity]) -> None:
    data = encode(identities, [b"x"], recipient="carol")
    with pytest.raises(FormatError) as caught:
        wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",)))
    assert caught.value.reason == "wrong-recipient"


def test_plain_file_on_an_encrypted_link_is_refused(identities: dict[str, Identity]) -> None:
    data = encode(identities, [b"x"], encrypted=False)
    with pytest.raises(FormatError) as caught:
        wire.decode_file(data, keyring_for(identities, "bravo", ("alpha",), encrypted=True))
    assert caught.value.reason == "not-encrypted"


def test_sealed_frames_do_not_open_under_another_link(identities: dict[str, Identity]) -> None:
    """A frame sealed for alpha>bravo, relabelled as carol's, does not decrypt for carol."""
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted=True)
    sealed = wire.encode_file(
        identities["alpha"],
        recipient="bravo",
        epoch=EPOCH,
        created=1.0,
        nonce=NONCE,
        frames=[b"secret"],
        link_key=keys.link_key("alpha", "bravo"),
    )
    stored = sealed[wire.read_header(sealed, keys).spans[0][0] :]
    replayed = wire.assemble(
        identities["carol"],
        recipient="bravo",
        epoch=EPOCH,
        created=1.0,
        nonce=NONCE,
        encrypted=True,
        stored=[(wire.Codec.RAW, stored)],
    )
    decoded = wire.decode_file(replayed, keyring_for(identities, "bravo", ("carol",), True))
    assert decoded.frames == (None,) and "decrypt" in decoded.problems[0]


GARBAGE = [
    (b"", "truncated"),
    (b"MES", "truncated"),
    (b"NOPE\x01\x00\x00\x00\x10" + b"\x00" * 100, "bad-magic"),
    (b"MESH\x09\x00\x00\x00\x10" + b"\x00" * 100, "bad-version"),
    (b"MESH\x01\x00\x00\x00\x10" + b"\x00" * 100, "bad-version"),  # v1: xxh3 digests
    (b"MESH\x02\xff\xff\xff\xff" + b"\x00" * 100, "bad-header"),
    (b"MESH\x02\x00\x00\x00\x05" + b"\xdd\xff\xff\xff\xff" + b"\x00" * 64, "bad-header"),
    (b"MESH\x02\x00\x00\x00\x05" + b"\xc1" * 5 + b"\x00" * 64, "bad-header"),
]


@pytest.mark.parametrize(("data", "reason"), GARBAGE)
def test_garbage_is_refused_with_a_reason(bravo_keys: Keyring, data: bytes, reason: str) -> None:
    with pytest.raises(FormatError) as caught:
        wire.decode_file(data, bravo_keys)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_trailing_bytes_are_refused(identities: dict[str, Identity], bravo_keys: Keyring) -> None:
    with pytest.raises(FormatError) as caught:
        wire.decode_file(encode(identities, [b"x"]) + b"more", bravo_keys)
    assert caught.value.reason == "trailing-bytes"


@pytest.mark.parametrize("declare_size", [True, False])
def test_decompression_bomb_is_refused(
    identities: dict[str, Identity], bravo_keys: Keyring, declare_size: bool
) -> None:
    bomb = zstd_bomb(64 << 20, declare_size)
    data = wire.assemble(
        identities["alpha"],
        recipient="bravo",
        epoch=EPOCH,
        created=1.0,
        nonce=NONCE,
        encrypted=False,
        stored=[(wire.Codec.ZSTD, bomb)],
    )
    limits = wire.Limits(max_message=1 << 20)
    decoded = wire.decode_file(data, bravo_keys, limits)
    assert decoded.frames == (None,)
    assert "more than" in decoded.problems[0]


def test_a_zstd_frame_decompresses_to_exactly_what_it_declares() -> None:
    data = b"0123456789abcdef" * 100
    frame = bounded.compress(data)
    assert zstandard.frame_content_size(frame) == len(data)  # ours always declare it
    assert bounded.decompress(frame, len(data)) == data
    with pytest.raises(bounded.DecodeError, match="more than 100 bytes"):
        bounded.decompress(frame, 100)
    with pytest.raises(bounded.DecodeError, match="unused data"):
        bounded.decompress(frame + frame, 1 << 20)  # a second frame is never ours
    with pytest.raises(bounded.DecodeError, match="bad zstd data"):
        bounded.decompress(frame[:-4], 1 << 20)


BOUNDED_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from tests.helpers.bombs import zstd_bomb
    from mesh.wire import bounded
    from mesh.wire.messages import unpack_envelope
    from mesh.errors import MessageError
    bomb = zstd_bomb(1 << 30, declare_size=False)  # 1 GiB of zeros in ~32 KiB
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        bounded.decompress(bomb, 8 << 20)
        raise SystemExit("bomb accepted")
    except bounded.DecodeError:
        pass
    for evil in (b"\\xdd\\xff\\xff\\xff\\xff", b"\\x91" * 200000 + b"\\xc0",
                 b"\\xc6\\xff\\xff\\xff\\xff", b"\\x9f" + b"\\xdd\\x00\\x10\\x00\\x00" * 15):
        try:
            unpack_envelope(evil, 1 << 20)
            raise SystemExit("msgpack bomb accepted")
        except MessageError:
            pass
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(grew)
    """
)


def test_bombs_are_refused_within_bounded_memory() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", BOUNDED_MEMORY_SCRIPT, root],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    grew_kib = int(out.stdout.strip())
    assert grew_kib < 64 * 1024, f"peak memory grew by {grew_kib} KiB"


@pytest.mark.parametrize(
    "fields",
    [
        [1, 1, "short-id", "GET", "/", [], b"", 1.0, None, None],
        [1, 1, ID, "G ET", "/", [], b"", 1.0, None, None],
        [1, 1, ID, "GET", "no-slash", [], b"", 1.0, None, None],
        [1, 1, ID, "GET", "/", [b"odd"], b"", 1.0, None, None],
        [1, 1, ID, "GET", "/", ["text", b"v"], b"", 1.0, None, None],
        [1, 1, ID, "GET", "/", [], "str body", 1.0, None, None],
        [1, 1, ID, "GET", "/", [], b"", float("inf"), None, None],
        [1, 1, ID, "GET", "/", [], b"inline too", 1.0, 10, TRANSFER],  # inline and fragmented
        [1, 1, ID, "GET", "/", [], b"", 1.0, -1, TRANSFER],
        [1, 1, ID, "GET", "/", [], b"", 1.0, 10, None],  # fragmented, but no transfer named
        [1, 1, ID, "PUT", "/", [], b"inline", 1.0, None, TRANSFER],  # inline, length to come
        [1, 1, ID, "GET", "/", [], b"", 1.0, 10, "not-an-id"],
        [2, 1, ID, 999, [], b"", None, None],
        [2, 1, ID, 200, [], b"", "10", TRANSFER],
        [2, 1, ID, 200, [], b"a head has no body", None, TRANSFER],
        [3, 1, ID, TRANSFER, 0, 10, -1, b"x"],
        [3, 1, ID, TRANSFER, 0, 10, 5, b"too long for total"],
        [3, 1, ID, "bad", 0, 0, 5, b"x"],
        [4, 1, "Bad Op", {}],
        [9, 1],
        [1, -1, ID, "GET", "/", [], b"", 1.0, None, None],
        [1, 1, ID, "GET", "/", [], b"", 1.0, None],
        {"not": "a list"},
    ],
)
def test_malformed_messages_are_refused(fields: object) -> None:
    with pytest.raises(MessageError):
        unpack_envelope(msgpack.packb(fields, use_bin_type=True), 1 << 20)


def test_message_body_over_the_limit_is_refused() -> None:
    data = pack(Envelope(1, Response(ID, 200, (), b"x" * 2000)))
    with pytest.raises(MessageError):
        unpack_envelope(data, 1000)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=600) | st.just(b"z" * 700), max_size=6),
    encrypted=st.booleans(),
    cut=st.integers(min_value=0),
    flip=st.integers(min_value=0),
)
def test_any_frames_survive_the_pipe_or_are_flagged(
    identities: dict[str, Identity], frames: list[bytes], encrypted: bool, cut: int, flip: int
) -> None:
    """Round trip, then a random cut and a random flip: never a wrong frame."""
    data = encode(identities, frames, encrypted=encrypted)
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    assert wire.decode_file(data, keys).frames == tuple(frames)
    damaged = bytearray(data[: cut % (len(data) + 1)])
    if damaged:
        damaged[flip % len(damaged)] ^= 0x20
    try:
        decoded = wire.decode_file(bytes(damaged), keys)
    except FormatError:
        return
    for got, want in zip(decoded.frames, frames, strict=True):
        assert got is None or got == want


# -- big files: write_file, scan_file, read_frame ---------------------------------------

SMALL_FRAMES = [os.urandom(40), b"b" * 300, pack(Envelope(3, MESSAGES[0])), b"", b"tail"]


def assert_streaming_agrees(data: bytes, keys: Keyring) -> None:
    """scan_file + read_frame on `data` as a file say what decode_file says of it."""
    try:
        decoded = wire.decode_file(data, keys)
    except FormatError as exc:
        with pytest.raises(FormatError) as caught:
            wire.scan_file(io.BytesIO(data), keys)
        assert (caught.value.reason, str(caught.value)) == (exc.reason, str(exc))
        return
    f = io.BytesIO(data)
    scanned = wire.scan_file(f, keys)
    assert scanned.header == decoded.header
    assert scanned.missing == decoded.missing
    assert scanned.problems == decoded.problems
    assert scanned.cut_short == decoded.cut_short
    assert scanned.complete == decoded.complete
    for index, want in enumerate(decoded.frames):
        if want is None:
            assert not scanned.intact[index]
            with pytest.raises(FormatError):
                wire.read_frame(f, scanned.parsed, index, keys)
        else:
            assert scanned.intact[index]
            assert wire.read_frame(f, scanned.parsed, index, keys) == want


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_write_file_writes_what_encode_file_makes(
    identities: dict[str, Identity], encrypted: bool, count: int
) -> None:
    frames = (packed_frames() * 2)[:count]
    taken: list[int] = []

    def lazily() -> Iterator[bytes]:
        for index, frame in enumerate(frames):
            taken.append(index)
            yield frame

    out = io.BytesIO()
    size = write(out, identities, lazily(), count, encrypted=encrypted)
    assert out.getvalue() == encode(identities, frames, encrypted=encrypted)
    assert size == len(out.getvalue()) == out.tell()
    assert taken == list(range(count))


@pytest.mark.parametrize(("yields", "count"), [(2, 3), (3, 2), (1, 0)])
def test_write_file_refuses_another_number_of_frames_than_announced(
    identities: dict[str, Identity], yields: int, count: int
) -> None:
    with pytest.raises(ValueError, match="announced"):
        write(io.BytesIO(), identities, [b"frame"] * yields, count)


@pytest.mark.parametrize("encrypted", [False, True])
def test_scan_and_read_frame_agree_with_decode_file(
    identities: dict[str, Identity], encrypted: bool
) -> None:
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    data = encode(identities, packed_frames(), encrypted=encrypted)
    assert_streaming_agrees(data, keys)
    scanned = wire.scan_file(io.BytesIO(data), keys)
    assert scanned.complete and not scanned.missing and not scanned.cut_short
    assert_streaming_agrees(encode(identities, [], encrypted=encrypted), keys)


@pytest.mark.parametrize("encrypted", [False, True])
def test_scan_agrees_with_decode_file_at_every_truncation(
    identities: dict[str, Identity], encrypted: bool
) -> None:
    data = encode(identities, SMALL_FRAMES, encrypted=encrypted)
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    first_frame = wire.read_header(data, keys).spans[0][0]
    for cut in range(len(data) + 1):
        assert_streaming_agrees(data[:cut], keys)
        if cut < first_frame:  # cut inside the header: refused, as decode_file does
            with pytest.raises(FormatError) as caught:
                wire.scan_file(io.BytesIO(data[:cut]), keys)
            assert caught.value.reason == "truncated"


@pytest.mark.parametrize("encrypted", [False, True])
def test_scan_finds_a_corrupted_frame_as_decode_file_does(
    identities: dict[str, Identity], encrypted: bool
) -> None:
    data = encode(identities, SMALL_FRAMES, encrypted=encrypted)
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    parsed = wire.read_header(data, keys)
    offset, length = parsed.spans[1]
    damaged = bytearray(data)
    damaged[offset + length // 2] ^= 0x04
    assert_streaming_agrees(bytes(damaged), keys)
    scanned = wire.scan_file(io.BytesIO(bytes(damaged)), keys)
    assert scanned.missing == tuple(parsed.block_of(1))  # it shares a digest with these
    assert "does not match its digest" in scanned.problems[0]
    assert not scanned.cut_short


def test_scan_agrees_with_decode_file_on_any_flipped_byte(
    identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    data = encode(identities, SMALL_FRAMES)
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        assert_streaming_agrees(bytes(damaged), bravo_keys)


def test_scan_refuses_trailing_bytes(identities: dict[str, Identity], bravo_keys: Keyring) -> None:
    data = encode(identities, SMALL_FRAMES) + b"more"
    assert_streaming_agrees(data, bravo_keys)
    with pytest.raises(FormatError) as caught:
        wire.scan_file(io.BytesIO(data), bravo_keys)
    assert caught.value.reason == "trailing-bytes"


@pytest.mark.parametrize(("data", "reason"), GARBAGE)
def test_scan_refuses_garbage_with_the_same_reason(
    bravo_keys: Keyring, data: bytes, reason: str
) -> None:
    with pytest.raises(FormatError) as caught:
        wire.scan_file(io.BytesIO(data), bravo_keys)
    assert caught.value.reason == reason
    assert_streaming_agrees(data, bravo_keys)


class ReadLog(io.BytesIO):
    """A file that notes how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)

    def readinto(self, buffer: Any, /) -> int:
        self.asked.append(len(buffer))
        return super().readinto(buffer)


def test_scan_reads_the_header_then_frames_a_chunk_at_a_time(
    identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    frames = [os.urandom(3 << 20), os.urandom(10), os.urandom(1 << 20)]
    data = encode(identities, frames)
    f = ReadLog(data)
    scanned = wire.scan_file(f, bravo_keys)
    assert scanned.complete
    need = wire.header_size(data)
    assert f.asked[:2] == [wire.PREFIX_SIZE, need - wire.PREFIX_SIZE]
    assert f.asked[2:] == [1 << 20] * 3 + [10, 1 << 20]
    assert [wire.read_frame(f, scanned.parsed, i, bravo_keys) for i in range(3)] == frames
    buffer = wire.ReadBuffer()  # the same frames, read into one buffer again and again
    for i, frame in enumerate(frames):
        assert wire.read_frame(f, scanned.parsed, i, bravo_keys, buffer=buffer) == frame
    huge = ReadLog(b"MESH\x02\xff\xff\xff\xff" + b"\x00" * 100)
    with pytest.raises(FormatError, match="header of"):
        wire.scan_file(huge, bravo_keys)
    assert huge.asked == [wire.PREFIX_SIZE]  # refused before reading the header


def test_read_frame_of_a_cut_frame_is_refused(
    identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    data = encode(identities, SMALL_FRAMES)
    parsed = wire.read_header(data, bravo_keys)
    offset, length = parsed.spans[1]
    with pytest.raises(FormatError) as caught:
        wire.read_frame(io.BytesIO(data[: offset + length - 1]), parsed, 1, bravo_keys)
    assert caught.value.reason == "truncated"


BIG_FRAMES, BIG_FRAME = 64, 4 << 20


def test_big_files_are_written_and_read_in_bounded_memory(
    identities: dict[str, Identity], tmp_path: Path
) -> None:
    """256 MiB of incompressible frames through a real file, holding about a frame at a
    time: write_file pulls each frame as it goes, scan_file and read_frame read one."""
    digests: list[bytes] = []

    def frames() -> Iterator[bytes]:
        rng = random.Random(20240601)
        for _ in range(BIG_FRAMES):
            frame = rng.randbytes(BIG_FRAME)
            digests.append(xxhash.xxh3_128_digest(frame))
            yield frame

    keys = keyring_for(identities, "bravo", ("alpha",))
    path = tmp_path / "big.mesh"
    started = time.monotonic()
    tracemalloc.start()
    try:
        with open(path, "w+b") as out:
            size = write(out, identities, frames(), BIG_FRAMES)
        _, wrote_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(path, "rb") as f:
            scanned = wire.scan_file(f, keys)
            assert scanned.complete and not scanned.cut_short
            for index in range(BIG_FRAMES):
                frame = wire.read_frame(f, scanned.parsed, index, keys)
                assert xxhash.xxh3_128_digest(frame) == digests[index]
                del frame
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == path.stat().st_size > BIG_FRAMES * BIG_FRAME
    assert [f.codec for f in scanned.header.frames] == [wire.Codec.RAW] * BIG_FRAMES
    assert wrote_peak < 24 << 20, f"writing peaked at {wrote_peak >> 20} MiB"
    assert read_peak < 24 << 20, f"reading peaked at {read_peak >> 20} MiB"
    print(f"peaks {wrote_peak >> 20}/{read_peak >> 20} MiB in {time.monotonic() - started:.1f}s")


def test_a_big_frame_that_does_not_compress_is_stored_raw(identities: dict[str, Identity]) -> None:
    noise, text = os.urandom(2 << 20), b"compressible " * (200 << 10)
    data = encode(identities, [noise, text])
    header = wire.read_header(data, keyring_for(identities, "bravo", ("alpha",))).header
    assert [f.codec for f in header.frames] == [wire.Codec.RAW, wire.Codec.ZSTD]
    assert header.frames[0].length == len(noise) and header.frames[1].length < len(text) // 10


@pytest.mark.parametrize("size", [0, 5, 300, 70_000])
def test_a_fragment_frame_built_from_its_head_unpacks_whole_and_without_a_copy(
    size: int,
) -> None:
    data = os.urandom(size)
    empty = pack(Envelope(9, Fragment(ID, TRANSFER, 2, 10, 10 + size, b"")))
    frame = fragment_head(empty, size) + data
    assert unpack_envelope(frame, 1 << 20) == Envelope(
        9, Fragment(ID, TRANSFER, 2, 10, 10 + size, data)
    )
    for built in (frame, pack(Envelope(9, Fragment(ID, TRANSFER, 2, 10, 10 + size, data)))):
        split = unpack_fragment(built, 1 << 20)  # ours, and any packer's (bin 8/16/32)
        assert split is not None
        envelope, view = split
        assert envelope == Envelope(9, Fragment(ID, TRANSFER, 2, 10, 10 + size, b""))
        assert isinstance(view, memoryview) and view == data


def test_only_a_response_with_a_transfer_and_no_length_is_a_head() -> None:
    assert Response(ID, 200, (), b"", body_id=TRANSFER).head
    assert not Response(ID, 200, (), b"", body_length=0, body_id=TRANSFER).head
    assert not Response(ID, 200, (), b"").head


def test_a_request_ahead_of_a_body_of_a_size_not_said_crosses_as_such() -> None:
    """A transfer and no length: its body's size is told at its end (``ended``)."""
    request = Request(ID, "PUT", "/x", (), b"", 1.0, None, TRANSFER)
    assert request.unsized and not Request(ID, "PUT", "/x", (), b"", 1.0, 0, TRANSFER).unsized
    assert unpack_envelope(pack(Envelope(3, request)), 1 << 20) == Envelope(3, request)


def test_a_fragment_of_a_body_that_streams_splits_like_any_other() -> None:
    frame = pack(Envelope(4, Fragment(ID, TRANSFER, 0, 1 << 40, None, b"piece")))
    split = unpack_fragment(frame, 1 << 20)
    assert split is not None
    assert split[0] == Envelope(4, Fragment(ID, TRANSFER, 0, 1 << 40, None, b""))
    assert split[1] == b"piece"


def test_only_well_formed_fragments_are_split() -> None:
    assert unpack_fragment(pack(Envelope(1, Datagram(ID, b"x" * 100))), 1 << 20) is None
    frame = pack(Envelope(1, Fragment(ID, TRANSFER, 0, 0, 100, b"x" * 100)))
    assert unpack_fragment(frame[:-1], 1 << 20) is None  # cut: unpacked whole, and refused
    with pytest.raises(MessageError):
        unpack_envelope(frame[:-1], 1 << 20)
    empty = pack(Envelope(1, Fragment(ID, TRANSFER, 0, 0, 100, b"")))
    past = fragment_head(empty, 101) + b"y" * 101  # more data than its total
    with pytest.raises(MessageError):
        unpack_fragment(past, 1 << 20)
    with pytest.raises(ValueError):
        fragment_head(pack(Envelope(1, Datagram(ID, b"z"))), 1)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64),
    cut=st.integers(min_value=0, max_value=200),
    noise=st.binary(max_size=8),
    at=st.integers(min_value=0, max_value=200),
)
def test_a_split_fragment_agrees_with_unpacking_it_whole(
    data: bytes, cut: int, noise: bytes, at: int
) -> None:
    """Any bytes near a fragment frame: split only if whole unpacking gives the same."""
    frame = pack(Envelope(3, Fragment(ID, TRANSFER, 1, 4, 4 + len(data), data)))
    frame = frame[:at] + noise + frame[at + len(noise) :] if noise else frame[: len(frame) - cut]
    try:
        split = unpack_fragment(frame, 1 << 20)
    except MessageError:
        split = None
        with pytest.raises(MessageError):
            unpack_envelope(frame, 1 << 20)
    if split is not None:
        envelope, view = split
        whole = unpack_envelope(frame, 1 << 20)
        assert isinstance(whole.message, Fragment)
        assert envelope == Envelope(whole.seq, dataclasses.replace(whole.message, data=b""))
        assert bytes(view) == whole.message.data


# -- blocks: small frames share a digest ---------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "grouped"),
    [
        ([], []),
        ([100] * 3, [range(0, 3)]),
        ([5000, 100, 100], [range(0, 1), range(1, 3)]),  # a big frame alone
        ([100, 5000, 100], [range(0, 1), range(1, 2), range(2, 3)]),
        ([4096] * 17, [range(0, 16), range(16, 17)]),  # 64 KiB at most under one digest
        ([0, 0, 4097], [range(0, 2), range(2, 3)]),
    ],
)
def test_small_frames_share_a_digest_up_to_a_block(
    lengths: list[int], grouped: list[range]
) -> None:
    assert layout.blocks(lengths) == grouped


def test_a_block_is_checked_whole_wherever_it_is_read(
    identities: dict[str, Identity], bravo_keys: Keyring
) -> None:
    """Small frames read one by one from a file are each checked with their block (read
    once per block with a buffer); a block changed after the scan is refused."""
    frames = [os.urandom(1000) for _ in range(100)]  # stored raw: blocks of 65 and 35
    data = encode(identities, frames)
    f = io.BytesIO(data)
    scanned = wire.scan_file(f, bravo_keys)
    assert [len(b) for b in scanned.parsed.blocks] == [65, 35] and scanned.complete
    buffer = wire.ReadBuffer()
    assert [
        bytes(wire.read_frame(f, scanned.parsed, i, bravo_keys, buffer=buffer)) for i in range(100)
    ] == frames
    offset, _ = scanned.parsed.spans[70]
    changed = bytearray(data)
    changed[offset] ^= 1
    with pytest.raises(FormatError, match="does not match its digest"):
        wire.read_frame(io.BytesIO(bytes(changed)), scanned.parsed, 65, bravo_keys)
    assert (
        bytes(wire.read_frame(io.BytesIO(bytes(changed)), scanned.parsed, 3, bravo_keys))
        == frames[3]
    )


def test_an_unreadable_request_or_response_still_names_its_id() -> None:
    """What `unpack_envelope` refuses can still be answered when its kind and id read."""
    too_many = Request("a" * 32, "GET", "/x", tuple((b"h", b"v") for _ in range(1100)), b"", 1.0)
    data = pack(Envelope(7, too_many))
    with pytest.raises(MessageError):
        unpack_envelope(data, len(data))
    found = unreadable(data, "too many headers")
    assert found == (
        Kind.REQUEST,
        Control(UNREADABLE, {"id": "a" * 32, "problem": "too many headers"}),
    )
    bad_status = msgpack.packb([Kind.RESPONSE, 3, "b" * 32, 999, [], b"", None, None])
    assert unreadable(bad_status, "bad status") == (
        Kind.RESPONSE,
        Control(UNREADABLE, {"id": "b" * 32, "problem": "bad status"}),
    )
    assert unreadable(msgpack.packb([Kind.REQUEST, 3, "not an id"]), "x") is None
    assert unreadable(msgpack.packb([Kind.DATAGRAM, 3, "c" * 32, b""]), "x") is None
    assert unreadable(b"\xc1", "x") is None
