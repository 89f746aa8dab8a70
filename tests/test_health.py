"""What `mesh.http.health` says of a peer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.http.health import health
from mesh.pipe.space import FreeSpace


def test_healthy_and_each_cause_in_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = FreeSpace({"state": tmp_path, "outbox": tmp_path / "gone"}).free
    troubles = ["no space left where the pipe is", None]
    sick = health(troubles, free, {"bravo": False})
    assert not sick.ok
    assert sick.as_json() == {
        "ok": False,
        "reasons": ["no space left where the pipe is", "the outbox cannot be reached"],
        "peers": {"bravo": "silent"},
    }
    assert health([None], {"state": 1 << 30}, {"bravo": True}).ok
    full = health([], {"state": 3 << 20}, {})
    assert full.reasons[0].startswith("little space left where the state is")
