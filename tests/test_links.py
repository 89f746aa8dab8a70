"""The API the HTTP layer builds on, in process, over a real folder and real stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import watchfiles

from mesh.config import keys
from mesh.config.roster import load_roster
from mesh.http.asgi import Receive, Scope, Send, lifespan, read_body
from mesh.peer import Peer, open_peers
from mesh.pipe.bodies import incoming_name
from mesh.pipe.events import LinkEvent
from mesh.pipe.receiving import Receiving
from mesh.pipe.sending import receive_body
from mesh.state.database import Database
from mesh.state.links import LinkTables
from mesh.wire.messages import Datagram, Fragment, Kind, Request, unpack_envelope
from tests.helpers.ports import free_ports
from tests.helpers.processes import peer, served, write_roster


def roster_in(tmp_path: Path) -> Path:
    alpha_port, bravo_port = free_ports(2)
    path = write_roster(
        tmp_path,
        {"alpha": peer(alpha_port, ["bravo"]), "bravo": peer(bravo_port, ["alpha"])},
        defaults={"heartbeat": "100ms", "linger": "0s"},
    )
    keys.keygen(tmp_path / "keys", ["alpha", "bravo"])
    return path


async def start(path: Path, nursery: trio.Nursery) -> dict[str, Peer]:
    peers = {p.name: p for p in open_peers(load_roster(path), [])}
    for running in peers.values():
        await nursery.start(running.run)
    return peers


async def test_events_come_in_order_and_deliveries_survive_until_consumed(
    tmp_path: Path,
) -> None:
    path = roster_in(tmp_path)
    body = b"\x00\xff not utf-8"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha = peers["alpha"].links.protocol
            while alpha.status("bravo").remote_epoch is None:  # noqa: ASYNC110
                await trio.sleep(0.01)  # met bravo first: else the datagram is resent once
            events = peers["alpha"].links.events.subscribe()
            sent = await peers["alpha"].links.sending.send(
                "bravo", Datagram(uuid.uuid4().hex, body)
            )
            async for (item,) in peers["bravo"].links.receiving.deliveries(Kind.DATAGRAM):
                message = unpack_envelope(item.payload, len(item.payload)).message
                assert isinstance(message, Datagram) and message.body == body
                assert (item.remote, item.seq) == ("alpha", sent.seq)
                break
            seen: list[LinkEvent] = []
            async for event in events:
                seen.append(event)
                if event.state == "acked":
                    break
            assert [e.state for e in seen] == ["stored", "sent", "acked"]
            assert {(e.remote, e.seq) for e in seen} == {("bravo", sent.seq)}
            nursery.cancel_scope.cancel()
        # Not consumed: a restarted bravo offers it again; consumed: never again.
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            bravo = peers["bravo"].links.receiving
            async for (item,) in bravo.deliveries(Kind.DATAGRAM):
                assert item.seq == sent.seq
                bravo.consume([item.id])
                break
            assert peers["bravo"].store.links.delivered(0) == []
            assert peers["alpha"].links.protocol.status("bravo").unacked == 0
            nursery.cancel_scope.cancel()


async def test_sending_to_a_peer_not_talked_to_is_refused(tmp_path: Path) -> None:
    path = roster_in(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            try:
                await peers["alpha"].links.sending.send("carol", Datagram(uuid.uuid4().hex, b""))
            except KeyError as exc:
                assert "does not talk to carol" in str(exc)
            else:
                raise AssertionError("sent to a stranger")
            nursery.cancel_scope.cancel()


MiB = 1 << 20


def streaming_roster(tmp_path: Path, upstream: str | None = None) -> Path:
    """Fragments of 1 MiB, so a few MiB make a stream (bravo forwarding to `upstream`)."""
    alpha_port, bravo_port = free_ports(2)
    bravo = peer(bravo_port, ["alpha"], **({"upstream": upstream} if upstream else {}))
    path = write_roster(
        tmp_path,
        {"alpha": peer(alpha_port, ["bravo"]), "bravo": bravo},
        defaults={"heartbeat": "100ms", "linger": "0s", "fragment_size": "1MiB"},
    )
    keys.keygen(tmp_path / "keys", ["alpha", "bravo"])
    return path


async def until(links: Receiving, holds: Callable[[], bool]) -> None:
    """Return once `holds()`, checked after each delivery to `links` (bound the caller)."""
    while not holds():
        await links.delivered()


async def gone(path: Path) -> None:
    """Return once `path` no longer exists (bound the caller): told by inotify, checked
    again every 100 ms in case it went before the watch began."""
    async for _ in watchfiles.awatch(
        path.parent, debounce=10, step=5, rust_timeout=100, yield_on_timeout=True
    ):
        if not await trio.Path(path).exists():
            return


async def test_a_body_leaves_while_it_arrives_and_its_message_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first MiBs of a body cross before the rest has come; the request that names
    it reaches bravo's upstream with the whole body."""
    monkeypatch.setattr("mesh.pipe.folder.SYNC_EVERY", MiB)  # durable (and reported) each MiB
    (upstream_port,) = free_ports(1)
    path = streaming_roster(tmp_path, f"http://127.0.0.1:{upstream_port}")
    data = os.urandom(5 * MiB + 7)
    half, came, got = trio.Event(), trio.Event(), []

    async def arriving() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 << 10):
            if start == 3 * MiB:
                await half.wait()  # the rest comes only once bravo has the first part
            yield data[start : start + (64 << 10)]

    async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        got.append(await read_body(receive, 64 * MiB))
        came.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with trio.fail_after(30):
        async with served(upstream, upstream_port), trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha, bravo = peers["alpha"], peers["bravo"]
            stream = alpha.links.sending.stream("bravo", uuid.uuid4().hex, len(data))
            here = partial(bravo.store.links.transfer_received, "alpha", stream.transfer)

            async def release() -> None:
                await until(bravo.links.receiving, lambda: here() >= 2 * MiB)
                half.set()

            nursery.start_soon(release)
            body = await receive_body(
                alpha.bodies, alpha.links.sending, arriving(), 1 << 30, stream
            )
            request = Request(stream.message_id, "PUT", "/", (), b"", 1e10)
            await alpha.links.sending.send("bravo", request, body, stream)
            await came.wait()
            assert got == [data]
            assert alpha.store.links.streams() == []  # ended with its message
            nursery.cancel_scope.cancel()


