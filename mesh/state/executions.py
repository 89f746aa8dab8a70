"""The execution table of the far side: each request delivered here for the upstream,
from the moment it is taken until it is answered. An execution moves ``received`` →
``forwarding`` (durably, before the upstream is called) → ``responded``, or back to
``received`` when no connection to the upstream could be made (it never got the request,
so it may be sent again); one found in ``forwarding`` after a restart has an unknown
outcome. A request whose body goes to the upstream as it arrives is ``streaming`` while
the upstream has only part of it, and ``forwarding`` (durably) before its last byte
goes: one found ``streaming`` after a restart never reached the upstream whole, so it
may be sent again."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .database import Tables


class Execution(StrEnum):
    RECEIVED = "received"  # taken, not sent to the upstream (or known never to have arrived)
    STREAMING = "streaming"  # with the upstream, its body not whole there: not acted on
    FORWARDING = "forwarding"  # with the upstream: the outcome is unknown until it answers
    RESPONDED = "responded"  # its answer is stored for the caller's peer


@dataclass(frozen=True)
class Unfinished:
    """An execution not answered yet: the peer that asked, the request (its envelope),
    its state."""

    asker: str
    request: bytes
    state: Execution


class ExecutionTables(Tables):
    """The execution table of one peer's database."""

    def take(
        self, delivery_id: int, origin: str, request_id: str, request: bytes, at: float
    ) -> bool:
        """Record a delivered request for execution and consume the delivery, atomically;
        False if it was taken before (it is then never executed again)."""
        with self._database.transaction():
            cursor = self._sql.execute(
                "INSERT OR IGNORE INTO executions (id, origin, state, request, updated)"
                " VALUES (?, ?, ?, ?, ?)",
                (request_id, origin, Execution.RECEIVED, request, at),
            )
            self._sql.execute("DELETE FROM inbound WHERE id = ?", (delivery_id,))
        return bool(cursor.rowcount)

    def mark(self, request_id: str, state: Execution, at: float) -> None:
        """Move an execution to `state`."""
        with self._database.transaction():
            self._sql.execute(
                "UPDATE executions SET state = ?, updated = ? WHERE id = ?",
                (state, at, request_id),
            )

    def answered(self, request_id: str, at: float) -> None:
        """Move an execution to ``responded``, keeping only its id and times (its request,
        body and all, is not needed again). The row is written anew, at the table's end:
        shrunk where it was, it would leave its page mostly empty for as long as the row
        is kept, and the file would grow with the requests in flight at once."""
        with self._database.transaction():
            self._sql.execute(
                "INSERT OR REPLACE INTO executions (id, origin, state, request, updated)"
                " SELECT id, origin, ?, x'', ? FROM executions WHERE id = ?",
                (Execution.RESPONDED, at, request_id),
            )

    def unfinished(self) -> list[Unfinished]:
        """The executions not answered yet, oldest first."""
        rows = self._sql.execute(
            "SELECT origin, request, state FROM executions WHERE state IN (?, ?, ?)"
            " ORDER BY updated",
            (Execution.RECEIVED, Execution.STREAMING, Execution.FORWARDING),
        )
        return [Unfinished(str(o), bytes(r), Execution(s)) for o, r, s in rows]

    def refused(self, asker: str) -> None:
        """Count a request of `asker` refused by this peer's `serves` (inside the
        caller's transaction, with its answer)."""
        self._sql.execute(
            "INSERT INTO refusals (remote, count) VALUES (?, 1)"
            " ON CONFLICT (remote) DO UPDATE SET count = count + 1",
            (asker,),
        )

    def refusals(self) -> dict[str, int]:
        """How many requests of each remote peer `serves` refused, ever."""
        rows = self._sql.execute("SELECT remote, count FROM refusals")
        return {str(remote): int(count) for remote, count in rows}
