"""`mesh up` as a real subprocess, on real folders."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import trio

from mesh.config import keys
from mesh.pipe import folder as pipe
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity
from mesh.wire.names import FileKind, FileName, parse_name
from tests.helpers.ports import free_ports
from tests.helpers.processes import keygen, mesh_up, peer, run_mesh, write_roster


def hand_made_file(identity: Identity, recipient: str, folder: Path) -> Path:
    """A well-formed one-frame file signed by `identity`, dropped into `folder`."""
    data = wire.encode_file(
        identity,
        recipient=recipient,
        epoch="00" * 8,
        created=time.time(),
        nonce=os.urandom(8),
        frames=[b"\x93\x04\x01\x80"],
    )
    name = FileName(
        time.time_ns(), identity.name, recipient, os.urandom(4).hex(), FileKind.MESSAGES
    )
    return pipe.write_atomically(folder, name, data)


async def test_three_peers_in_one_folder(tmp_path: Path) -> None:
    """alpha talks to bravo and carol; bravo and carol do not talk to each other."""
    alpha_port, bravo_port, carol_port = free_ports(3)
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo", "carol"]),
            "bravo": peer(bravo_port, ["alpha"]),
            "carol": peer(carol_port, ["alpha"]),
        },
    )
    keygen(roster)
    folder = tmp_path / "pipe"
    async with mesh_up(roster) as mesh:
        for me, other in [
            ("alpha", "bravo"),
            ("alpha", "carol"),
            ("bravo", "alpha"),
            ("carol", "alpha"),
        ]:
            await mesh.wait_for(rf"{me}: first heard from {other} ")
        bravo = keys.load_identity(tmp_path / "keys", "bravo")
        not_whitelisted = hand_made_file(bravo, "carol", folder)
        forged = hand_made_file(Identity.generate("alpha"), "bravo", folder)
        stranger = hand_made_file(bravo, "dave", folder)  # nobody here is dave
        await mesh.wait_for(rf"carol: quarantined {not_whitelisted.name}: not-whitelisted")
        await mesh.wait_for(rf"bravo: quarantined {forged.name}: bad-signature")
        assert await mesh.stop() == 130
    assert "Traceback" not in mesh.text
    assert not mesh.matching("bravo: first heard from carol|carol: first heard from bravo")
    assert not mesh.matching("(decode|signature).*carol|quarantined .*(hb)")
    reason = (tmp_path / "state/bravo/quarantine" / f"{forged.name}.reason").read_text()
    assert "reason: bad-signature" in reason
    reason = (tmp_path / "state/carol/quarantine" / f"{not_whitelisted.name}.reason").read_text()
    assert "not-whitelisted" in reason and "not read" in reason
    assert stranger.exists(), "a file for someone else was touched"
    for quarantine in (tmp_path / "state").glob("*/quarantine"):
        assert len(list(quarantine.glob("*.mesh"))) <= 1


async def test_separate_folders_joined_by_a_copying_loop(tmp_path: Path) -> None:
    """Each peer writes only to its outbox and reads only its inbox; a loop copies across.
    alpha watches its inbox with inotify, bravo polls."""
    alpha_port, bravo_port = free_ports(2)
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"], outbox="a-out", inbox="a-in"),
            "bravo": {
                **peer(bravo_port, ["alpha"], outbox="b-out", inbox="b-in"),
                "watch": "poll",
                "poll_interval": "50ms",
            },  # as on a network share
        },
    )
    keygen(roster)
    for folder in ("a-out", "a-in", "b-out", "b-in"):
        (tmp_path / folder).mkdir()
    seen_in_outbox: dict[str, set[str]] = {"a-out": set(), "b-out": set()}

    def copy_once(src: Path, dst: Path) -> None:
        for entry in sorted(src.iterdir()):
            if entry.name.startswith("."):
                continue
            name = parse_name(entry.name)
            seen_in_outbox[src.name].add(name.sender if name else entry.name)
            shutil.copyfile(entry, dst / f".{entry.name}")
            os.rename(dst / f".{entry.name}", dst / entry.name)
            entry.unlink()

    async def copy_loop(src: Path, dst: Path) -> None:
        while True:
            await trio.to_thread.run_sync(copy_once, src, dst)
            await trio.sleep(0.02)  # a mirroring service's scan interval, not a wait

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy_loop, tmp_path / "a-out", tmp_path / "b-in")
        nursery.start_soon(copy_loop, tmp_path / "b-out", tmp_path / "a-in")
        async with mesh_up(roster, "alpha") as alpha, mesh_up(roster, "bravo") as bravo:
            await alpha.wait_for("alpha: first heard from bravo ")
            await bravo.wait_for("bravo: first heard from alpha ")
            assert await alpha.stop() == 130
            assert await bravo.stop(signal.SIGTERM) == 143
        nursery.cancel_scope.cancel()
    assert seen_in_outbox == {"a-out": {"alpha"}, "b-out": {"bravo"}}
    assert not list((tmp_path / "state").glob("*/quarantine/*"))


async def test_silence_is_noticed_and_a_second_process_is_refused(tmp_path: Path) -> None:
    alpha_port, bravo_port = free_ports(2)
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"]),
            "bravo": peer(bravo_port, ["alpha"]),
        },
    )
    keygen(roster)
    async with mesh_up(roster, "alpha") as alpha:
        async with mesh_up(roster, "bravo") as bravo:
            await alpha.wait_for("alpha: first heard from bravo ")
            twin = run_mesh("up", str(roster), "--peer", "bravo")
            assert twin.returncode == 2
            assert "bravo is already running" in twin.stderr and "Traceback" not in twin.stderr
            assert await bravo.stop() == 130
        await alpha.wait_for("alpha: bravo went silent")
        async with mesh_up(roster, "bravo"):  # the lock was released on a clean stop
            await alpha.wait_for("alpha: bravo is back after")


def test_missing_keys_are_named_with_the_command_that_makes_them(tmp_path: Path) -> None:
    alpha_port, bravo_port = free_ports(2)
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"]),
            "bravo": peer(bravo_port, ["alpha"]),
        },
    )
    result = run_mesh("up", str(roster))
    assert result.returncode == 2
    assert "alpha: private key" in result.stderr and "bravo: private key" in result.stderr
    assert f"mesh keygen {roster}" in result.stderr and "Traceback" not in result.stderr
    first = run_mesh("keygen", str(roster))
    assert first.stdout.count("created") == 2
    again = run_mesh("keygen", str(roster))
    assert again.stdout.count("already there, kept") == 2


def test_a_wrong_roster_lists_every_problem_without_a_traceback(tmp_path: Path) -> None:
    roster = tmp_path / "roster.yaml"
    roster.write_text(
        "peers:\n"
        "  alpha:\n    listen: nowhere\n    outbox: p\n    inbox: p\n    talks_to: [zed]\n"
        "  Bad_Name:\n    listen: 127.0.0.1:1\n    outbox: p\n    inbox: p\n"
        "  bravo:\n    listen: 127.0.0.1:2\n    outbox: p\n    inbox: p\n    heartbeat: soon\n"
    )
    result = run_mesh("up", str(roster))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for where in ("alpha.listen", "alpha.talks_to", "Bad_Name", "bravo.heartbeat"):
        assert where in result.stderr, result.stderr


def test_a_listen_address_in_use_is_named_without_a_traceback(tmp_path: Path) -> None:
    alpha_port, bravo_port = free_ports(2)
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(alpha_port, ["bravo"]),
            "bravo": peer(bravo_port, ["alpha"]),
        },
    )
    keygen(roster)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", alpha_port))
        taken.listen()
        result = run_mesh("up", str(roster))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"alpha.listen: cannot listen on 127.0.0.1:{alpha_port}" in result.stderr, result.stderr
