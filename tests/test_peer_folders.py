"""A peer's outbox and inbox at start: created where missing, and said so (a mistyped
folder would take files nothing reads); every problem with them named at once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mesh.config import keys
from mesh.config.roster import load_roster
from mesh.errors import ConfigError
from mesh.peer import Peer
from tests.helpers.ports import free_ports
from tests.helpers.processes import peer, write_roster


def _alpha(tmp_path: Path, outbox: str, inbox: str) -> Peer:
    alpha_port, bravo_port = free_ports(2)
    path = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"], outbox=outbox, inbox=inbox),
            "bravo": peer(bravo_port, ["alpha"], outbox=inbox, inbox=outbox),
        },
    )
    roster = load_roster(path)
    keys.keygen(roster.keys, list(roster.peers))
    return Peer(roster, "alpha")


def test_missing_folders_are_created_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alpha = _alpha(tmp_path, "a2b", "b2a")
    (tmp_path / "b2a").mkdir()
    with caplog.at_level(logging.INFO, logger="mesh"):
        alpha.open()
    alpha.close()
    assert (tmp_path / "a2b").is_dir()
    created = [r.getMessage() for r in caplog.records if "did not exist" in r.getMessage()]
    assert created == [f"alpha: created its outbox {tmp_path / 'a2b'} (it did not exist)"]


def test_every_folder_problem_is_named(tmp_path: Path) -> None:
    alpha = _alpha(tmp_path, "a2b/out", "b2a/in")
    (tmp_path / "a2b").write_text("a file where a folder goes")
    (tmp_path / "b2a").write_text("another")
    with pytest.raises(ConfigError) as raised:
        alpha.open()
    assert "alpha.outbox: cannot create" in str(raised.value)
    assert "alpha.inbox: cannot create" in str(raised.value)
