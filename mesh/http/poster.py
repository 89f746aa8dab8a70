"""Callbacks and event posts: what the request table queued is POSTed to its URL, in
order per URL, retried until a 2xx or the request's deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import trio

from ..pipe.bodies import Bodies
from ..state.durable import Durability
from ..state.posts import Post, PostTables
from .callbacks import SIGNATURE_HEADER, Signed, signature, signature_of_body
from .clients import Clients

RETRY_FIRST, RETRY_MOST = 0.5, 60.0  # seconds before a failed post is tried again


class Poster:
    """Delivers queued callback and event POSTs: durably (they are in the store before
    anything is promised), in order per URL, retried with backoff until a 2xx or the
    request's deadline (backoff: 0.5 s doubling to 60 s).

    Its timers follow `wall` and trio's clock together: with a clock made from trio's
    (tests, under `MockClock`), its retries run in virtual time."""

    def __init__(
        self,
        name: str,
        posts: PostTables,
        bodies: Bodies,
        durable: Durability,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name, self.posts, self.bodies, self.durable = name, posts, bodies, durable
        self.wall = wall  # wall-clock seconds: posts are due and expire by it
        self.log = logging.getLogger(f"mesh.{name}")
        self._kick = trio.Event()
        self._busy: set[str] = set()  # URLs with a POST under way

    def kick(self) -> None:
        """New posts may be due."""
        self._kick.set()

    async def run(self) -> None:
        """Start a delivery per URL with posts due and none under way; a slow URL holds
        back only its own posts."""
        async with (
            Clients(httpx.Timeout(30.0, connect=5.0)) as clients,
            trio.open_nursery() as nursery,
        ):
            while True:
                self._kick = trio.Event()
                by_url: dict[str, list[Post]] = {}
                for post in self.posts.due(self.wall()):
                    if post.url not in self._busy:
                        by_url.setdefault(post.url, []).append(post)
                if by_url:
                    await self.durable.synced()  # what is posted stays posted
                for url, posts in by_url.items():
                    self._busy.add(url)
                    nursery.start_soon(self._deliver_then_free, clients, url, posts)
                due = self.posts.next_due(self._busy)
                wait = 3600.0 if due is None else max(due - self.wall(), 0.0)
                with trio.move_on_after(wait):
                    await self._kick.wait()

    async def _deliver_then_free(self, clients: Clients, url: str, posts: list[Post]) -> None:
        try:
            async with clients.one() as client:
                await self._deliver(client, posts)
        finally:
            self._busy.discard(url)
            self.kick()

    async def _deliver(self, client: httpx.AsyncClient, posts: list[Post]) -> None:
        """Posts to one URL, in order; the first failure holds back the rest."""
        for post in posts:
            now = self.wall()
            if now > post.deadline:
                self.log.warning(  # the URL's path and query may hold a caller's secret
                    "%s: gave up posting news of request %s to %s after %d attempts",
                    self.name,
                    post.request_id,
                    _origin(post.url),
                    post.attempts,
                )
                self.posts.done(post.id)
                continue
            try:
                reply = await self._post(client, post)
                ok = 200 <= reply.status_code < 300
            except (httpx.HTTPError, OSError):
                ok = False
            if not ok:
                self.posts.later(post.id, now + min(2.0**post.attempts * RETRY_FIRST, RETRY_MOST))
                return
            self.posts.done(post.id)

    async def _post(self, client: httpx.AsyncClient, post: Post) -> httpx.Response:
        """One attempt, signed when the post has a key (the signature's time is this
        attempt's, so a receiver may refuse old ones); redirects are not followed."""
        headers = list(post.headers)
        if post.signing_key is not None:
            signed = await self._signature(post)
            headers.append((SIGNATURE_HEADER, signed.encode()))
        if post.body_file is None:
            return await client.post(post.url, headers=headers, content=post.body)
        size = await trio.to_thread.run_sync(self.bodies.size, post.body_file)
        headers.append((b"content-length", str(size).encode()))
        return await client.post(
            post.url, headers=headers, content=self.bodies.chunks(post.body_file)
        )

    async def _signature(self, post: Post) -> str:
        """The `Mesh-Signature` of `post` now; a body file is read for it off the loop."""
        assert post.signing_key is not None
        status = dict(post.headers).get(b"mesh-status", b"").decode("latin-1")
        signed = Signed(int(self.wall()), post.request_id, status)
        if post.body_file is None:
            return signature(post.signing_key, post.body, signed)
        size = await trio.to_thread.run_sync(self.bodies.size, post.body_file)
        with self.bodies.ranges(post.body_file) as ranges:
            return await trio.to_thread.run_sync(
                signature_of_body, post.signing_key, ranges, size, signed
            )


def _origin(url: str) -> str:
    """``scheme://host:port`` of a checked URL (it has no user:password@)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
