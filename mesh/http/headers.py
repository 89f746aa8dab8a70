"""Which headers cross the mesh, and what the forwarder adds on the far side.

A request or response crosses with its end-to-end headers only: hop-by-hop ones (and
those `Connection` names), `Host`, `Content-Length` and mesh's own `Mesh-*` stay behind.
The upstream gets them back plus `Via`, and a `Content-Length` whenever there is a body
of a known length; a body whose length the caller did not say either (it sent it
chunked) goes to the upstream chunked as it comes.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..wire.messages import Headers, Request

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"host",
        b"content-length",
        b"expect",  # answered by the caller's peer; the far side sends the body whole
    }
)
# Headers some servers take as the method or path instead of the request's own: dropped
# where what the caller may call (`may_call`) or what the upstream may receive (`serves`)
# is decided by method and path
OVERRIDES = frozenset(
    {
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-url",
        b"x-original-uri",
        b"x-original-method",
        b"x-rewrite-url",
    }
)
REASON = b"mesh-reason"  # the upstream's reason phrase, carried beside its status
WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # methods that always say their length


def end_to_end(
    headers: Iterable[tuple[bytes, bytes]], keeping: frozenset[bytes] = frozenset()
) -> Headers:
    """Headers without hop-by-hop ones (and those `Connection` names) or mesh's own,
    but those named in `keeping` (lowercase), in their places."""
    pairs = [(name.lower(), value) for name, value in headers]
    named = {
        token.strip().lower()
        for name, value in pairs
        if name == b"connection"
        for token in value.split(b",")
    }
    return tuple(
        (name, value)
        for name, value in pairs
        if name in keeping
        or (name not in HOP_BY_HOP and name not in named and not name.startswith(b"mesh-"))
    )


def upstream_headers(request: Request, peer: str) -> list[tuple[bytes, bytes]]:
    """What the upstream receives with `request`, forwarded by `peer` (``Host`` is added
    by `origin.Origin`, as the upstream's own)."""
    headers = [*end_to_end(request.headers), (b"via", f"1.1 mesh-{peer}".encode())]
    if request.unsized:
        headers.append((b"transfer-encoding", b"chunked"))
        return headers
    length = request.body_length or len(request.body)
    if length or request.method in WITH_BODY:
        headers.append((b"content-length", str(length).encode()))
    return headers


def declared_length(value: str | bytes | None) -> int | None:
    """The length a Content-Length header declares; None when absent or not a number."""
    return int(value) if value is not None and value.isdigit() else None
