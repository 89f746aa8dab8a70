"""The API the HTTP layer builds on, in process, over a real folder and real stores."""

from __future__ import annotations

import uuid
from pathlib import Path

import trio

from mesh import keys
from mesh.links import LinkEvent
from mesh.messages import Datagram, Kind, unpack_envelope
from mesh.peer import Peer, open_peers
from mesh.roster import load_roster
from tests.processes import peer, write_roster


def roster_in(tmp_path: Path) -> Path:
    path = write_roster(
        tmp_path,
        {"alpha": peer(18231, ["bravo"]), "bravo": peer(18232, ["alpha"])},
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
            events = peers["alpha"].links.events.subscribe()
            sent = await peers["alpha"].links.send("bravo", Datagram(uuid.uuid4().hex, body))
            async for (item,) in peers["bravo"].links.deliveries(Kind.DATAGRAM):
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
            bravo = peers["bravo"].links
            async for (item,) in bravo.deliveries(Kind.DATAGRAM):
                assert item.seq == sent.seq
                bravo.consume([item.id])
                break
            assert peers["bravo"].store.inbound(0) == []
            assert peers["alpha"].links.protocol.outbound("bravo").unacked == 0
            nursery.cancel_scope.cancel()


async def test_sending_to_a_peer_not_talked_to_is_refused(tmp_path: Path) -> None:
    path = roster_in(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            peers = await start(path, nursery)
            try:
                await peers["alpha"].links.send("carol", Datagram(uuid.uuid4().hex, b""))
            except KeyError as exc:
                assert "does not talk to carol" in str(exc)
            else:
                raise AssertionError("sent to a stranger")
            nursery.cancel_scope.cancel()
