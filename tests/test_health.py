"""What `mesh.http.health` says of a peer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.http import health as health_module
from mesh.http.health import health


def test_healthy_and_each_cause_in_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    places = {"state": tmp_path, "outbox": tmp_path / "gone"}
    troubles = ["no space left where the pipe is", None]
    sick = health(troubles, places, {"bravo": False})
    assert not sick.ok
    assert sick.as_json() == {
        "ok": False,
        "reasons": ["no space left where the pipe is", "the outbox cannot be reached"],
        "peers": {"bravo": "silent"},
    }
    assert health([None], {"state": tmp_path}, {"bravo": True}).ok
    monkeypatch.setattr(health_module, "LOW_SPACE", 1 << 62)  # more than any disk has
    full = health([], {"state": tmp_path}, {})
    assert full.reasons[0].startswith("little space left where the state is")
