"""Who may read the pipe's files and change mesh's state: files 0600 by default (or the
roster's `file_mode`), folders mesh creates its owner's, and a state or keys folder, or
a key file, that another user could change refused at start with the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from mesh.config.modes import others_may_change
from mesh.config.roster import RosterError
from mesh.pipe import folder as pipe
from mesh.wire.names import FileKind, FileName
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, run_mesh, write_roster
from tests.test_roster import pair, parse


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_pipe_files_have_exactly_their_mode_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    name = FileName(1, "alpha", "bravo", "00000000", FileKind.MESSAGES)
    old = os.umask(umask)
    try:
        default = pipe.write_atomically(tmp_path, name, b"x")
        assert mode_of(default) == 0o600
        shared = pipe.write_atomically(tmp_path, name, b"x", mode=0o640)
        assert mode_of(shared) == 0o640
    finally:
        os.umask(old)


def test_a_planted_link_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    name = FileName(1, "alpha", "bravo", "00000000", FileKind.MESSAGES)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    (tmp_path / name.temporary).symlink_to(target)
    with pytest.raises(OSError):
        pipe.write_atomically(tmp_path, name, b"x")
    assert target.read_bytes() == b"untouched"


@pytest.mark.parametrize(
    ("file_mode", "folder_mode"), [(0o600, 0o700), (0o640, 0o750), (0o644, 0o755)]
)
def test_folders_let_in_those_who_may_read_the_files(file_mode: int, folder_mode: int) -> None:
    assert pipe.folder_mode(file_mode) == folder_mode


@pytest.mark.parametrize(("value", "mode"), [(0o640, 0o640), ("0640", 0o640), ("0o600", 0o600)])
def test_file_mode_in_the_roster(value: object, mode: int) -> None:
    assert parse(pair({"file_mode": value})).peer("alpha").file_mode == mode
    assert parse(pair()).peer("alpha").file_mode == 0o600


@pytest.mark.parametrize("value", [0o666, 0o400, 0o700, "rw-r-----", "640", True, 0o4600])
def test_a_file_mode_others_may_write_or_the_owner_cannot_use_is_refused(value: object) -> None:
    with pytest.raises(RosterError, match=r"alpha.file_mode: .* is not a file mode of 0600"):
        parse(pair({"file_mode": value}))


def test_others_may_change_says_why_and_how_to_fix(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    assert others_may_change(folder, "roster.state") is None
    folder.chmod(0o775)
    assert others_may_change(folder, "roster.state") == (
        f"roster.state: {folder} has mode 775: its group may change it; run: chmod go-w {folder}"
    )
    folder.chmod(0o777)
    assert "its group and others may change it" in str(others_may_change(folder, "x"))
    assert others_may_change(tmp_path / "missing", "x") is None
    if os.getuid() == 0:  # only root can give a folder away
        folder.chmod(0o700)
        os.chown(folder, 65534, 65534)
        assert "belongs to uid 65534, not to this user (uid 0)" in str(
            others_may_change(folder, "roster.state")
        )


@pytest.mark.parametrize("loose", ["state", "state/alpha", "keys", "keys/alpha.key"])
def test_mesh_up_refuses_what_others_could_change(tmp_path: Path, ports: Ports, loose: str) -> None:
    roster = write_roster(tmp_path, {"alpha": peer(ports.alpha, [])})
    keygen(roster)
    (tmp_path / "state" / "alpha").mkdir(parents=True, mode=0o700)
    path = tmp_path / loose
    path.chmod(0o666 if path.is_file() else 0o777)
    result = run_mesh("up", str(roster))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    if loose.endswith(".key"):
        assert "chmod 600" in result.stderr  # others may read it: said first
    else:
        assert f"chmod go-w {path}" in result.stderr


async def test_a_running_peer_writes_its_files_with_file_mode(tmp_path: Path, ports: Ports) -> None:
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox="a-out", inbox="a-in", file_mode="0640"),
            "bravo": peer(ports.bravo, ["alpha"], outbox="a-in", inbox="a-out"),
        },
    )
    keygen(roster)
    with trio.fail_after(30):
        async with mesh_up(roster, "alpha") as mesh:  # bravo not running: files stay
            await mesh.wait_for("alpha: HTTP ingress")
            out = tmp_path / "a-out"
            while not [p for p in out.iterdir() if p.name.startswith("alpha.")]:  # noqa: ASYNC110
                await trio.sleep(0.05)  # its first heartbeat; another process
            assert await mesh.stop() == 130
    assert mode_of(out) == 0o750 and mode_of(tmp_path / "a-in") == 0o750
    assert {mode_of(p) for p in out.iterdir()} == {0o640}
    assert mode_of(tmp_path / "state" / "alpha" / "state.sqlite") == 0o600
