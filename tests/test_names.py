"""Pipe file names: safe, parseable, and only ever mesh's own."""

from __future__ import annotations

import pytest

from mesh.wire.names import FileKind, FileName, parse_name


def test_round_trip_and_order() -> None:
    early = FileName(1_700_000_000_000_000_000, "alpha", "bravo-2", "0a1b2c3d", FileKind.MESSAGES)
    late = FileName(1_700_000_000_000_000_001, "alpha", "bravo-2", "00000000", FileKind.HEARTBEAT)
    assert parse_name(str(early)) == early
    assert parse_name(str(late)) == late
    assert sorted([str(late), str(early)]) == [str(early), str(late)]
    assert early.temporary.startswith(".") and parse_name(early.temporary) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "alpha.bravo.0000000000000001-0a1b2c3d.msg",  # no suffix
        "../alpha.bravo.0000000000000001-0a1b2c3d.msg.mesh",
        "alpha/x.bravo.0000000000000001-0a1b2c3d.msg.mesh",
        "Alpha.bravo.0000000000000001-0a1b2c3d.msg.mesh",
        "alpha.bravo.0000000000000001-0a1b2c3d.exe.mesh",
        "alpha.bravo.1-0a1b2c3d.msg.mesh",
        "-alpha.bravo.0000000000000001-0a1b2c3d.msg.mesh",
        "alpha.bravo.0000000000000001-0a1b2c3d.msg.mesh\n",
        ".alpha.bravo.0000000000000001-0a1b2c3d.msg.mesh.part",
    ],
)
def test_anything_else_is_not_a_mesh_file(name: str) -> None:
    assert parse_name(name) is None
