"""ASGI plumbing shared by the ingress and the echo service: serving an app with
hypercorn at an address, lifespan, reading a request body within a limit, and answering
with JSON.

Hypercorn sets no body limit for ASGI apps: `read_body` and `too_large` enforce one while
reading.

With a peer's `tls` files the address is served over HTTPS (and, with `client_ca`, only to
callers whose certificate that CA signed); the files are loaded once here before hypercorn
starts, so a bad one is a ConfigError naming ``<peer>.tls`` rather than a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import trio
from hypercorn.config import Config as HypercornConfig

from ..config.roster import Address, TLSFiles
from ..errors import ConfigError, leaves
from ..wire.messages import MAX_HEADER_BYTES, MAX_TARGET
from .http11 import go_on
from .listening import connection_limit, serve_capped
from .problems import HTTPProblem

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_HEAD = MAX_TARGET + MAX_HEADER_BYTES + 16 * 1024  # bytes of a request head read at most
KEEP_ALIVE = 30  # seconds an idle caller's connection is kept
HEAD_TIMEOUT = 30  # seconds a connection may take for its first request head
QUIET = 30  # seconds a connection may send nothing while none of its requests is answered
BODY_SILENCE = 30  # seconds a request body may stop coming before it is given up
SLOWEST, SLOW_GRACE = 1024, 30.0  # bytes/s a request body comes at least, after seconds


async def serve_at(
    nursery: trio.Nursery, app: Any, address: Address, what: str, tls: TLSFiles | None = None
) -> None:
    """Serve ASGI `app` at `address` in `nursery`, returning once it listens; ConfigError
    naming `what` (``alpha.listen``, ``--echo``) when the address cannot be had. With `tls`,
    over HTTPS; ConfigError naming the sibling setting (``alpha.tls``) when its files
    cannot be loaded."""
    config = HypercornConfig()
    config.bind = [str(address)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    config.graceful_timeout = 2.0
    # Keep an idle caller's connection longer than clients keep theirs (httpx, Node: 5 s),
    # so a caller never sends a request on a connection we are just closing; but not for
    # long: an idle connection holds a file descriptor.
    config.keep_alive_timeout = KEEP_ALIVE
    # A connection may be quiet this long, but while one of its requests is answered
    # (a caller waiting for its answer sends nothing: `listening`); the first head has
    # its deadline (`serve_capped`), later ones the keep-alive timer, a body `BODY_SILENCE`.
    config.read_timeout = QUIET
    # Room for the longest head the far side takes, so that one over it is answered by
    # the ingress (414, 431 as problem+json), not cut off by h11 (16 KiB by default)
    config.h11_max_incomplete_size = MAX_HEAD
    config.include_server_header = False  # answers carry the upstream's, not ours
    config.include_date_header = False
    if tls is not None:
        check_tls(tls, f"{what.rpartition('.')[0] or what}.tls")
        config.certfile, config.keyfile = str(tls.cert), str(tls.key)
        config.alpn_protocols = ["http/1.1"]  # as over plain HTTP: one protocol to reason about
        if tls.client_ca is not None:  # mTLS: a caller without such a certificate is refused
            config.ca_certs = str(tls.client_ca)
            config.verify_mode = ssl.CERT_REQUIRED
    try:
        serving = partial(serve_capped, app, config, connection_limit(), HEAD_TIMEOUT)
        await nursery.start(serving)
    except* OSError as group:  # raised inside hypercorn's nurseries
        reasons = "; ".join(str(e.strerror or e) for e in leaves(group))
        raise ConfigError(f"{what}: cannot listen on {address}: {reasons}") from None


class _Encrypted(Exception):
    """Raised for OpenSSL's passphrase prompt: an encrypted key is refused, not asked about."""


def _no_passphrase() -> NoReturn:
    raise _Encrypted


