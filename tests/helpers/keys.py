"""Keyrings made from in-memory identities (pure, no files)."""

from __future__ import annotations

from mesh.wire.crypto import Identity, Keyring


def keyring_for(
    identities: dict[str, Identity], me: str, talks_to: tuple[str, ...], encrypted: bool = False
) -> Keyring:
    peers = {name: identities[name].public for name in talks_to}
    return Keyring(identities[me], peers, encrypted=talks_to if encrypted else ())
