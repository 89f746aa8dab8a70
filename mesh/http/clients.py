"""Outgoing HTTP to any URL (callbacks, event posts): one httpx client per post under way.

httpcore's connection pool spends time quadratic in the requests in flight on it (each
request start and end rescans every request against every connection; encode/httpcore
#1035), which made a single shared client the bottleneck of a peer forwarding 64
requests at once (the forwarder now uses `mesh.http.origin`). Here each client holds at most
one connection and serves one request at a time, taken from a free list and given back
(the warmest first), so each pool stays trivial and a connection is still kept alive
between requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import httpx
import trio

# An idle connection is dropped after a second: sooner than common servers drop theirs
# (2 s and up), so a request is never sent on a connection the server is just closing
# (for a POST, that would be an unknown outcome).
IDLE_CONNECTION = 1.0
ONE_CONNECTION = httpx.Limits(
    max_connections=1, max_keepalive_connections=1, keepalive_expiry=IDLE_CONNECTION
)


class Clients:
    """httpx clients handed out one request at a time. As many clients exist as were ever
    in use at once; all are closed on exit."""

    def __init__(self, timeout: httpx.Timeout) -> None:
        self.timeout = timeout
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def one(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one request (with its response read or closed inside)."""
        client = self._free.pop() if self._free else self._new()
        try:
            yield client
        finally:
            self._free.append(client)

    def _new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=ONE_CONNECTION,
            follow_redirects=False,
            trust_env=False,  # straight to the host that was checked: no proxy from the env
        )
        self._all.append(client)
        return client

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        clients, self._all, self._free = self._all, [], []
        with trio.CancelScope(shield=True):  # closed even when the peer is cancelled
            for client in clients:
                await client.aclose()