async def test_an_abandoned_body_is_dropped_by_the_far_side_even_if_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mesh.pipe.folder.SYNC_EVERY", MiB)
    path = streaming_roster(tmp_path)

    async def cut_off() -> AsyncIterator[bytes]:
        for _ in range(3 * 16):
            yield os.urandom(64 << 10)
        raise ConnectionError("the client went away")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha, bravo = peers["alpha"], peers["bravo"]
            stream = alpha.links.sending.stream("bravo", uuid.uuid4().hex, 8 * MiB)
            with pytest.raises(ConnectionError):
                await receive_body(alpha.bodies, alpha.links.sending, cut_off(), 1 << 30, stream)
            assert stream.spool is not None and stream.queued >= MiB
            await until(
                bravo.links.receiving,
                lambda: stream.transfer in bravo.store.links.abandoned("alpha"),
            )
            assert not bravo.bodies.has(incoming_name("alpha", stream.transfer))
            assert bravo.store.links.receiving() == []
            # A fragment of it that comes late (a resend) is taken but not kept.
            late = Fragment(stream.message_id, stream.transfer, 0, 0, 8 * MiB, b"x" * 10)
            await alpha.links.sending.send("bravo", late)
            marker = await alpha.links.sending.send("bravo", Datagram(uuid.uuid4().hex, b""))
            await until(
                bravo.links.receiving,
                lambda: bravo.links.protocol.status("alpha").received_upto >= marker.seq,
            )
            assert not bravo.bodies.has(incoming_name("alpha", stream.transfer))
            # Once its fragments are acknowledged (and that is on disk), alpha's file goes.
            await gone(alpha.bodies.path(stream.spool))
            nursery.cancel_scope.cancel()


async def test_a_body_cut_off_by_a_stop_is_abandoned_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = streaming_roster(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha = peers["alpha"]
            stream = alpha.links.sending.stream("bravo", uuid.uuid4().hex, 8 * MiB)
            spool = "out-" + uuid.uuid4().hex
            alpha.bodies.path(spool).write_bytes(os.urandom(2 * MiB))
            alpha.links.sending.grew(stream, spool, 2 * MiB)  # then the peer stops, body half here
            nursery.cancel_scope.cancel()
        assert len(LinkTables(Database(tmp_path / "state" / "alpha")).streams()) == 1
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha, bravo = peers["alpha"], peers["bravo"]
            assert alpha.store.links.streams() == []
            await until(
                bravo.links.receiving,
                lambda: stream.transfer in bravo.store.links.abandoned("alpha"),
            )
            assert not bravo.bodies.has(incoming_name("alpha", stream.transfer))
            nursery.cancel_scope.cancel()


async def test_fragments_over_the_far_limit_are_refused_with_one_line_a_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A body over bravo's limit is refused at its first fragment over it (acknowledged,
    never kept), and the rest of it dropped with it: logged once, not once each, as a
    warning."""
    path = streaming_roster(tmp_path)
    text = path.read_text().replace("bravo:\n", "bravo:\n    body_limit: 1MiB\n", 1)
    path.write_text(text)
    transfer, message_id = uuid.uuid4().hex, uuid.uuid4().hex
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            alpha, bravo = peers["alpha"], peers["bravo"]
            assert bravo.settings.body_limit == MiB
            with alpha.store.database.transaction():  # queued together: one file
                for n in range(5):
                    piece = Fragment(message_id, transfer, n, n * 1024, 8 * MiB, b"x" * 1024)
                    await alpha.links.sending.send("bravo", piece)
                marker = await alpha.links.sending.send("bravo", Datagram(uuid.uuid4().hex, b""))
            await until(
                bravo.links.receiving,
                lambda: bravo.links.protocol.status("alpha").received_upto >= marker.seq,
            )
            nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    refused = [r.getMessage() for r in lines]
    assert len(refused) == 1, refused
    assert "over the body limit" in refused[0] and "more in" not in refused[0]
    assert lines[0].levelname == "WARNING"  # a caller's doing (answered 413), not a fault
    assert not bravo.bodies.has(incoming_name("alpha", transfer))
