"""HTTP/1.1 as mesh's ingress needs it: hypercorn's protocol (`H11Protocol`) with two
changes, put on each connection by `listening` before anything is read (`adopt`).

- ``100 Continue`` is sent when the app reads the body (`go_on`), not as soon as a head
  comes: hypercorn's eager one asks the client for a body the app may refuse by its
  head alone (a ``413`` for its declared length, a ``401``), so the client would send
  it all for nothing.
- No HTTP/2: hypercorn would switch to it on ``Upgrade: h2c`` or a prior-knowledge
  preface, where header values h11 refuses pass.
- An app's `REASON` header becomes the reason phrase of its status line (ASGI has no
  field for one: the upstream's phrase crosses that way); without one, the phrase RFC
  9110 gives the status (some clients, botocore among them, misread a status line
  without one).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

import h11
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import Response
from hypercorn.protocol.h11 import H11Protocol

from .headers import REASON

_GO_ON: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("go_on", default=None)
_REASON_PHRASE = re.compile(rb"[\t \x21-\x7e\x80-\xff]{0,256}")  # RFC 9112's, bounded


def adopt(protocol: Any, max_incomplete_size: int) -> None:
    """Make `protocol` (hypercorn's, for one connection, before it read anything) mesh's
    HTTP/1.1 if it is hypercorn's plain HTTP/1.1; the app's tasks, started from the
    caller's task later, find it through `go_on`."""
    if type(protocol) is not H11Protocol:
        return
    protocol.__class__ = _MeshH11
    protocol.connection = _NoEagerContinue(
        h11.SERVER, max_incomplete_event_size=max_incomplete_size
    )
    assert isinstance(protocol, _MeshH11)
    _GO_ON.set(protocol.send_continue)


async def go_on() -> None:
    """Tell a client waiting for ``100 Continue`` that its body is wanted now (the app is
    about to read it); nothing for other clients, or outside `serve_capped`."""
    send_continue = _GO_ON.get()
    if send_continue is not None:
        await send_continue()


def _standard_reason(status: int) -> bytes:
    """The reason phrase RFC 9110 gives `status`, or none (some clients, botocore among
    them, misread a status line without one)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class _NoEagerContinue(h11.Connection):
    """h11's connection, saying no client waits for ``100 Continue``: hypercorn sends one
    as soon as a head comes, which asks the client for a body the app may refuse (a
    ``413`` for its declared length); `go_on` sends it instead."""

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return False


class _MeshH11(H11Protocol):
    """hypercorn's HTTP/1.1 with `_NoEagerContinue`, an app's `REASON` header sent as
    the reason phrase of its status line (ASGI has no field for one), and no switch to
    HTTP/2 (``Upgrade: h2c`` is ignored, a ``PRI *`` preface is a request like another):
    mesh's checks are made for HTTP/1.1's rules."""

    async def _check_protocol(self, event: h11.Request) -> None:
        return

    async def stream_send(self, event: StreamEvent) -> None:
        if not (isinstance(event, Response) and event.status_code >= 200):
            await super().stream_send(event)
            return
        reason, headers = _standard_reason(event.status_code), []
        for name, value in event.headers:
            if name.lower() != REASON:
                headers.append((name, value))
            elif _REASON_PHRASE.fullmatch(value):  # else none: h11 would send it as it is
                reason = value
        headers += self.config.response_headers("h11")
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        response = h11.Response(status_code=event.status_code, headers=headers, reason=reason)
        await self._send_h11_event(response)

    async def send_continue(self) -> None:
        """``100 Continue``, if the client waits for one."""
        connection = self.connection
        if isinstance(connection, h11.Connection) and connection.client_is_waiting_for_100_continue:
            headers = self.config.response_headers("h11")
            await self._send_h11_event(h11.InformationalResponse(status_code=100, headers=headers))
