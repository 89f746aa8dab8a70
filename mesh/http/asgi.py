"""ASGI plumbing shared by the ingress and the echo service: serving an app with
hypercorn at an address, lifespan, reading a request body within a limit, and answering
with JSON.

Hypercorn sets no body limit for ASGI apps: `read_body` and `too_large` enforce one while
reading.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..config.roster import Address
from ..errors import ConfigError, leaves
from .problems import HTTPProblem

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KEEP_ALIVE = 75.0  # seconds an idle caller's connection is kept (as nginx does)


async def serve_at(nursery: trio.Nursery, app: Any, address: Address, what: str) -> None:
    """Serve ASGI `app` at `address` in `nursery`, returning once it listens; ConfigError
    naming `what` (``alpha.listen``, ``--echo``) when the address cannot be had."""
    config = HypercornConfig()
    config.bind = [str(address)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    config.graceful_timeout = 2.0
    # Keep an idle caller's connection longer than clients keep theirs (httpx, Node: 5 s),
    # so a caller never sends a request on a connection we are just closing.
    config.keep_alive_timeout = KEEP_ALIVE
    config.include_server_header = False  # answers carry the upstream's, not ours
    config.include_date_header = False
    try:
        await nursery.start(partial(serve, app, config, mode="asgi"))
    except* OSError as group:  # raised inside hypercorn's nurseries
        reasons = "; ".join(str(e.strerror or e) for e in leaves(group))
        raise ConfigError(f"{what}: cannot listen on {address}: {reasons}") from None


async def respond_json(send: Send, status: int, body: Any, content_type: str = "") -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", (content_type or "application/json").encode()),
        (b"content-length", str(len(data)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge ASGI lifespan events (hypercorn waits for them) until shutdown."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it comes; a client that goes away midway is a 400."""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise HTTPProblem(400, "client went away")
        yield event.get("body", b"")
        if not event.get("more_body", False):
            return


async def discard_body(receive: Receive, bound: float = math.inf) -> bool:
    """Read what is left of a refused body, up to `bound` bytes, and drop it; whether it
    all came. Before the answer, so a client still sending gets it rather than a closed
    connection; after it, because hypercorn queues body chunks for the app, and a
    connection whose queue is full is never closed."""
    dropped = 0
    while dropped <= bound:
        event = await receive()
        if event["type"] == "http.disconnect" or not event.get("more_body", False):
            return True
        dropped += len(event.get("body", b""))
    return False


DISCARD_BEFORE_ANSWER = 64 << 20  # bytes of a refused body read (and dropped) before a 413


async def too_large(receive: Receive, limit: int) -> HTTPProblem:
    """The 413 for a body over `limit`, once the rest of it (if not too much) was read."""
    problem = HTTPProblem(413, "body over the limit", f"the limit is {limit} bytes")
    problem.body_read = await discard_body(receive, DISCARD_BEFORE_ANSWER)
    return problem


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body in memory, refusing (413) one over `limit` before reading it all."""
    chunks, size = [], 0
    async for chunk in body_chunks(receive):
        size += len(chunk)
        if size > limit:
            raise await too_large(receive, limit)
        chunks.append(chunk)
    return b"".join(chunks)
