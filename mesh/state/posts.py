"""The post table: callback and event POSTs waiting to be delivered, durably, in order
per URL. A post goes in with whatever promised it (in the same transaction) and out once
delivered or given up."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .database import Tables

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Post:
    """A queued POST to a callback or events URL."""

    id: int
    request_id: str
    url: str
    headers: RawHeaders
    body: bytes
    attempts: int
    deadline: float
    body_file: str | None = None  # the body is this body file's content instead
    signing_key: bytes | None = None  # each attempt is signed with it (Mesh-Signature)


class PostTables(Tables):
    """The post table of one peer's database. `added` counts the posts queued since it
    was opened (rolled back or not): whoever wakes the poster may skip it when none was."""

    added = 0

    def add(
        self,
        request_id: str,
        url: str,
        headers: RawHeaders,
        body: bytes,
        deadline: float,
        now: float,
        body_file: str | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        """Queue a POST of `body` (or of body file `body_file`) to `url`, due at `now`,
        signed with `signing_key` if given (inside the caller's transaction)."""
        self.added += 1
        flat = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers])
        self._sql.execute(
            "INSERT INTO posts (request_id, url, headers, body, body_file, signing_key, due,"
            " deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (request_id, url, flat.encode(), body, body_file, signing_key, now, deadline),
        )

    def due(self, now: float) -> list[Post]:
        """Posts to send now, oldest first: per URL, the leading run of due posts (a post
        waiting for its retry holds back the later ones to its URL, keeping their order)."""
        rows = self._sql.execute(
            "SELECT id, request_id, url, headers, body, attempts, deadline, due, body_file,"
            " signing_key FROM posts ORDER BY id"
        )
        blocked: set[str] = set()
        found = []
        for i, request_id, url, headers, body, attempts, deadline, due, body_file, key in rows:
            if url in blocked:
                continue
            if due > now:
                blocked.add(url)
                continue
            pairs = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in json.loads(headers)]
            post = Post(
                int(i),
                str(request_id),
                str(url),
                pairs,
                bytes(body),
                int(attempts),
                deadline,
                body_file,
                key,
            )
            found.append(post)
        return found

    def next_due(self, busy: Iterable[str] = ()) -> float | None:
        """When the earliest post that may go (the oldest for its URL) is due, leaving out
        the URLs in `busy`."""
        heads = self._sql.execute(
            "SELECT url, due FROM posts WHERE id IN (SELECT min(id) FROM posts GROUP BY url)"
        )
        skip = set(busy)
        return min((float(due) for url, due in heads if url not in skip), default=None)

    def done(self, post_id: int) -> None:
        with self._database.transaction():
            self._sql.execute("DELETE FROM posts WHERE id = ?", (post_id,))

    def later(self, post_id: int, due: float) -> None:
        with self._database.transaction():
            self._sql.execute(
                "UPDATE posts SET attempts = attempts + 1, due = ? WHERE id = ?", (due, post_id)
            )
