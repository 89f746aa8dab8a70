"""The pool of one-connection httpx clients the poster uses."""

from __future__ import annotations

import httpx
import trio

from mesh.http.clients import Clients


async def test_a_client_serves_one_request_at_a_time_and_is_used_again() -> None:
    async with Clients(httpx.Timeout(5.0)) as clients:
        async with clients.one() as first, clients.one() as second:
            assert first is not second  # both under way at once
        async with clients.one() as again:
            assert again in (first, second)  # given back, not made anew
        async with clients.one() as a, clients.one() as b, clients.one() as c:
            assert len({id(a), id(b), id(c)}) == 3
    assert all(client.is_closed for client in (a, b, c))


async def test_clients_close_even_when_cancelled() -> None:
    with trio.CancelScope() as scope:
        async with Clients(httpx.Timeout(5.0)) as clients:
            async with clients.one() as client:
                pass
            scope.cancel()
            await trio.sleep_forever()
    assert client.is_closed
