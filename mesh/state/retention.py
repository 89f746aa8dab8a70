"""What retention removes from a peer's database, a batch at a time: each call deletes at
most `limit` rows in one short transaction, oldest first, so a sweep can give the event
loop back between batches however much has piled up.

Nothing here decides what may be repeated: a duplicate of a message whose records were
swept is refused by the link's received-state (`links`), which is never swept. What is
removed:

- the caller's peer's requests that ended (completed or failed) before the cutoff, with
  their events and stored responses, unless a callback or event post about one is still
  queued (the post reads its body file); their body files are returned, for the caller
  to remove once the deletion is on disk;
- the far side's executions answered before the cutoff;
- delivered messages of one kind (the mailbox's) not consumed by the cutoff.

Posts need no sweep: each leaves its table once delivered or given up at its deadline.
"""

from __future__ import annotations

from .database import Tables


class RetentionTables(Tables):
    """The retention sweep's statements on one peer's database."""

    def ended_requests(self, cutoff: float, limit: int) -> tuple[int, list[str]]:
        """Remove up to `limit` requests that ended before `cutoff` and have no post
        queued; (how many, their body files)."""
        with self._database.transaction():
            rows = self._sql.execute(
                "DELETE FROM requests WHERE id IN (SELECT id FROM requests"
                " WHERE ended < ? AND NOT EXISTS"
                " (SELECT 1 FROM posts WHERE posts.request_id = requests.id)"
                " ORDER BY ended LIMIT ?) RETURNING body_file",
                (cutoff, limit),
            ).fetchall()
        return len(rows), [str(file) for (file,) in rows if file is not None]

    def answered_executions(self, cutoff: float, limit: int) -> int:
        """Remove up to `limit` executions answered before `cutoff`; how many."""
        with self._database.transaction():
            cursor = self._sql.execute(
                "DELETE FROM executions WHERE id IN (SELECT id FROM executions"
                " WHERE state = 'responded' AND updated < ? ORDER BY updated LIMIT ?)",
                (cutoff, limit),
            )
        return cursor.rowcount

    def unconsumed(self, kind: int, cutoff: float, limit: int) -> int:
        """Remove up to `limit` delivered messages of `kind` received before `cutoff` and
        never consumed; how many."""
        with self._database.transaction():
            cursor = self._sql.execute(
                "DELETE FROM inbound WHERE id IN (SELECT id FROM inbound"
                " WHERE kind = ? AND received < ? ORDER BY kind, received LIMIT ?)",
                (kind, cutoff, limit),
            )
        return cursor.rowcount
