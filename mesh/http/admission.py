"""What a request must be before the ingress looks further: addressed unambiguously, with
one of each header that decides who calls and from where, a `Host` this peer answers to
when it is open to all, and a head the far side can take.

Every refusal is an `HTTPProblem` raised before anything is stored or sent:
- ``400`` for an address that reads two ways (``//bravo/x``, ``/%62ravo/x``, an
  absolute-form target without a host), a repeated ``Host``, ``Origin``, ``Authorization``
  or ``Proxy-Authorization``, a method or target the far side would refuse;
- ``414`` for a target over the far side's limit, ``431`` for headers over theirs;
- ``421`` for a `Host` naming something else than this peer on a peer open to all (no
  callers, or ``callers: any``): a web page that rebinds its own name to this address
  must not reach it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..config.access import ANY, is_loopback
from ..config.roster import PeerSettings
from ..wire.messages import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_TARGET,
    Headers,
    headers_fit,
    valid_headers,
    valid_method,
    valid_target,
)
from .problems import HTTPProblem

SINGLE = (b"host", b"origin", b"authorization", b"proxy-authorization")
# What a Host (or an absolute target's authority) may be: a DNS name or an IPv4 address,
# or an IPv6 one in brackets, with a port; nothing that reads as a list or as parameters
# where it is copied (X-Forwarded-Host, Forwarded); underscores as some container names have
_HOST = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9._])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_HOST_SUFFIX = ".localhost"  # names that resolve to this machine only (RFC 6761)


class Form(StrEnum):
    """How a call names its peer (DESIGN.md, "HTTP API")."""

    PATH = "path"  # /{peer}/{path}
    PROXY = "proxy"  # http://{peer}/{path}: the peer as an HTTP proxy
    HOST = "host"  # Host: {peer}.{host_suffix}, /{path}


PATH, PROXY, HOST = Form.PATH, Form.PROXY, Form.HOST


@dataclass(frozen=True)
class Call:
    """Where a call goes: to `peer`'s upstream, at `target` (its path; the query is
    added later), named in `form`; `authority` is the host (and port) the caller named
    in the proxy form."""

    peer: str
    target: str
    form: Form = Form.PATH
    authority: str = ""
    scheme: str = "http"  # of the absolute-form target

    @property
    def proxied(self) -> bool:
        return self.form is Form.PROXY

    @property
    def prefix(self) -> str:
        """What the caller's view has before the upstream's paths: ``/{peer}`` in the
        path form, nothing in the others."""
        return f"/{self.peer}" if self.form is Form.PATH else ""


def addressed(raw_path: bytes, method: str = "GET", query: bytes = b"") -> Call | None:
    """The `Call` a request makes, from the raw request target (`raw_path`, no query):
    ``/{peer}/{path}`` or ``http://{peer}[:port]/{path}``; None for mesh's own routes
    (``/mesh/...``) and ``/``. ``OPTIONS http://{peer}`` (no path, no query) asks the
    upstream itself: ``OPTIONS *`` (RFC 9112, 3.2.4). HTTPProblem 400 when the peer's
    name is empty or percent-encoded, or the absolute form has no host: such a target
    reads differently to each side."""
    if raw_path[:8].lower().startswith((b"http://", b"https://")):
        call = _absolute(raw_path)
        if not call.target and method == "OPTIONS" and not query:
            return dataclasses.replace(call, target="*")
        return dataclasses.replace(call, target=call.target or "/")
    peer, slash, rest = raw_path.decode("latin-1")[1:].partition("/")
    if peer == "mesh" or not (peer or slash):
        return None
    if not peer or "%" in peer:
        detail = "a path starts with a peer's name, written plainly: /bravo/path"
        raise HTTPProblem(400, "ambiguous target", detail)
    return Call(peer, "/" + rest if slash else "/")


def _absolute(raw_path: bytes) -> Call:
    """The call of ``http://peer[:port]/path`` (userinfo ignored; target "" for no path)."""
    scheme, rest = raw_path.decode("latin-1").split("://", 1)
    authority, slash, path = rest.partition("/")
    authority = authority.rsplit("@", 1)[-1].lower()
    host = authority.split(":", 1)[0]
    if not host:
        raise HTTPProblem(400, "ambiguous target", "an absolute-form target names a host")
    if not _valid_host(authority):
        raise HTTPProblem(400, "bad target", "its host is a name or address, with a port")
    return Call(host, slash + path, Form.PROXY, authority, scheme.lower())


def route(settings: PeerSettings, scope: Mapping[str, Any]) -> Call | None:
    """The `Call` an ASGI request `scope` makes, in any of the three forms (the proxy
    form, whose target names the peer, before the host form, before the path form);
    None for mesh's own routes. HTTPProblem 400 as `addressed` raises it, or for a
    target in neither form (``bravo/x``), 421 as `host_answered` does for a form that
    reads `Host`."""
    raw = scope.get("raw_path") or scope["path"].encode()
    method, query = scope["method"], scope.get("query_string", b"")
    host = next((v for n, v in scope["headers"] if n.lower() == b"host"), None)
    if raw[:8].lower().startswith((b"http://", b"https://")):
        return addressed(raw, method, query)  # a proxy's Host is the target's
    if not raw.startswith(b"/") and raw != b"*":  # read as /{raw[1:]} before
        detail = "a target is /peer/path, or http://peer/path through a proxy"
        raise HTTPProblem(400, "bad target", detail)
    if host is not None and not _valid_host(host.decode("latin-1")):
        raise HTTPProblem(400, "bad Host", "Host is a name or address, with a port")
    host_answered(settings, {b"host": host} if host is not None else {})
    return hosted(settings, host, raw) or addressed(raw, method, query)


def _valid_host(value: str) -> bool:
    """Whether `value` is a name or address with an optional port (up to 65535)."""
    found = _HOST.fullmatch(value)
    return found is not None and int(found.group("port") or 0) <= 65535


def hosted(settings: PeerSettings, host: bytes | None, raw_path: bytes) -> Call | None:
    """The `Call` of the host form: ``Host: {peer}.{host_suffix}`` (any port) names
    `peer`, another peer than this one, and the whole target goes to its upstream
    untouched; None for any other `Host` (and this peer's own name). Whether `peer` is
    in the roster is told only to a caller let in (`Ingress._check_remote`), as in the
    other forms: a stranger learns no names."""
    name = _hostname((host or b"").decode("latin-1"))
    peer, dot, suffix = name.partition(".")
    if not dot or suffix != settings.host_suffix or peer == settings.name:
        return None
    return Call(peer, raw_path.decode("latin-1"), Form.HOST)


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
    """HTTPProblem 421 when a peer open to all (no callers, or ``callers: any``) is
    reached under another name than its own: this machine's loopback addresses,
    ``localhost`` and names under it, its listen host, or the peer's name. A peer with
    callers answers any name (tokens decide)."""
    if settings.callers is not None and settings.callers != ANY:
        return
    host = _hostname(headers.get(b"host", b"").decode("latin-1"))
    if (
        is_loopback(host)
        or host.endswith((_HOST_SUFFIX, f".{settings.host_suffix}"))
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
    if not valid_target(method, target):
        raise HTTPProblem(400, "bad target", "a target is printable ASCII without spaces")
    if not valid_headers(crossing):
        raise HTTPProblem(400, "bad header", "header values are free of control characters")
    if not headers_fit(crossing):
        detail = f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all cross"
        raise HTTPProblem(431, "headers too large", detail)
