"""A hostile pipe for ten seconds, against `mesh up`: someone who may write into the
pipe swaps a message's name between a file and a FIFO, plants links to the peer's key,
its database and /dev/zero, a folder, a device node and a 300 MiB sparse file under
message names. The peer keeps answering, stops on SIGTERM at once, and its quarantine
holds no key bytes and nothing bigger than it may keep."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from mesh.pipe.quarantine import COPY_MOST
from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_gateway_e2e import upstream_served

ATTACK = 10.0  # seconds
SHM = Path("/dev/shm")


def names(sender: str = "alpha") -> Iterator[str]:
    """Fresh message names addressed to bravo, as `sender`'s."""
    n = 1
    while True:
        yield f"{sender}.bravo.{n:016x}-{n:08x}.msg.mesh"
        n += 1


def pipe_elsewhere(tmp_path: Path) -> Path:
    """The pipe on another filesystem than the state (a tmpfs), or skip."""
    if not SHM.is_dir() or SHM.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no tmpfs (/dev/shm) on another filesystem than the tests' folders")
    folder = SHM / f"mesh-hostile-{os.getpid()}-{tmp_path.name}"
    folder.mkdir(mode=0o700)
    return folder


def plant(pipe: Path, targets: list[Path]) -> None:
    """Links to secrets, a folder, a device node and a big sparse file, once."""
    fresh = names()
    for target in targets:
        (pipe / next(fresh)).symlink_to(target)
    (pipe / next(fresh)).mkdir()
    if os.getuid() == 0:
        os.mknod(pipe / next(fresh), 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    with open(pipe / next(fresh), "wb") as big:
        big.truncate(300 << 20)
    (pipe / next(names("mallory"))).write_bytes(b"from no one bravo talks to")


async def swap_forever(pipe: Path) -> None:
    """One name, a FIFO one moment and a file the next, again and again."""
    name = pipe / f"alpha.bravo.{2**60:016x}-deadbeef.msg.mesh"
    while True:
        for make in (lambda: os.mkfifo(name), lambda: name.write_bytes(b"junk" * 100)):
            with contextlib.suppress(FileExistsError):
                make()
            await trio.sleep(0.003)  # the attacker's own pace
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def regular_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if stat.S_ISREG(p.lstat().st_mode)]


async def test_a_hostile_pipe_for_ten_seconds(tmp_path: Path, ports: Ports) -> None:
    pipe = pipe_elsewhere(tmp_path)
    try:
        await hostile(tmp_path, pipe, ports)
    finally:
        for left in pipe.iterdir():
            left.rmdir() if left.is_dir() and not left.is_symlink() else left.unlink()
        pipe.rmdir()


async def hostile(tmp_path: Path, pipe: Path, ports: Ports) -> None:
    upstream = f"http://127.0.0.1:{ports.upstream}"
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"], outbox=str(pipe)),
            "bravo": peer(ports.bravo, ["alpha"], outbox=str(pipe), upstream=upstream),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms", "settle": "200ms"},
    )
    keygen(roster)
    key = tmp_path / "keys" / "bravo.key"
    with trio.fail_after(ATTACK + 60):
        async with (
            upstream_served(ports.upstream),
            mesh_up(roster) as mesh,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.alpha}", timeout=10) as c,
        ):
            await mesh.wait_for("bravo: HTTP ingress")
            await mesh.wait_for("alpha: HTTP ingress")
            database = tmp_path / "state" / "bravo" / "state.sqlite"
            plant(pipe, [key, database, Path("/dev/zero")])
            answered = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(swap_forever, pipe)
                with trio.move_on_after(ATTACK):
                    while True:  # bravo keeps answering while it lasts
                        reply = await c.post("/bravo/during", content=b"x")
                        assert reply.status_code == 200 and reply.content == b"x"
                        answered += 1
                nursery.cancel_scope.cancel()
            assert answered > 10
            reply = await c.post("/bravo/after", content=b"y")
            assert reply.status_code == 200
            assert await mesh.stop(signal.SIGTERM, bound=5) == 143
        assert "Traceback" not in mesh.text
    quarantine = tmp_path / "state" / "bravo" / "quarantine"
    secret = key.read_bytes()
    for file in regular_files(quarantine):
        assert file.stat().st_size <= COPY_MOST, file.name  # across filesystems: small ones
        assert secret not in file.read_bytes(), file.name
    assert any(p.name.endswith(".reason") for p in quarantine.iterdir())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_file_cut_short_is_quarantined_and_then_forgotten(
    tmp_path: Path, ports: Ports
) -> None:
    """A file cut before its header is judged once it has settled, quarantined, and no
    longer waited on: the inbox sleeps again (it used to spin, listing the folder in a
    loop, from then on)."""
    roster = write_roster(
        tmp_path,
        {"alpha": peer(ports.alpha, ["bravo"]), "bravo": peer(ports.bravo, ["alpha"])},
        defaults={"heartbeat": "1s", "settle": "100ms"},
    )
    keygen(roster)
    with trio.fail_after(30):
        async with mesh_up(roster, "bravo") as mesh:
            await mesh.wait_for("bravo: HTTP ingress")
            (tmp_path / "pipe" / next(names())).write_bytes(b"MES")
            await mesh.wait_for("bravo: quarantined .*truncated")
            before, started = cpu_seconds(mesh.process.pid), trio.current_time()
            await trio.sleep(2.0)  # measuring CPU time over a while, not waiting on anything
            used = cpu_seconds(mesh.process.pid) - before
            assert used < 0.5 * (trio.current_time() - started), f"{used:.2f} s of CPU"
