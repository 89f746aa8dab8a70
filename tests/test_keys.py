"""Key files and link keys."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from Crypto.Signature import eddsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.config import keys
from mesh.errors import KeyFileError
from mesh.wire.crypto import Identity, PublicIdentity, is_curve_point, is_small_order


def test_keygen_creates_private_0600_and_public_files(tmp_path: Path) -> None:
    results = keys.keygen(tmp_path / "keys", ["alpha", "bravo"])
    assert [(r.name, r.action) for r in results] == [("alpha", "created"), ("bravo", "created")]
    for name in ("alpha", "bravo"):
        private = keys.private_path(tmp_path / "keys", name)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        identity = keys.load_identity(tmp_path / "keys", name)
        assert keys.load_public(tmp_path / "keys", name) == identity.public
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha"])
    before = keys.private_path(tmp_path, "alpha").read_bytes()
    results = keys.keygen(tmp_path, ["alpha"])
    assert results[0].action == "kept"
    assert keys.private_path(tmp_path, "alpha").read_bytes() == before


def test_keygen_leaves_a_public_only_peer_alone(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["bravo"])
    keys.private_path(tmp_path, "bravo").unlink()  # bravo runs at another site
    assert keys.keygen(tmp_path, ["bravo"])[0].action == "public-only"
    assert not keys.private_path(tmp_path, "bravo").exists()


def test_keygen_rewrites_a_lost_public_key_from_the_private_one(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha"])
    public = keys.load_public(tmp_path, "alpha")
    keys.public_path(tmp_path, "alpha").unlink()
    assert keys.keygen(tmp_path, ["alpha"])[0].action == "public-written"
    assert keys.load_public(tmp_path, "alpha") == public


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha"])
    keys.private_path(tmp_path, "alpha").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keys.load_identity(tmp_path, "alpha")


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")
def test_a_private_key_of_another_user_is_refused(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha"])
    os.chown(keys.private_path(tmp_path, "alpha"), 65534, 65534)
    with pytest.raises(KeyFileError, match="belongs to uid 65534"):
        keys.load_identity(tmp_path, "alpha")


def test_mismatched_public_key_is_refused(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha", "bravo"])
    keys.public_path(tmp_path, "alpha").write_text(
        keys.public_path(tmp_path, "bravo").read_text().replace("bravo", "alpha")
    )
    with pytest.raises(KeyFileError, match="does not match"):
        keys.load_identity(tmp_path, "alpha")


_A_POINT = base64.b64encode(Identity.generate("alpha").public.sign_key).decode()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("peer: bravo\ned25519: AAAA\nx25519: AAAA\n", "belongs to peer 'bravo'"),
        ("peer: alpha\ned25519: !!!\nx25519: AAAA\n", "base64"),
        ("peer: alpha\ned25519: AAAA\nx25519: AAAA\n", "32 bytes"),
        ("garbage without colon\n", "not a mesh key file"),
        (f"peer: alpha\ned25519: {'/' * 43}=\nx25519: {'A' * 43}=\n", "not a curve point"),
        (f"peer: alpha\ned25519: {_A_POINT}\nx25519: {'A' * 43}=\n", "x25519 key is a point"),
        (f"peer: alpha\ned25519: {'A' * 43}=\nx25519: {_A_POINT}\n", "ed25519 key is a point"),
    ],
)
def test_malformed_public_keys_say_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    keys.public_path(tmp_path, "alpha").write_text(text)
    with pytest.raises(KeyFileError, match=match):
        keys.load_public(tmp_path, "alpha")


def test_missing_keys_lists_each_needed_file(tmp_path: Path) -> None:
    keys.keygen(tmp_path, ["alpha"])
    problems = keys.missing_keys(tmp_path, ["alpha", "carol"], ["bravo"])
    assert len(problems) == 2
    assert "carol: private key" in problems[0] and "bravo: public key" in problems[1]


def test_link_keys_agree_at_both_ends_and_differ_by_direction() -> None:
    alpha, bravo = Identity.generate("alpha"), Identity.generate("bravo")
    forward = alpha.link_key(bravo.public, "alpha", "bravo")
    assert forward == bravo.link_key(alpha.public, "alpha", "bravo")
    assert forward != alpha.link_key(bravo.public, "bravo", "alpha")
    assert len(forward) == 32


def test_signatures_verify_only_for_the_signer() -> None:
    alpha, bravo = Identity.generate("alpha"), Identity.generate("bravo")
    signature = alpha.sign(b"data")
    assert alpha.public.verify(b"data", signature)
    assert not alpha.public.verify(b"datA", signature)
    assert not bravo.public.verify(b"data", signature)
    assert not alpha.public.verify(b"data", signature[:10])


@settings(max_examples=2000)
@given(st.binary(min_size=32, max_size=32))
def test_a_public_key_is_a_curve_point_as_pycryptodome_decodes_it(key: bytes) -> None:
    try:
        eddsa.import_public_key(key)
    except ValueError:
        assert not is_curve_point(key)
    else:
        assert is_curve_point(key)


@pytest.mark.parametrize(
    "y",
    [0, 1, 2**255 - 20, 2**255 - 19, 2**255 - 1, 1 | 1 << 255, (2**255 - 20) | 1 << 255],
)
def test_curve_points_at_the_edges_agree_with_pycryptodome(y: int) -> None:
    key = y.to_bytes(32, "little")
    try:
        eddsa.import_public_key(key)
        expected = True
    except ValueError:
        expected = False
    assert is_curve_point(key) is expected


_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _point(key: bytes) -> tuple[int, int]:
    """The (x, y) that `key` encodes (RFC 8032, 5.1.3; a curve point)."""
    encoded = int.from_bytes(key, "little")
    y, sign = encoded & ((1 << 255) - 1), encoded >> 255
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P != u:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    return ((-x) % _P if x % 2 != sign else x), y


def _doubled(point: tuple[int, int]) -> tuple[int, int]:
    (x, y), t = point, _D * point[0] ** 2 * point[1] ** 2 % _P
    return 2 * x * y * pow(1 + t, -1, _P) % _P, (y * y + x * x) * pow(1 - t, -1, _P) % _P


def _order_divides_8(key: bytes) -> bool:
    point = _point(key)
    for _ in range(3):
        point = _doubled(point)
    return point == (0, 1)


_Y8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7
_SMALL = [
    (y | sign << 255).to_bytes(32, "little")
    for y in (0, 1, _P - 1, _Y8, _P - _Y8)
    for sign in (0, 1)
]


@pytest.mark.parametrize("key", [key for key in _SMALL if is_curve_point(key)])
def test_an_ed25519_key_of_small_order_is_refused(key: bytes) -> None:
    assert _order_divides_8(key)  # the list is right
    assert is_small_order(key)
    box = Identity.generate("alpha").public.box_key
    with pytest.raises(ValueError, match="ed25519 key is a point of small order"):
        PublicIdentity("alpha", key, box)


@settings(max_examples=300)
@given(st.binary(min_size=32, max_size=32))
def test_only_points_of_small_order_are_refused_as_such(key: bytes) -> None:
    if is_curve_point(key):
        assert is_small_order(key) is _order_divides_8(key)
