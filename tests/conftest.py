"""Shared fixtures: identities and keyrings for three peers (pure, no files), and free
ports for a test."""

from __future__ import annotations

import pytest

from mesh.wire.crypto import Identity, Keyring
from tests.helpers.keys import keyring_for
from tests.helpers.ports import Ports, free_ports


@pytest.fixture(scope="session")
def identities() -> dict[str, Identity]:
    return {name: Identity.generate(name) for name in ("alpha", "bravo", "carol")}


@pytest.fixture
def bravo_keys(identities: dict[str, Identity]) -> Keyring:
    """bravo, who talks to alpha only."""
    return keyring_for(identities, "bravo", ("alpha",))


@pytest.fixture
def alpha_keys(identities: dict[str, Identity]) -> Keyring:
    return keyring_for(identities, "alpha", ("bravo",))


@pytest.fixture
def ports() -> Ports:
    """Free loopback ports, taken as the test starts: another run of the suite may share
    the machine."""
    return Ports(*free_ports(len(Ports._fields)))
