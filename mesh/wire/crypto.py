"""Signing (Ed25519), link keys (X25519 + HKDF-SHA256) and frame sealing (AES-256-GCM).

Pure functions over bytes: no files, no clock. Key files live in `mesh.config.keys`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol import DH
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

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
        key = eddsa.import_public_key(self.sign_key)
        object.__setattr__(self, "_verifier", eddsa.new(key, "rfc8032"))

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True when `signature` is this peer's Ed25519 signature of `data`."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._verifier.verify(data, signature)
        except ValueError:
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
        sign = eddsa.import_private_key(self.sign_seed)
        box = DH.import_x25519_private_key(self.box_seed)
        public = PublicIdentity(
            self.name,
            sign.public_key().export_key(format="raw"),
            box.public_key().export_key(format="raw"),
        )
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "_signer", eddsa.new(sign, "rfc8032"))
        object.__setattr__(self, "_box", box)

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Fresh random keys for `name`."""
        return cls(name, os.urandom(KEY_SIZE), ECC.generate(curve="curve25519").seed)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._signer.sign(data))

    def link_key(self, remote: PublicIdentity, sender: str, recipient: str) -> bytes:
        """The AES-256 key of the directed link sender→recipient; both ends derive the same one.

        One of `sender`/`recipient` is this identity, the other `remote`. Each direction gets
        its own key, so a file cannot be reflected back to its writer as if the other side
        had written it.
        """
        info = f"mesh/1 {sender}>{recipient}".encode()
        remote_key = DH.import_x25519_public_key(remote.box_key)
        key: bytes = DH.key_agreement(
            static_priv=self._box,
            static_pub=remote_key,
            kdf=lambda secret: HKDF(secret, KEY_SIZE, _LINK_SALT, SHA256, context=info),
        )
        return key


def seal(key: bytes, nonce: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """AES-256-GCM: ciphertext followed by its 16-byte tag."""
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return bytes(ciphertext) + bytes(tag)


def unseal(key: bytes, nonce: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes | None:
    """The plaintext of `seal`'s output, or None when it was altered or sealed with another key."""
    if len(sealed) < TAG_SIZE:
        return None
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    try:
        return bytes(cipher.decrypt_and_verify(sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]))
    except ValueError:
        return None


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
