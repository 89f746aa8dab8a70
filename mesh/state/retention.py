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
- delivered messages of one kind (the mailbox's) not consumed by the cutoff;
- bodies arriving in fragments of which nothing came since the cutoff: one never
  finished (its sender stopped for good, or a late piece came after it was done with)
  and the marks of those their senders gave up (a mark only drops pieces still on the
  way); their files are returned, for the caller to remove;
- free pages, handed back to the filesystem (the database file shrinks at the next
  checkpoint), when the database was made able to (`auto_vacuum`, as every new one is).

Posts need no sweep: each leaves its table once delivered or given up at its deadline.
"""

from __future__ import annotations

from .database import Tables

INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental


def _oldest(table: str, size: str, where: str, order: str) -> str:
    """The ids of the oldest rows of `table` matching `where` (parameters: the cutoff,
    then the rows and bytes a batch may take): at most so many rows, and no more bytes
    of `size` than allowed, but always the first (a big row must go too). The bytes are
    summed from the record headers: no big value is read."""
    return (
        f"SELECT id FROM (SELECT id, row_number() OVER win AS n, sum(size) OVER win AS upto"
        f" FROM (SELECT id, {order} AS age, {size} AS size FROM {table} WHERE {where}"
        f" ORDER BY {order} LIMIT :rows) WINDOW win AS (ORDER BY age, id))"
        " WHERE n = 1 OR upto <= :bytes"
    )


_ENDED = _oldest(
    "requests",
    "coalesce(length(body), 0) + coalesce(length(headers), 0)",
    "ended < :cutoff AND NOT EXISTS (SELECT 1 FROM posts WHERE posts.request_id = requests.id)",
    "ended",
)
_ANSWERED = _oldest(
    "executions", "length(request)", "state = 'responded' AND updated < :cutoff", "updated"
)
_UNCONSUMED = _oldest(
    "inbound", "length(payload)", "kind = :kind AND received < :cutoff", "kind, received"
)


class RetentionTables(Tables):
    """The retention sweep's statements on one peer's database. Each removes a batch of
    at most `rows` rows holding at most `size` bytes (at least one row)."""

    def ended_requests(self, cutoff: float, rows: int, size: int) -> tuple[int, list[str]]:
        """Remove the oldest requests that ended before `cutoff` and have no post
        queued; (how many, their body files)."""
        with self._database.transaction():
            found = self._sql.execute(
                f"DELETE FROM requests WHERE id IN ({_ENDED}) RETURNING body_file",
                {"cutoff": cutoff, "rows": rows, "bytes": size},
            ).fetchall()
        return len(found), [str(file) for (file,) in found if file is not None]

    def answered_executions(self, cutoff: float, rows: int, size: int) -> int:
        """Remove the oldest executions answered before `cutoff`; how many."""
        with self._database.transaction():
            cursor = self._sql.execute(
                f"DELETE FROM executions WHERE id IN ({_ANSWERED})",
                {"cutoff": cutoff, "rows": rows, "bytes": size},
            )
        return cursor.rowcount

    def unconsumed(self, kind: int, cutoff: float, rows: int, size: int) -> int:
        """Remove the oldest delivered messages of `kind` received before `cutoff` and
        never consumed; how many."""
        with self._database.transaction():
            cursor = self._sql.execute(
                f"DELETE FROM inbound WHERE id IN ({_UNCONSUMED})",
                {"kind": kind, "cutoff": cutoff, "rows": rows, "bytes": size},
            )
        return cursor.rowcount

    def idle_transfers(self, cutoff: float, rows: int) -> list[tuple[str, str]]:
        """Remove the oldest bodies arriving in fragments (or given up) of which nothing
        came since `cutoff`; their (remote, transfer)."""
        with self._database.transaction():
            found = self._sql.execute(
                "DELETE FROM transfers WHERE rowid IN (SELECT rowid FROM transfers"
                " WHERE updated < ? ORDER BY updated LIMIT ?) RETURNING remote, id",
                (cutoff, rows),
            ).fetchall()
        return [(str(remote), str(transfer)) for remote, transfer in found]

    def free_pages(self) -> tuple[int, int]:
        """(pages free that could be handed back, pages in the database). None can in
        a database made without incremental `auto_vacuum` (by an earlier version)."""
        pages = int(self._sql.execute("PRAGMA page_count").fetchone()[0])
        if self._sql.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:
            return 0, pages
        return int(self._sql.execute("PRAGMA freelist_count").fetchone()[0]), pages

    def give_back(self, pages: int) -> int:
        """Hand back to the filesystem up to `pages` free pages (each moves a page from
        the file's end into a free one); how many it did."""
        with self._database.transaction():
            before = int(self._sql.execute("PRAGMA freelist_count").fetchone()[0])
            for _ in range(min(pages, before)):  # one page a statement: Python's sqlite3
                self._sql.execute("PRAGMA incremental_vacuum(1)")  # steps a pragma once
            after = int(self._sql.execute("PRAGMA freelist_count").fetchone()[0])
        return before - after
