"""How a caller is answered: how long it waits (`wait_for_answer`), the ``202`` that
says where the answer will be (`accepted`), and the upstream's response as it gave it
(`respond_with`); whether the caller is still there (`note_gone`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, MutableMapping
from typing import Any

import trio

from ..pipe.bodies import Bodies
from ..state.requests import RequestRecord
from .asgi import Receive, Send
from .problems import HTTPProblem


async def note_gone(receive: Receive, gone: trio.Event) -> None:
    """Set `gone` once the caller has gone (``http.disconnect``, which comes too once an
    answer has ended). What more comes of a body answered before its end is dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


class BodyWatch:
    """A request's ASGI `receive` that notes whether the end of its body was seen (its
    last piece, or the caller gone): an answer before it ends the connection."""

    def __init__(self, receive: Receive) -> None:
        self._receive, self.ended = receive, False

    async def __call__(self) -> MutableMapping[str, Any]:
        event = await self._receive()
        if event["type"] == "http.disconnect" or not event.get("more_body", False):
            self.ended = True
        return event


def closing(send: Send) -> Send:
    """`send`, the head of the answer saying ``Connection: close``: its request's body
    was not read to its end, so the connection cannot carry another request (hypercorn
    closes it after the answer)."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return sending


async def cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def wait_for_answer(headers: Iterable[tuple[bytes, bytes]]) -> float:
    """Seconds the caller waits for its answer before a ``202``: 0 for ``Prefer:
    respond-async``, N for ``Prefer: wait=N`` or ``Mesh-Timeout: N`` (the smaller when
    both come), else until the request ends (its deadline bounds that). A bad number
    is a 400."""
    wait, preferences = math.inf, []
    for name, value in headers:
        name = name.lower()
        if name == b"mesh-timeout":
            wait = min(wait, _seconds(value, "Mesh-Timeout"))
        elif name == b"prefer":
            preferences += [p.strip() for p in value.decode("latin-1").lower().split(",")]
    for preference in preferences:
        token, _, argument = preference.partition(";")[0].partition("=")
        if token.strip() == "respond-async":
            return 0.0
        if token.strip() == "wait":
            wait = min(wait, _seconds(argument.strip().strip('"').encode(), "Prefer: wait"))
    return wait


def _seconds(raw: bytes, what: str) -> float:
    """A number of seconds given by the caller; HTTPProblem 400 when it is not one."""
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise HTTPProblem(400, f"bad {what}", "give seconds, e.g. 30")
    return seconds


async def accepted(send: Send, request_id: str, retry_after: int, base: str = "") -> None:
    """202: the request is durable; its answer will be at the Location (under `base`,
    this peer's own URL, when the caller's URL would lead elsewhere), likely in
    `retry_after` seconds."""
    status = f"{base}/mesh/requests/{request_id}"
    body = json.dumps({"id": request_id, "status": status}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"location", f"{status}/response".encode()),
        (b"retry-after", str(retry_after).encode()),
        (b"mesh-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


NO_BODY = frozenset({204, 304})  # statuses that never have a body (nor say its length)


async def respond_with(
    send: Send, record: RequestRecord, bodies: Bodies, gone: trio.Event | None = None
) -> bool:
    """The upstream's answer as it gave it, with `Mesh-Request-Id`. A `Content-Length` is
    added only where the upstream's was dropped for a body that crossed: never to a
    ``204``, a ``304`` or an answer to ``HEAD`` (they keep the upstream's own, if any). A
    spooled body is streamed from its file; HTTPProblem 410 when that file is gone.
    Whether the caller was there (`gone` not set) until the last of it was sent."""
    assert record.status is not None
    headers = [*record.headers, (b"mesh-request-id", record.id.encode())]
    size = len(record.body)
    if record.given_at is not None:
        raise HTTPProblem(410, "response given", "it went to the caller that waited for it")
    if record.body_file is not None:
        try:
            size = await trio.to_thread.run_sync(bodies.size, record.body_file)
        except FileNotFoundError:
            raise HTTPProblem(410, "response gone", "its body file is not kept") from None
    framed = record.status in NO_BODY or record.method == "HEAD" or record.status < 200
    if not framed and not any(name == b"content-length" for name, _ in record.headers):
        headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": record.status, "headers": headers})
    if record.body_file is None:
        await send({"type": "http.response.body", "body": record.body})
        return True
    whole = True
    async for chunk in bodies.chunks(record.body_file):  # each read lets `gone` be noted
        # Still there as this piece leaves: a caller gone midway was noted before its last
        whole = gone is None or not gone.is_set()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
    return whole
