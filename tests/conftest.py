"""Shared fixtures: identities and keyrings for three peers (pure, no files), and free
ports for a test."""

from __future__ import annotations

import signal

import pytest

from mesh.wire.crypto import Identity, Keyring
from tests.helpers.keys import keyring_for
from tests.helpers.ports import Ports, free_ports

# A shell runs a background job (`.ci/run &`) with SIGINT ignored, and its children
# inherit that: the tests' Ctrl-C to `mesh` processes would then go unheard. A handler
# here is reset to the default in each child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
