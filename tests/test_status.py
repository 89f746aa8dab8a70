"""`mesh status`: snapshots read from real stores, real folders, and the real command."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mesh.cli.status import collect, render
from mesh.config.roster import Roster, load_roster
from mesh.pipe import folder as pipe
from mesh.pipe.quarantine import Quarantine
from mesh.state.database import Database
from mesh.wire.names import FileKind, FileName
from tests.helpers.ports import free_ports
from tests.helpers.processes import mesh_command, peer, run_mesh, write_roster

NOW = 1_700_000_000.0


@pytest.fixture
def roster(tmp_path: Path) -> Roster:
    """alpha and bravo sharing ./pipe, heartbeat 100ms (alive while a snapshot is < 2.3s)."""
    alpha_port, bravo_port = free_ports(2)  # never listened on; free all the same
    peers = {"alpha": peer(alpha_port, ["bravo"]), "bravo": peer(bravo_port, ["alpha"])}
    return load_roster(write_roster(tmp_path, peers))


def link(**fields: Any) -> dict[str, Any]:
    """A link as `Peer.status()` shows it."""
    base = {
        "sent": 5,
        "acked": 3,
        "unacked": 2,
        "resends": 1,
        "files": 4,
        "last_ack_age": 1.5,
        "remote_epoch": "ab" * 8,
        "received_upto": 7,
        "file_size": 32 << 20,
        "alive": True,
        "epoch": "ab" * 8,
        "heard_age": 0.25,
    }
    return {**base, **fields}


def save(
    roster: Roster,
    name: str,
    *,
    running: bool = True,
    pid: int | None = None,
    age: float = 0.5,
    links: dict[str, Any] | None = None,
    transfers: list[dict[str, Any]] | None = None,
) -> str:
    """Give `name` a store with a snapshot `age` seconds before NOW and a lock file naming
    `pid` (this process by default), as a peer leaves them; its epoch."""
    pid = os.getpid() if pid is None else pid
    if links is None:
        links = {other: link() for other in roster.peer(name).talks_to}
    store = Database(roster.state_dir(name))
    try:
        store.save_status(
            {
                "peer": name,
                "epoch": store.epoch,
                "running": running,
                "pid": pid,
                "at": NOW - age,
                "heartbeat": 0.1,
                "links": links,
                "quarantined": 0,
                "events_dropped": 0,
                "transfers": transfers or [],
            }
        )
    finally:
        store.close()
    (roster.state_dir(name) / "peer.lock").write_text(f"{pid}\n")
    return store.epoch


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def status_of(roster: Roster, name: str) -> dict[str, Any]:
    peer: dict[str, Any] = collect(roster, now=NOW)["peers"][name]
    return peer


def drop(folder: Path, sender: str, recipient: str, kind: FileKind = FileKind.MESSAGES) -> None:
    folder.mkdir(exist_ok=True)
    name = FileName(time.time_ns(), sender, recipient, os.urandom(4).hex(), kind)
    pipe.write_atomically(folder, name, b"x")


# -- one peer's state ------------------------------------------------------------------------


def test_never_started(roster: Roster) -> None:
    report = collect(roster, now=NOW)
    assert report["roster"] == str(roster.path)
    assert report["at"] == NOW
    assert list(report["peers"]) == ["alpha", "bravo"]
    alpha = report["peers"]["alpha"]
    assert alpha["state"] == "never started"
    assert (alpha["running"], alpha["alive"], alpha["epoch"], alpha["links"]) == (
        False,
        False,
        None,
        {},
    )
    assert (alpha["files_waiting"], alpha["files_unread_by_others"], alpha["quarantined"]) == (
        0,
        0,
        0,
    )
    assert not roster.state.exists(), "status must create nothing"


def test_running_and_fresh_is_alive(roster: Roster) -> None:
    epoch = save(roster, "alpha", age=0.5)
    alpha = status_of(roster, "alpha")
    assert alpha["state"] == "alive"
    assert alpha["running"] and alpha["alive"]
    assert alpha["pid"] == os.getpid()
    assert alpha["epoch"] == epoch
    assert alpha["snapshot_age"] == pytest.approx(0.5)
    assert alpha["heartbeat"] == 0.1
    assert status_of(roster, "bravo")["state"] == "never started"


def test_stopped_cleanly(roster: Roster) -> None:
    save(roster, "alpha", running=False)
    alpha = status_of(roster, "alpha")
    assert alpha["state"] == "stopped"
    assert not alpha["running"] and not alpha["alive"]
    assert alpha["links"]["bravo"]["unacked"] == 2, "what it left undone still shows"


def test_crashed_peer_is_not_running(roster: Roster) -> None:
    save(roster, "alpha", running=True, pid=dead_pid())
    alpha = status_of(roster, "alpha")
    assert alpha["state"] == "crashed"
    assert not alpha["running"] and not alpha["alive"]


@pytest.mark.parametrize("lock", ["", "garbage\n", "-1\n", "0\n"])
def test_lock_without_a_usable_pid_is_not_running(roster: Roster, lock: str) -> None:
    save(roster, "alpha")
    (roster.state_dir("alpha") / "peer.lock").write_text(lock)
    assert status_of(roster, "alpha")["state"] == "crashed"


def test_missing_lock_file_is_not_running(roster: Roster) -> None:
    save(roster, "alpha")
    (roster.state_dir("alpha") / "peer.lock").unlink()
    assert not status_of(roster, "alpha")["running"]


def test_pid_reused_by_another_process_is_not_running(roster: Roster) -> None:
    save(roster, "alpha")
    (roster.state_dir("alpha") / "peer.lock").write_text(f"{os.getppid()}\n")
    assert status_of(roster, "alpha")["state"] == "crashed"


def test_stale_snapshot_is_not_alive(roster: Roster) -> None:
    save(roster, "alpha", age=2.4)  # 3 heartbeats of 100ms + 2s
    alpha = status_of(roster, "alpha")
    assert alpha["state"] == "not responding"
    assert alpha["running"] and not alpha["alive"]
    assert alpha["snapshot_age"] == pytest.approx(2.4)


def test_snapshot_from_the_future_is_age_zero(roster: Roster) -> None:
    save(roster, "alpha", age=-30)
    assert status_of(roster, "alpha")["snapshot_age"] == 0


def test_store_without_snapshot(roster: Roster) -> None:
    Database(roster.state_dir("alpha")).close()
    assert status_of(roster, "alpha")["state"] == "stopped"
    (roster.state_dir("alpha") / "peer.lock").write_text(f"{os.getpid()}\n")
    alpha = status_of(roster, "alpha")
    assert alpha["state"] == "starting"
    assert alpha["epoch"] is not None


def test_ages_are_aged_by_the_snapshot_age(roster: Roster) -> None:
    save(roster, "alpha", age=10, links={"bravo": link(heard_age=None)})
    bravo = status_of(roster, "alpha")["links"]["bravo"]
    assert bravo["last_ack_age"] == pytest.approx(11.5)
    assert bravo["heard_age"] is None
    assert {k: bravo[k] for k in ("sent", "acked", "unacked", "resends", "files")} == {
        "sent": 5,
        "acked": 3,
        "unacked": 2,
        "resends": 1,
        "files": 4,
    }
    assert bravo["remote_epoch"] == "ab" * 8


def test_never_acked_link_keeps_no_age(roster: Roster) -> None:
    save(roster, "alpha", links={"bravo": link(last_ack_age=None, heard_age=3.0)})
    bravo = status_of(roster, "alpha")["links"]["bravo"]
    assert bravo["last_ack_age"] is None
    assert bravo["heard_age"] == pytest.approx(3.5)


# -- reading the store -----------------------------------------------------------------------


def test_reads_a_store_that_is_open_and_creates_no_file(roster: Roster) -> None:
    save(roster, "alpha")
    state = roster.state_dir("alpha")
    closed = sorted(os.listdir(state))
    collect(roster, now=NOW)
    assert sorted(os.listdir(state)) == closed, "no -wal/-shm left behind"
    store = Database(state)  # as a running peer holds it: WAL files present, writes pending
    try:
        store.save_status({**(store.load_status() or {}), "at": NOW - 0.1})
        assert status_of(roster, "alpha")["snapshot_age"] == pytest.approx(0.1)
    finally:
        store.close()


def test_unreadable_database(roster: Roster) -> None:
    save(roster, "bravo")
    state = roster.state_dir("alpha")
    state.mkdir(parents=True)
    (state / "state.sqlite").write_bytes(b"this is not a database" * 100)
    drop(roster.peer("alpha").inbox, "bravo", "alpha")
    report = collect(roster, now=NOW)
    alpha = report["peers"]["alpha"]
    assert alpha["state"].startswith("unreadable: ")
    assert not alpha["running"] and not alpha["alive"]
    assert alpha["files_waiting"] == 1, "folders are counted all the same"
    assert report["peers"]["bravo"]["state"] == "alive"


def test_bad_snapshot_is_unreadable(roster: Roster) -> None:
    save(roster, "alpha")
    store = Database(roster.state_dir("alpha"))
    try:
        store.connection.execute("UPDATE meta SET value = '[1, 2]' WHERE key = 'status'")
    finally:
        store.close()
    alpha = status_of(roster, "alpha")
    assert alpha["state"].startswith("unreadable: bad status snapshot")
    assert alpha["epoch"] is not None


# -- folders ---------------------------------------------------------------------------------


def test_files_waiting_and_unread(roster: Roster) -> None:
    folder = roster.peer("alpha").inbox
    drop(folder, "alpha", "bravo")
    drop(folder, "alpha", "bravo", FileKind.HEARTBEAT)
    drop(folder, "bravo", "alpha")
    drop(folder, "carol", "delta")  # another roster's peers sharing the folder
    (folder / ".alpha.bravo.0000000000000001-00000000.msg.mesh.part").write_bytes(b"half")
    (folder / "notes.txt").write_text("not mesh's")
    report = collect(roster, now=NOW)["peers"]
    assert report["alpha"]["files_waiting"] == 1
    assert report["alpha"]["files_unread_by_others"] == 2
    assert report["bravo"]["files_waiting"] == 2
    assert report["bravo"]["files_unread_by_others"] == 1


def test_missing_folders_count_zero(roster: Roster) -> None:
    save(roster, "alpha")
    assert not roster.peer("alpha").inbox.exists()
    alpha = status_of(roster, "alpha")
    assert (alpha["files_waiting"], alpha["files_unread_by_others"]) == (0, 0)


def test_quarantined(roster: Roster) -> None:
    save(roster, "alpha")
    quarantine = Quarantine(roster.state_dir("alpha") / "quarantine")
    for n in range(2):
        bad = roster.state.parent / f"bravo.alpha.{n:016x}-00000000.msg.mesh"
        bad.write_bytes(b"forged")
        quarantine.put(bad, "signature", "does not verify")
    assert status_of(roster, "alpha")["quarantined"] == 2
    assert status_of(roster, "bravo")["quarantined"] == 0


# -- showing it ------------------------------------------------------------------------------


def test_report_is_json(roster: Roster) -> None:
    save(roster, "alpha")
    report = collect(roster, now=NOW)
    assert json.loads(json.dumps(report)) == report


def test_render(roster: Roster) -> None:
    epoch = save(roster, "alpha", age=5)
    save(roster, "bravo", running=False)
    out = io.StringIO()
    Console(file=out, width=160).print(render(collect(roster, now=NOW)))
    text = out.getvalue()
    assert "alpha" in text and "bravo" in text
    assert "→ bravo" in text and "→ alpha" in text
    assert epoch[:8] in text and epoch not in text
    assert "not responding" in text and "stopped" in text
    assert "6.5s" in text  # last ack 1.5s + snapshot age 5s
    assert "file size" in text and "32MiB" in text  # the size learned for the link


def test_render_shows_a_bar_per_body_crossing_in_fragments(roster: Roster) -> None:
    sending = {"direction": "sending", "peer": "bravo", "id": "ab" * 16, "done": 3 << 20}
    save(roster, "alpha", transfers=[{**sending, "total": 12 << 20}])
    out = io.StringIO()
    Console(file=out, width=160).print(render(collect(roster, now=NOW)))
    text = out.getvalue()
    assert "bodies crossing in fragments" in text
    assert "→ bravo" in text and "abababab" in text
    assert "3MiB / 12MiB (25%)" in text
    assert collect(roster, now=NOW)["peers"]["alpha"]["transfers"][0]["total"] == 12 << 20


def test_render_shows_a_body_that_streams_without_a_total(roster: Roster) -> None:
    receiving = {"direction": "receiving", "peer": "bravo", "id": "cd" * 16, "done": 5 << 20}
    save(roster, "alpha", transfers=[{**receiving, "total": None}])
    out = io.StringIO()
    Console(file=out, width=160).print(render(collect(roster, now=NOW)))
    text = out.getvalue()
    assert "← bravo" in text and "cdcdcdcd" in text and "5MiB so far" in text


# -- the command -----------------------------------------------------------------------------


def test_command_json_and_table(roster: Roster) -> None:
    save(roster, "alpha")
    result = run_mesh("status", str(roster.path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report["peers"]) == ["alpha", "bravo"]
    assert report["peers"]["bravo"]["state"] == "never started"
    result = run_mesh("status", str(roster.path))
    assert result.returncode == 0, result.stderr
    assert "alpha" in result.stdout and "bravo" in result.stdout


def test_command_bad_roster(tmp_path: Path) -> None:
    bad = tmp_path / "roster.yaml"
    bad.write_text("peers: {Alpha: 3}\n")
    result = run_mesh("status", str(bad), "--json")
    assert result.returncode == 2
    assert "problem" in result.stderr and "Traceback" not in result.stderr
    assert run_mesh("status", str(tmp_path / "missing.yaml")).returncode == 2


def test_command_watch_json_until_ctrl_c(roster: Roster) -> None:
    process = subprocess.Popen(
        mesh_command("status", str(roster.path), "--json", "--watch"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for _ in range(2):
            assert list(json.loads(process.stdout.readline())["peers"]) == ["alpha", "bravo"]
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "Traceback" not in stderr
