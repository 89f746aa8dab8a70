"""Signing (Ed25519), link keys (X25519 + HKDF-SHA256) and frame sealing (AES-256-GCM).

Pure functions over bytes: no files, no clock. Key files live in `mesh.config.keys`.
The primitives are OpenSSL's, through pyca/cryptography: a verify takes about 0.13 ms, a
signature 0.03 ms, and AES-GCM seals several GB/s (pycryptodome took 0.46 ms, 0.21 ms and
0.7 GB/s here, on every file's path).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SIGNATURE_SIZE = 64
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
_LINK_SALT = b"mesh link key v1"


@dataclass(frozen=True)
class PublicIdentity:
    """What everyone may know of a peer: its name and two public keys (raw, 32 bytes each)."""

    name: str
    sign_key: bytes
    box_key: bytes
    _verifier: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.sign_key) != KEY_SIZE or len(self.box_key) != KEY_SIZE:
            raise ValueError("public keys are 32 bytes each")
        if not is_curve_point(self.sign_key):  # OpenSSL takes any 32 bytes, then fails all
            raise ValueError("the ed25519 key is not a curve point")
        if is_small_order(self.sign_key):  # a signature by it could be made without a key
            raise ValueError("the ed25519 key is a point of small order")
        box = X25519PublicKey.from_public_bytes(self.box_key)
        try:  # a point of small order agrees on an all-zero secret with any key: refused
            X25519PrivateKey.generate().exchange(box)
        except ValueError:
            raise ValueError("the x25519 key is a point of small order") from None
        object.__setattr__(self, "_verifier", Ed25519PublicKey.from_public_bytes(self.sign_key))

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True when `signature` is this peer's Ed25519 signature of `data`."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._verifier.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Identity:
    """A peer's private keys: the Ed25519 seed and the X25519 private scalar (32 bytes each)."""

    name: str
    sign_seed: bytes = field(repr=False)
    box_seed: bytes = field(repr=False)
    public: PublicIdentity = field(init=False)
    _signer: Any = field(default=None, init=False, repr=False, compare=False)
    _box: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.sign_seed) != KEY_SIZE or len(self.box_seed) != KEY_SIZE:
            raise ValueError("private keys are 32 bytes each")
        sign = Ed25519PrivateKey.from_private_bytes(self.sign_seed)
        box = X25519PrivateKey.from_private_bytes(self.box_seed)
        public = PublicIdentity(
            self.name, sign.public_key().public_bytes_raw(), box.public_key().public_bytes_raw()
        )
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "_signer", sign)
        object.__setattr__(self, "_box", box)

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Fresh random keys for `name`."""
        return cls(name, os.urandom(KEY_SIZE), X25519PrivateKey.generate().private_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._signer.sign(data)
        return signature

    def link_key(self, remote: PublicIdentity, sender: str, recipient: str) -> bytes:
        """The AES-256 key of the directed link sender→recipient; both ends derive the same one.

        One of `sender`/`recipient` is this identity, the other `remote`. Each direction gets
        its own key, so a file cannot be reflected back to its writer as if the other side
        had written it.
        """
        info = f"mesh/1 {sender}>{recipient}".encode()
        secret = self._box.exchange(X25519PublicKey.from_public_bytes(remote.box_key))
        key: bytes = HKDF(SHA256(), KEY_SIZE, _LINK_SALT, info).derive(secret)
        return key


def seal(key: bytes, nonce: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """AES-256-GCM: ciphertext followed by its 16-byte tag."""
    sealed: bytes = AESGCM(key).encrypt(nonce, plaintext, aad)
    return sealed


def unseal(key: bytes, nonce: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes | None:
    """The plaintext of `seal`'s output, or None when it was altered or sealed with another key."""
    if len(sealed) < TAG_SIZE:
        return None
    try:
        plaintext: bytes = AESGCM(key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        return None
    return plaintext


_P = 2**255 - 19  # Ed25519's field
_D = -121665 * pow(121666, -1, _P) % _P
_Y8 = 0x7A03AC9277FDC74EC6CC392CFA53202A0F67100D760B3CBA4FD84D3D706A17C7  # order 8's y
# The y of Ed25519's 8 points of small order: the identity (1), order 2 (-1), order 4
# (0), order 8 (±_Y8); each y with either x.
_SMALL_ORDER_Y = frozenset({1, _P - 1, 0, _Y8, _P - _Y8})


def is_curve_point(key: bytes) -> bool:
    """Whether `key` (32 bytes) decodes to a point of Ed25519's curve: RFC 8032, 5.1.3,
    checked once per key loaded, so a damaged key file is named as such at start rather
    than failing every signature after."""
    encoded = int.from_bytes(key, "little")
    y, x_sign = encoded & ((1 << 255) - 1), encoded >> 255
    if y >= _P:
        return False
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P  # x² = u / v (v is never 0)
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P not in (u, -u % _P):  # neither x nor x·√-1 is a root: no point
        return False
    return not (u == 0 and x_sign == 1)  # x is 0 exactly when u is: no negative 0


def is_small_order(key: bytes) -> bool:
    """Whether `key`, a curve point (`is_curve_point`), is one of small order (1 to 8),
    which no key pair makes: a signature that verifies by it can be made without one."""
    return int.from_bytes(key, "little") & ((1 << 255) - 1) in _SMALL_ORDER_Y


class Keyring:
    """A peer's own identity plus the public keys of the peers it talks to.

    Only peers in `peers` are known: a file from anyone else is from an unknown sender.
    Links to peers in `encrypted` must be sealed both ways.
    """

    def __init__(
        self,
        identity: Identity,
        peers: Mapping[str, PublicIdentity],
        encrypted: Collection[str] = (),
    ) -> None:
        self.identity = identity
        self._peers = dict(peers)
        self._encrypted = frozenset(encrypted)
        self._link_keys: dict[tuple[str, str], bytes] = {}

    @property
    def me(self) -> str:
        return self.identity.name

    def public(self, name: str) -> PublicIdentity | None:
        return self._peers.get(name)

    def requires_encryption(self, peer: str) -> bool:
        return peer in self._encrypted

    def link_key(self, sender: str, recipient: str) -> bytes:
        """The key of link sender→recipient, one end of which is us; KeyError if unknown."""
        cached = self._link_keys.get((sender, recipient))
        if cached is None:
            remote = recipient if sender == self.me else sender
            cached = self.identity.link_key(self._peers[remote], sender, recipient)
            self._link_keys[(sender, recipient)] = cached
        return cached

    def sending_key(self, recipient: str) -> bytes | None:
        """The key to seal frames for `recipient` with, or None on a plain link."""
        if recipient not in self._encrypted:
            return None
        return self.link_key(self.me, recipient)
