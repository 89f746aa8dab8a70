"""The link tables: per link the numbering and what was received, every outbound message
until it is acknowledged, every delivered message until the layer above consumes it, and
the bodies crossing in fragments either way.

A delivery and the received-state that acknowledges it are written in one transaction,
so after a crash a message is either delivered and acknowledged, or neither. Times are
the caller's (wall clock, for records only).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..proto.link import LinkState
from ..proto.received import ReceivedState
from .database import Database, Tables


@dataclass(frozen=True)
class OutboundRow:
    """A message to store for sending: its envelope, and for a fragment whose data stays
    in a body file, that file and how many of its bytes the fragment carries."""

    seq: int
    payload: bytes
    spool: str | None = None
    spool_length: int = 0


@dataclass(frozen=True)
class Delivery:
    """A delivered message waiting for the layer above."""

    id: int
    remote: str
    seq: int
    kind: int
    payload: bytes
    received: float


@dataclass(frozen=True)
class TransferState:
    """What is known here of a body arriving in fragments: bytes of it here, the length
    its sender told at its end (a body whose message went without it), and whether it
    was dropped (0: no, 1: its sender gave it up, 2: over the body limit here)."""

    have: int = 0
    told_length: int | None = None
    dropped: int = 0


class LinkTables(Tables):
    """The link tables of one peer's database."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.repeats = 0  # deliveries refused because the message was already stored
        self._linked: set[str] = set()  # remotes whose row is committed (never deleted)

    def link_state(self, remote: str) -> LinkState:
        """What to restore the link to `remote` from (a fresh link if never seen)."""
        row = self._sql.execute(
            "SELECT next_seq, remote_epoch, received, retired, remote_since FROM links"
            " WHERE remote = ?",
            (remote,),
        ).fetchone()
        unacked = tuple(
            (int(seq), int(size))
            for seq, size in self._sql.execute(
                "SELECT seq, length(payload) + spool_length FROM outbound WHERE remote = ?"
                " ORDER BY seq",
                (remote,),
            )
        )
        if row is None:
            return LinkState(unacked=unacked)
        next_seq, remote_epoch, received, retired, since = row
        return LinkState(
            next_seq=int(next_seq),
            unacked=unacked,
            remote_epoch=remote_epoch,
            received=ReceivedState.from_wire(json.loads(received), 1 << 20),
            retired=tuple(json.loads(retired)),
            remote_since=float(since),
        )

    def _ensure_link(self, remote: str) -> None:
        """The link's row exists (inside the caller's transaction; looked for only until
        a commit made it sure)."""
        if remote not in self._linked:
            self._sql.execute("INSERT OR IGNORE INTO links (remote) VALUES (?)", (remote,))
            self._database.after_commit(lambda: self._linked.add(remote))

    def add_outbound(self, remote: str, rows: Sequence[OutboundRow], now: float) -> None:
        """Make messages to `remote` durable, all or none, with the link's numbering past
        them."""
        with self._database.transaction():
            self._sql.executemany(
                "INSERT INTO outbound (remote, seq, payload, created, spool, spool_length)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                ((remote, r.seq, r.payload, now, r.spool, r.spool_length) for r in rows),
            )
            self._ensure_link(remote)
            self._sql.execute(
                "UPDATE links SET next_seq = max(next_seq, ?) WHERE remote = ?",
                (max(r.seq for r in rows) + 1, remote),
            )

    def outbound_rows(self, remote: str, seqs: Sequence[int]) -> dict[int, OutboundRow]:
        """The stored messages among `seqs` (those acknowledged meanwhile are gone)."""
        marks = ",".join("?" * len(seqs))
        rows = self._sql.execute(
            "SELECT seq, payload, spool, spool_length FROM outbound"
            f" WHERE remote = ? AND seq IN ({marks})",
            (remote, *seqs),
        )
        return {int(q): OutboundRow(int(q), bytes(p), s, int(n)) for q, p, s, n in rows}

    def acked(self, remote: str, seqs: Iterable[int], next_seq: int) -> dict[str, int]:
        """Acknowledged messages are dropped; `next_seq` never goes back. Per body file
        a fragment of which was acknowledged, the bytes of its fragments still waiting
        (0: all acknowledged, for the caller to remove the file once this is synced)."""
        spools: set[str] = set()
        with self._database.transaction():
            for seq in seqs:
                row = self._sql.execute(
                    "DELETE FROM outbound WHERE remote = ? AND seq = ? RETURNING spool",
                    (remote, seq),
                ).fetchone()
                if row is not None and row[0] is not None:
                    spools.add(str(row[0]))
            self._ensure_link(remote)
            self._sql.execute(
                "UPDATE links SET next_seq = max(next_seq, ?) WHERE remote = ?",
                (next_seq, remote),
            )
            return {name: self.spool_waiting(name) for name in spools}

    def spool_waiting(self, name: str) -> int:
        """Bytes of fragments of body file `name` not acknowledged yet."""
        row = self._sql.execute(
            "SELECT sum(spool_length) FROM outbound WHERE spool = ?", (name,)
        ).fetchone()
        return int(row[0] or 0)

    def sending(self) -> list[tuple[str, str, int, int]]:
        """Per body file being sent: (remote, file, the seq of its first fragment still
        out, bytes of fragments not acknowledged yet)."""
        rows = self._sql.execute(
            "SELECT remote, spool, min(seq), sum(spool_length) FROM outbound"
            " WHERE spool IS NOT NULL GROUP BY remote, spool"
        )
        return [(str(r), str(spool), int(seq), int(left)) for r, spool, seq, left in rows]

    def receiving(self) -> list[tuple[str, str, int, int]]:
        """(remote, message id, bytes here, total) of each body arriving in fragments."""
        rows = self._sql.execute(
            "SELECT remote, message, have, total FROM transfers WHERE NOT abandoned ORDER BY remote"
        )
        return [(str(r), str(i), int(h), int(t)) for r, i, h, t in rows]

    def abandoned(self, remote: str) -> set[str]:
        """The transfers from `remote` its sender gave up (later fragments are dropped)."""
        rows = self._sql.execute(
            "SELECT id FROM transfers WHERE remote = ? AND abandoned", (remote,)
        )
        return {str(row[0]) for row in rows}

    def open_stream(self, spool: str, remote: str, transfer: str, message_id: str) -> None:
        """Body file `spool` is being sent as `transfer` while it still arrives."""
        with self._database.transaction():
            self._sql.execute(
                "INSERT OR IGNORE INTO streams (spool, remote, transfer, message)"
                " VALUES (?, ?, ?, ?)",
                (spool, remote, transfer, message_id),
            )

    def close_stream(self, spool: str) -> None:
        """Its message was stored, or it was abandoned (inside the caller's transaction)."""
        with self._database.transaction():
            self._sql.execute("DELETE FROM streams WHERE spool = ?", (spool,))

    def streams(self) -> list[tuple[str, str, str, str]]:
        """(spool, remote, transfer, message id) of each stream left open (by a crash)."""
        rows = self._sql.execute("SELECT spool, remote, transfer, message FROM streams")
        return [(str(s), str(r), str(t), str(m)) for s, r, t, m in rows]

    def spools_in_use(self) -> set[str]:
        """Body files an unacknowledged fragment still reads from."""
        return {spool for _, spool, _, _ in self.sending()}

    def deliver(
        self,
        remote: str,
        remote_epoch: str,
        messages: Sequence[tuple[int, int, bytes]],
        received: ReceivedState,
        retired: Iterable[str],
        now: float,
        fragments: Iterable[tuple[str, str, int, int]] = (),
        abandoned: Iterable[str] = (),
        since: float = 0.0,
        ended: Iterable[tuple[str, int]] = (),
        oversized: Iterable[str] = (),
    ) -> list[int]:
        """Store delivered messages (seq, kind, payload), the (transfer, message id, total,
        length) of delivered fragments (whose data is already durable in their body
        files), the transfers their senders gave up, the (transfer, length) told at the
        end of those whose length their message did not say, the transfers dropped as
        over the body limit, and the received-state that acknowledges them, in one
        transaction; the inbound ids."""
        ids = []
        with self._database.transaction():
            self._note_transfers(remote, now, fragments, abandoned, ended, oversized)
            for seq, kind, payload in messages:
                cursor = self._sql.execute(
                    "INSERT OR IGNORE INTO inbound"
                    " (remote, remote_epoch, seq, kind, payload, received)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (remote, remote_epoch, seq, kind, payload, now),
                )
                if cursor.rowcount:
                    ids.append(int(cursor.lastrowid or 0))
                else:
                    self.repeats += 1  # delivered before: never twice
            self._ensure_link(remote)
            self._sql.execute(
                "UPDATE links SET remote_epoch = ?, received = ?, retired = ?, remote_since = ?"
                " WHERE remote = ?",
                (
                    remote_epoch,
                    json.dumps(received.to_wire()),
                    json.dumps(sorted(retired)),
                    since,
                    remote,
                ),
            )
        return ids

    def _note_transfers(
        self,
        remote: str,
        now: float,
        fragments: Iterable[tuple[str, str, int, int]],
        abandoned: Iterable[str],
        ended: Iterable[tuple[str, int]],
        oversized: Iterable[str],
    ) -> None:
        """`deliver`'s part on bodies arriving in fragments (inside its transaction). A
        body told two lengths, or of which more came than told, is dropped as given up
        (only a faulty sender does that: its body is not what it said)."""
        fragments, ended = list(fragments), list(ended)
        self._sql.executemany(
            "INSERT INTO transfers (remote, id, message, total, have, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (remote, id)"
            " DO UPDATE SET have = have + excluded.have, updated = excluded.updated",
            ((remote, t, m, total, length, now) for t, m, total, length in fragments),
        )
        self._sql.executemany(  # the first length told stands (SET reads the row before)
            "INSERT INTO transfers (remote, id, total, have, told_length, updated)"
            " VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (remote, id) DO UPDATE"
            " SET told_length = COALESCE(told_length, excluded.told_length),"
            " abandoned = CASE WHEN told_length != excluded.told_length"
            " THEN MAX(abandoned, 1) ELSE abandoned END, updated = excluded.updated",
            ((remote, transfer, length, now) for transfer, length in ended),
        )
        touched = {t for t, _, _, _ in fragments} | {t for t, _ in ended}
        self._sql.executemany(
            "UPDATE transfers SET abandoned = MAX(abandoned, 1)"
            " WHERE remote = ? AND id = ? AND have > told_length",
            ((remote, transfer) for transfer in touched),
        )
        dropped = [(t, 1) for t in abandoned] + [(t, 2) for t in oversized]
        self._sql.executemany(
            "INSERT INTO transfers (remote, id, total, have, abandoned, updated)"
            " VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (remote, id) DO UPDATE"
            " SET abandoned = MAX(abandoned, excluded.abandoned), updated = excluded.updated",
            ((remote, transfer, why, now) for transfer, why in dropped),
        )

    def delivered(
        self, after: int, limit: int = 256, kinds: Collection[int] = ()
    ) -> list[Delivery]:
        """Delivered messages not yet consumed (of `kinds`, or of any kind), with ids above
        `after`, oldest first."""
        query = "SELECT id, remote, seq, kind, payload, received FROM inbound WHERE id > ?"
        args: list[Any] = [after]
        if kinds:  # along the ids, not the index by kind and age
            query += f" AND +kind IN ({', '.join('?' * len(kinds))})"
            args.extend(kinds)
        rows = self._sql.execute(query + " ORDER BY id LIMIT ?", (*args, limit))
        return [
            Delivery(int(i), r, int(s), int(k), bytes(p), float(t)) for i, r, s, k, p, t in rows
        ]

    def consume_upto(self, last: int, kind: int) -> None:
        """Consume every delivered message of `kind` with an id up to `last`."""
        with self._database.transaction():
            self._sql.execute("DELETE FROM inbound WHERE id <= ? AND kind = ?", (last, kind))

    def consume(self, ids: Iterable[int]) -> None:
        with self._database.transaction():
            self._sql.executemany("DELETE FROM inbound WHERE id = ?", ((i,) for i in ids))

    def transfer_received(self, remote: str, transfer: str) -> int:
        """How many bytes of body `transfer` from `remote` are here."""
        return self.transfer_state(remote, transfer).have

    def transfer_state(self, remote: str, transfer: str) -> TransferState:
        """What is known of body `transfer` from `remote` (nothing yet: the defaults)."""
        row = self._sql.execute(
            "SELECT have, told_length, abandoned FROM transfers WHERE remote = ? AND id = ?",
            (remote, transfer),
        ).fetchone()
        if row is None:
            return TransferState()
        have, told, dropped = row
        return TransferState(int(have), None if told is None else int(told), int(dropped))

    def forget_transfer(self, remote: str, transfer: str) -> None:
        with self._database.transaction():
            self._sql.execute(
                "DELETE FROM transfers WHERE remote = ? AND id = ?", (remote, transfer)
            )
