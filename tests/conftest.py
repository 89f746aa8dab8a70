"""Shared fixtures: identities and keyrings for three peers (pure, no files)."""

from __future__ import annotations

import pytest

from mesh.wire.crypto import Identity, Keyring


@pytest.fixture(scope="session")
def identities() -> dict[str, Identity]:
    return {name: Identity.generate(name) for name in ("alpha", "bravo", "carol")}


def keyring_for(
    identities: dict[str, Identity], me: str, talks_to: tuple[str, ...], encrypted: bool = False
) -> Keyring:
    peers = {name: identities[name].public for name in talks_to}
    return Keyring(identities[me], peers, encrypted=talks_to if encrypted else ())


@pytest.fixture
def bravo_keys(identities: dict[str, Identity]) -> Keyring:
    """bravo, who talks to alpha only."""
    return keyring_for(identities, "bravo", ("alpha",))


@pytest.fixture
def alpha_keys(identities: dict[str, Identity]) -> Keyring:
    return keyring_for(identities, "alpha", ("bravo",))
