"""What a request must be before the ingress looks further: addressed unambiguously, with
one of each header that decides who calls and from where, a `Host` this peer answers to
when it has no callers, and a head the far side can take.

Every refusal is an `HTTPProblem` raised before anything is stored or sent:
- ``400`` for an address that reads two ways (``//bravo/x``, ``/%62ravo/x``, an
  absolute-form target without a host), a repeated ``Host``, ``Origin``, ``Authorization``
  or ``Proxy-Authorization``, a method or target the far side would refuse;
- ``414`` for a target over the far side's limit, ``431`` for headers over theirs;
- ``421`` for a `Host` naming something else than this peer on a peer open to all
  (a web page that rebinds its own name to this address must not reach it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config.access import is_loopback
from ..config.roster import PeerSettings
from ..wire.messages import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_TARGET,
    Headers,
    headers_fit,
    valid_method,
    valid_target,
)
from .problems import HTTPProblem

SINGLE = (b"host", b"origin", b"authorization", b"proxy-authorization")
_HOST_SUFFIX = ".localhost"  # names that resolve to this machine only (RFC 6761)


@dataclass(frozen=True)
class Call:
    """Where a call goes: to `peer`'s upstream, at `target` (its path; the query is
    added later); `proxied` when it came in absolute form (the peer as an HTTP proxy)."""

    peer: str
    target: str
    proxied: bool = False


def addressed(raw_path: bytes) -> Call | None:
    """The `Call` a request makes, from the raw request target (`raw_path`, no query):
    ``/{peer}/{path}`` or ``http://{peer}[:port]/{path}``; None for mesh's own routes
    (``/mesh/...``) and ``/``. HTTPProblem 400 when the peer's name is empty or
    percent-encoded, or the absolute form has no host: such a target reads differently
    to each side."""
    if raw_path[:8].lower().startswith((b"http://", b"https://")):
        return _absolute(raw_path)
    peer, slash, rest = raw_path.decode("latin-1")[1:].partition("/")
    if peer == "mesh" or not (peer or slash):
        return None
    if not peer or "%" in peer:
        detail = "a path starts with a peer's name, written plainly: /bravo/path"
        raise HTTPProblem(400, "ambiguous target", detail)
    return Call(peer, "/" + rest if slash else "/")


def _absolute(raw_path: bytes) -> Call:
    """The call of ``http://peer[:port]/path`` (userinfo ignored)."""
    rest = raw_path.decode("latin-1").split("://", 1)[1]
    authority, slash, path = rest.partition("/")
    host = authority.rsplit("@", 1)[-1].split(":", 1)[0].lower()
    if not host:
        raise HTTPProblem(400, "ambiguous target", "an absolute-form target names a host")
    return Call(host, slash + path if slash else "/", proxied=True)


def single_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """HTTPProblem 400 if a header in `SINGLE` comes more than once (which one counts
    would depend on who reads it)."""
    seen: set[bytes] = set()
    for name, _ in headers:
        name = name.lower()
        if name in SINGLE and name in seen:
            raise HTTPProblem(400, "repeated header", f"{name.decode()} is sent once")
        seen.add(name)


def host_answered(settings: PeerSettings, headers: Mapping[bytes, bytes]) -> None:
    """HTTPProblem 421 when a peer open to all (no callers) is reached under another
    name than its own: this machine's loopback addresses, ``localhost`` and names under
    it, its listen host, or the peer's name. A peer with callers answers any name
    (tokens decide)."""
    if settings.callers is not None:
        return
    host = _hostname(headers.get(b"host", b"").decode("latin-1"))
    if (
        is_loopback(host)
        or host.endswith(_HOST_SUFFIX)
        or host in (settings.listen.host, settings.name)
        or (settings.listen.wildcard and _is_ip(host))
    ):
        return
    detail = f"{settings.name} answers to localhost and its own address, not {host!r}"
    raise HTTPProblem(421, "unknown host", detail)


def _hostname(host: str) -> str:
    """The name in a `Host` value, lowercase, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host


def _is_ip(host: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-f:]+", host)) and any(c in host for c in ".:")


def head_fits(method: str, target: str, crossing: Headers) -> None:
    """HTTPProblem 400/414/431 for a request head the far side would refuse (its method,
    its target, `crossing`: the headers that cross, `headers.end_to_end`); by the far
    side's own rules (`wire.messages`)."""
    if not valid_method(method):
        raise HTTPProblem(400, "bad method", "a method is a token of at most 32 characters")
    if len(target) > MAX_TARGET:
        raise HTTPProblem(414, "target too long", f"at most {MAX_TARGET} characters")
    if not valid_target(target):
        raise HTTPProblem(400, "bad target", "a target is printable ASCII without spaces")
    if not headers_fit(crossing):
        detail = f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all cross"
        raise HTTPProblem(431, "headers too large", detail)
