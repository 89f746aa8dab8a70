"""No replays across epochs, tried against `mesh up` processes: a request file captured
from the pipe and dropped into it again after the receiver's state was wiped runs
nothing, while what the sender still holds arrives under the new epoch."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import trio

from tests.helpers.ports import Ports
from tests.helpers.processes import keygen, mesh_up, peer, write_roster
from tests.test_gateway_e2e import upstream_served


async def post(client: httpx.AsyncClient, body: bytes) -> str:
    reply = await client.post("/bravo/count", content=body, headers={"prefer": "respond-async"})
    assert reply.status_code == 202
    return str(reply.json()["id"])


async def until_done(client: httpx.AsyncClient, request_id: str) -> None:
    while True:
        if (await client.get(f"/mesh/requests/{request_id}")).json()["state"] == "completed":
            return
        await trio.sleep(0.05)  # another process: nothing to wait on but a poll


async def until_written(pipe: Path) -> Path:
    """A request file from alpha to bravo, once alpha wrote one."""
    while True:
        found = sorted(await trio.Path(pipe).glob("alpha.bravo.*.msg.mesh"))
        if found:
            return Path(found[-1])
        await trio.sleep(0.02)  # another process writes it: nothing to wait on but a poll


async def until_gone(path: Path) -> None:
    while await trio.Path(path).exists():  # noqa: ASYNC110 (another process takes it)
        await trio.sleep(0.02)


def two_peers(tmp_path: Path, ports: Ports) -> Path:
    """alpha and bravo on one folder, bravo with the test's upstream; resends far off, so
    that only the rules under test send anything again."""
    upstream = f"http://127.0.0.1:{ports.upstream}"
    roster = write_roster(
        tmp_path,
        {
            "alpha": peer(ports.alpha, ["bravo"]),
            "bravo": peer(ports.bravo, ["alpha"], upstream=upstream),
        },
        defaults={"heartbeat": "200ms", "linger": "2ms", "resend_after": "30s"},
    )
    keygen(roster)
    return roster


async def test_a_request_replayed_after_the_receivers_state_is_wiped_runs_nothing(
    tmp_path: Path, ports: Ports
) -> None:
    roster = two_peers(tmp_path, ports)
    pipe = tmp_path / "pipe"
    base = f"http://127.0.0.1:{ports.alpha}"
    with trio.fail_after(60):
        async with (
            upstream_served(ports.upstream) as app,
            mesh_up(roster, "alpha") as alpha,
            httpx.AsyncClient(base_url=base) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            async with mesh_up(roster, "bravo") as bravo:  # alpha learns bravo's epoch
                await alpha.wait_for("alpha: first heard from bravo")
                assert await bravo.stop() == 130
            first = await post(client, b"first")  # bravo is down: its file waits
            written = await until_written(pipe)
            captured = written.read_bytes()  # what someone with access to the pipe keeps
            async with mesh_up(roster, "bravo") as bravo:
                await until_done(client, first)
                assert await bravo.stop() == 130
            assert app.posts == {"first": 1}
            shutil.rmtree(tmp_path / "state" / "bravo")  # bravo's state is lost
            second = await post(client, b"second")  # held by alpha for the new bravo
            (pipe / f".{written.name}").write_bytes(captured)  # the replay: the oldest file
            (pipe / f".{written.name}").rename(written)  # there, so the first bravo reads
            async with mesh_up(roster, "bravo") as bravo:
                await until_gone(written)
                await until_done(client, second)
                assert await bravo.stop() == 130
            assert app.posts == {"first": 1, "second": 1}  # the replay ran nothing
            assert await alpha.stop() == 130
        assert "Traceback" not in alpha.text + bravo.text


async def test_a_file_of_an_old_epoch_replayed_does_not_cut_the_link(
    tmp_path: Path, ports: Ports
) -> None:
    """A request file of alpha's first state, kept, and dropped into the pipe once both
    peers' states were made anew: bravo never heard of that epoch, and must not take it
    for alpha's newest (alpha's real files would all be stale from then on)."""
    roster = two_peers(tmp_path, ports)
    pipe, state = tmp_path / "pipe", tmp_path / "state"
    base = f"http://127.0.0.1:{ports.alpha}"
    with trio.fail_after(90):
        async with upstream_served(ports.upstream) as app:
            async with mesh_up(roster, "alpha") as alpha:  # bravo down: the file waits
                await alpha.wait_for("alpha: HTTP ingress")
                async with httpx.AsyncClient(base_url=base) as client:
                    await post(client, b"one")
                written = await until_written(pipe)
                captured = written.read_bytes()
                assert await alpha.stop() == 130
            shutil.rmtree(state / "alpha")  # alpha anew; bravo has never run
            written.unlink()
            async with (
                mesh_up(roster, "alpha") as alpha,
                mesh_up(roster, "bravo") as bravo,
                httpx.AsyncClient(base_url=base) as client,
            ):
                await bravo.wait_for("bravo: first heard from alpha")
                await until_done(client, await post(client, b"two"))
                (pipe / f".{written.name}").write_bytes(captured)  # the old epoch's file
                (pipe / f".{written.name}").rename(written)
                await until_gone(written)
                await until_done(client, await post(client, b"three"))
                assert await bravo.stop() == 130
                assert await alpha.stop() == 130
            assert app.posts == {"two": 1, "three": 1}
        assert "has a new epoch" not in bravo.text


async def test_a_request_replayed_into_a_state_restored_from_a_backup_runs_nothing(
    tmp_path: Path, ports: Ports
) -> None:
    """bravo's state is restored from a backup taken before a request ran: the restored
    state has bravo's epoch and remembers nothing of the request, but the request's
    file names an earlier start of bravo's, so it delivers nothing."""
    roster = two_peers(tmp_path, ports)
    pipe, state = tmp_path / "pipe", tmp_path / "state"
    base = f"http://127.0.0.1:{ports.alpha}"
    with trio.fail_after(60):
        async with (
            upstream_served(ports.upstream) as app,
            mesh_up(roster, "alpha") as alpha,
            httpx.AsyncClient(base_url=base) as client,
        ):
            await alpha.wait_for("alpha: HTTP ingress")
            async with mesh_up(roster, "bravo") as bravo:
                await alpha.wait_for("alpha: first heard from bravo")
                assert await bravo.stop() == 130
            shutil.copytree(state / "bravo", tmp_path / "backup")
            seven = await post(client, b"seven")  # bravo is down: its file waits
            written = await until_written(pipe)
            captured = written.read_bytes()
            async with mesh_up(roster, "bravo") as bravo:
                await until_done(client, seven)
                assert await bravo.stop() == 130
            shutil.rmtree(state / "bravo")
            shutil.copytree(tmp_path / "backup", state / "bravo")  # restored
            (pipe / f".{written.name}").write_bytes(captured)  # the oldest file there
            (pipe / f".{written.name}").rename(written)
            async with mesh_up(roster, "bravo") as bravo:
                await until_gone(written)
                await until_done(client, await post(client, b"eight"))
                assert await bravo.stop() == 130
            assert app.posts == {"seven": 1, "eight": 1}
            assert await alpha.stop() == 130
