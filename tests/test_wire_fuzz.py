"""Decoding hostile files, by hypothesis: random bytes, valid files mutated in many
places, and headers that a peer with a valid key signed but filled with anything. The
decoder raises nothing but `FormatError`, and never hangs (each example is timed)."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.errors import FormatError
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity
from mesh.wire.layout import MAGIC, PREFIX, VERSION
from tests.helpers.keys import keyring_for
from tests.test_wire import encode

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SLOWEST = 2.0  # seconds one decode may take (a hang fails long before the suite's bound)


def decodes_or_refuses(data: bytes, identities: dict[str, Identity], encrypted: bool) -> None:
    keys = keyring_for(identities, "bravo", ("alpha",), encrypted)
    started = time.monotonic()
    try:
        wire.decode_file(data, keys)
    except FormatError as error:
        assert error.reason and str(error)
    assert time.monotonic() - started < SLOWEST


@FUZZ
@given(data=st.binary(max_size=4096), encrypted=st.booleans())
def test_random_bytes(identities: dict[str, Identity], data: bytes, encrypted: bool) -> None:
    decodes_or_refuses(data, identities, encrypted)
    decodes_or_refuses(PREFIX.pack(MAGIC, VERSION, len(data)) + data, identities, encrypted)


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "set"]),
        st.integers(0),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(
    frames=st.lists(st.binary(max_size=300), max_size=4),
    encrypted=st.booleans(),
    edits=EDITS,
)
def test_valid_files_mutated_in_many_places(
    identities: dict[str, Identity],
    frames: list[bytes],
    encrypted: bool,
    edits: list[tuple[str, int, bytes]],
) -> None:
    data = bytearray(encode(identities, frames, encrypted=encrypted))
    for kind, where, some in edits:
        at = where % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= some[0] or 1
        elif kind == "insert":
            data[at:at] = some
        elif kind == "delete":
            del data[at : at + len(some)]
        else:
            data[at : at + len(some)] = some
    decodes_or_refuses(bytes(data), identities, encrypted)


ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["s", "r", "e", "t", "n", "x", "a", "ae", "b", "m", "c", "f", "zz"]),
        ANYTHING,
    ),
    tail=st.binary(max_size=512),
)
def test_headers_signed_by_a_known_peer_but_filled_with_anything(
    identities: dict[str, Identity], fields: dict[str, Any], tail: bytes
) -> None:
    """What a peer whose key is trusted could send: the signature holds, the rest is
    checked field by field."""
    header = {"s": "alpha", "r": "bravo", **fields}
    head = msgpack.packb(header, use_bin_type=True)
    signed = PREFIX.pack(MAGIC, VERSION, len(head)) + head
    data = signed + identities["alpha"].sign(signed) + tail
    decodes_or_refuses(data, identities, False)


def _unsigned(header: Any) -> bytes:
    """A file whose header (unsigned, with a blank signature) is `header`."""
    head = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(MAGIC, VERSION, len(head)) + head + bytes(64)


def test_a_huge_unsigned_name_is_never_repeated_whole(identities: dict[str, Identity]) -> None:
    """A stranger's header naming a recipient or sender of 800 KB: refused, and what
    says why is a line, not 3 MB (it goes to the log and the quarantine's note)."""
    keys = keyring_for(identities, "bravo", ("alpha",))
    for header in ({"r": bytes(800_000)}, {"r": "x" * 200}, {"r": "bravo", "s": [0] * 4000}):
        try:
            wire.decode_file(_unsigned(header), keys)
        except FormatError as error:
            assert error.reason in ("wrong-recipient", "unknown-sender")
            assert len(error.detail) < 200, error.detail[:300]


def test_a_header_of_many_nested_arrays_is_refused_unread(
    identities: dict[str, Identity],
) -> None:
    """Each empty array costs a byte to send and an object to decode: a header of 800 KB
    of them took 0.4 s and 80 MB; refused as soon as there are more than any header
    holds (a full ack holds as many as its ranges)."""
    keys = keyring_for(identities, "bravo", ("alpha",))
    many = [[[] for _ in range(4096)] for _ in range(190)]  # about 780 KB
    started = time.monotonic()
    with pytest.raises(FormatError) as caught:
        wire.decode_file(_unsigned({"r": "bravo", "x": many}), keys)
    assert caught.value.reason == "bad-header" and "over" in caught.value.detail
    assert time.monotonic() - started < 0.1
    full_ack = [7, [[n, n] for n in range(1, 8192, 2)]]  # 4096 ranges: what a peer may send
    with pytest.raises(FormatError) as caught:  # decoded, then refused for its signature
        wire.decode_file(_unsigned({"r": "bravo", "s": "alpha", "a": full_ack}), keys)
    assert caught.value.reason == "bad-signature"


def test_a_header_nested_too_deep_says_so(identities: dict[str, Identity]) -> None:
    keys = keyring_for(identities, "bravo", ("alpha",))
    head = b"\x91" * 600_000 + b"\x90"
    with pytest.raises(FormatError) as caught:
        wire.decode_file(PREFIX.pack(MAGIC, VERSION, len(head)) + head + bytes(64), keys)
    assert caught.value.detail.endswith("bad msgpack: nested too deep")