def check_tls(tls: TLSFiles, what: str) -> None:
    """Load `tls`'s files into an SSL context as hypercorn will (its create_ssl_context);
    a ConfigError naming `what` (``alpha.tls``) and the file when one cannot be."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load(what, "certificate", tls.cert, lambda: context.load_verify_locations(tls.cert))
    _load(
        what,
        "key",
        tls.key,
        lambda: context.load_cert_chain(tls.cert, tls.key, password=_no_passphrase),
        mismatch=f"it does not go with the certificate {tls.cert}",
    )
    if tls.client_ca is not None:
        ca = tls.client_ca
        _load(what, "client_ca certificate", ca, lambda: context.load_verify_locations(ca))


def _load(what: str, thing: str, path: Path, load: Callable[[], None], mismatch: str = "") -> None:
    """Run `load`; a ConfigError saying in words why the `thing` at `path` was refused."""
    try:
        load()
        return
    except _Encrypted:
        reason = "it is encrypted with a passphrase; mesh needs it unencrypted"
    except ssl.SSLError as error:  # before OSError, its base
        if error.reason == "KEY_VALUES_MISMATCH" and mismatch:
            reason = mismatch
        else:
            reason = f"no PEM {'private key' if thing == 'key' else 'certificate'} in it"
            if error.reason and error.reason != "NO_CERTIFICATE_OR_CRL_FOUND":
                reason += f" ({error.reason.lower().replace('_', ' ')})"
    except OSError as error:
        reason = error.strerror or str(error)
    raise ConfigError(f"{what}: cannot load the {thing} {path}: {reason}")


async def respond_json(
    send: Send,
    status: int,
    body: Any,
    content_type: str = "",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", (content_type or "application/json").encode()),
        (b"content-length", str(len(data)).encode()),
        *extra,
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


async def _next_piece(receive: Receive) -> MutableMapping[str, Any]:
    """The next ASGI event of a request body; HTTPProblem 408 when none comes for
    `BODY_SILENCE` seconds (a body that stopped coming would hold its connection)."""
    with trio.move_on_after(BODY_SILENCE):
        return await receive()
    detail = f"no part of the request body came for {BODY_SILENCE} s"
    raise HTTPProblem(408, "request body stopped", detail, ((b"connection", b"close"),))


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it comes (a client waiting for ``100 Continue`` is told to
    send it first); a client that goes away midway is a 400, one whose body stops
    coming for `BODY_SILENCE` seconds, or comes slower than `SLOWEST` bytes a second
    after the first `SLOW_GRACE` seconds, a 408."""
    await go_on()
    started, came = trio.current_time(), 0
    while True:
        event = await _next_piece(receive)
        if event["type"] == "http.disconnect":
            raise HTTPProblem(400, "client went away")
        piece = event.get("body", b"")
        came += len(piece)
        took = trio.current_time() - started
        if took > SLOW_GRACE and came < SLOWEST * took:  # a trickle would hold its slot
            detail = f"a request body comes at {SLOWEST} bytes/s at least"
            raise HTTPProblem(408, "request body too slow", detail, ((b"connection", b"close"),))
        yield piece
        if not event.get("more_body", False):
            return


async def discard_body(receive: Receive, bound: float = math.inf) -> bool:
    """Read what is left of a refused body, up to `bound` bytes, and drop it; whether it
    all came. After the answer (`linger`): hypercorn queues body chunks for the app, and
    a connection whose queue is full is never closed; a client still sending gets the
    answer rather than a reset connection."""
    dropped = 0
    while dropped <= bound:
        try:
            event = await _next_piece(receive)
        except HTTPProblem:  # stopped coming: nothing more to drop
            return False
        if event["type"] == "http.disconnect" or not event.get("more_body", False):
            return True
        dropped += len(event.get("body", b""))
    return False


LINGER_BYTES, LINGER_SECONDS = 64 << 20, 10.0  # of a refused body read (and dropped) after


async def linger(receive: Receive) -> None:
    """After answering a request whose body was refused: drop what more of it comes, up
    to `LINGER_BYTES` and `LINGER_SECONDS` (its connection is closed then)."""
    with trio.move_on_after(LINGER_SECONDS):
        await discard_body(receive, LINGER_BYTES)


def too_large_unread(limit: int) -> HTTPProblem:
    """The 413 for a body declared over `limit` by a client waiting for ``100 Continue``
    before it sends it: answered at once, nothing read, and the connection closed after
    (the client may send the body anyway)."""
    problem = too_large(limit)
    problem.body_read = True  # none of it will be
    return problem


def too_large(limit: int) -> HTTPProblem:
    """The 413 for a body over `limit`: answered at once (what is still coming is dropped
    after, `linger`), and the connection closed."""
    detail = f"the limit is {limit} bytes"
    return HTTPProblem(413, "body over the limit", detail, ((b"connection", b"close"),))


async def read_body(receive: Receive, limit: int) -> bytes:
    """The request body in memory, refusing (413) one over `limit` before reading it all."""
    chunks, size = [], 0
    async for chunk in body_chunks(receive):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
