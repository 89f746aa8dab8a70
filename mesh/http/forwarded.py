"""How the upstream learns the way its caller reached it, and how its redirects are
turned back to the caller's view.

The caller's peer sets, on every call that crosses (DESIGN.md, "HTTP API"):
- ``X-Forwarded-Host``: the host (and port) the caller named: this peer's address in the
  path form, ``{peer}[:port]`` in the proxy form, ``{peer}.{host_suffix}[:port]`` in the
  host form;
- ``X-Forwarded-Proto``: ``http`` or ``https``, as the caller spoke to this peer (or, in
  the proxy form, the scheme of its target);
- ``X-Forwarded-Prefix``: ``/{peer}`` in the path form only;
- ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239): the caller's address appended to
  any the caller sent (a list each proxy on the way adds to).

A caller's own ``X-Forwarded-*`` claims (and their underscore spellings, ``X-Real-IP``)
are dropped: only mesh says where the caller stood, so an upstream that trusts these
headers cannot be told a made-up origin by a caller. The far side reads them back
(`View.of`) to send the caller's ``Host`` (``preserve_host``) and to rewrite a
``Location`` that names the upstream's own address, or in the path form its root
(`caller_location`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..wire.messages import Headers

HOST, PROTO, PREFIX = b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-prefix"
FOR, FORWARDED = b"x-forwarded-for", b"forwarded"
OURS = frozenset({HOST, PROTO, PREFIX})  # only mesh sets these
_CLAIMS = frozenset(  # where servers read a client's address or scheme from
    {
        FORWARDED,
        b"forwarded-for",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
        b"client-ip",
        b"x-original-forwarded-for",
        b"x-scheme",
        b"x-url-scheme",
        b"front-end-https",
    }
)
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PAIR = rb"%s=(?:%s|\"(?:[^\"\\]|\\.)*\")" % (_TOKEN, _TOKEN)
_ELEMENT = rb"(?:%s(?:\s*;\s*%s)*)" % (_PAIR, _PAIR)
_ELEMENTS = re.compile(rb"%s(?:\s*,\s*%s)*" % (_ELEMENT, _ELEMENT))  # RFC 7239's list
_ADDRESSES = re.compile(rb"[0-9A-Za-z.:\[\]_-]+(?:\s*,\s*[0-9A-Za-z.:\[\]_-]+)*")


@dataclass(frozen=True)
class View:
    """The upstream as its caller sees it: `proto` and `host` (with any port) of the URL
    it called, and the `prefix` before the upstream's own paths."""

    proto: str
    host: str
    prefix: str = ""

    @property
    def base(self) -> str:
        """The URL the upstream's root has for the caller, without a trailing slash."""
        return f"{self.proto}://{self.host}{self.prefix}"

    @classmethod
    def of(cls, headers: Headers) -> View | None:
        """The view the caller's peer put in `headers`; None without one."""
        found = {name: value.decode("latin-1") for name, value in headers if name in OURS}
        if HOST not in found:
            return None
        proto = found.get(PROTO, "http")
        return cls(
            proto if proto in ("http", "https") else "http", found[HOST], found.get(PREFIX, "")
        )


def forwarded(crossing: Headers, view: View, client: str | None) -> Headers:
    """`crossing` with the caller's claims of where it stood dropped (`claims`) and this
    peer's added: `view`, and `client` (the caller's address, when known) appended to
    the caller's `X-Forwarded-For` and `Forwarded` lists when those are well formed
    (dropped otherwise: a stray quote would swallow this peer's element)."""
    kept = [(name, value) for name, value in crossing if not claims(name)]
    chain = [value for name, value in crossing if name == FOR]
    earlier = [value for name, value in crossing if name == FORWARDED]
    chain = chain if all(_ADDRESSES.fullmatch(value) for value in chain) else []
    earlier = earlier if all(_ELEMENTS.fullmatch(value) for value in earlier) else []
    node = _node(client)
    this_hop = f'for={node};host="{_quoted(view.host)}";proto={view.proto}'.encode()
    added = [
        (HOST, view.host.encode("latin-1")),
        (PROTO, view.proto.encode()),
        *([(PREFIX, view.prefix.encode())] if view.prefix else []),
        (FOR, b", ".join([*chain, (client or "unknown").encode()])),
        (FORWARDED, b", ".join([*earlier, this_hop])),
    ]
    return (*kept, *added)


def claims(name: bytes) -> bool:
    """Whether a caller's header `name` (lowercase) claims something only mesh may say of
    the caller: ``X-Forwarded*`` (mesh sets or appends to those it knows), ``Forwarded``
    and the other names servers read a client's address or scheme from (`_CLAIMS`), or
    any name with an underscore (``X_Forwarded_Host``: servers that read headers
    CGI-style take it for the dashed name; dropped as nginx does)."""
    return name.startswith(b"x-forwarded") or name in _CLAIMS or b"_" in name


def caller_location(location: bytes, upstream_base: str, view: View) -> bytes:
    """`location` as the caller must follow it: a URL under `upstream_base` (the
    upstream's own scheme, host and path prefix; or without the scheme, ``//host/x``)
    is moved under `view`'s base; in the
    path form, a path from the root (``/dir/``) gets the view's prefix (``/bravo/dir/``),
    unless it has it already (an upstream that honours ``X-Forwarded-Prefix``); any
    other is left as it is (a relative one resolves against the caller's URL already)."""
    text = location.decode("latin-1")
    base = upstream_base.rstrip("/")
    if _under(text, base):
        return (view.base + text[len(base) :]).encode("latin-1")
    schemeless = base.partition(":")[2]  # //host:port/prefix
    if text.startswith("//") and _under(text, schemeless):
        return (view.base.partition(":")[2] + text[len(schemeless) :]).encode("latin-1")
    rooted = text.startswith("/") and not text.startswith("//")
    if view.prefix and rooted and not _under(text, view.prefix):
        return (view.prefix + text).encode("latin-1")
    return location


def _under(url: str, base: str) -> bool:
    """Whether `url` is `base` or below it (case aside in scheme and host)."""
    url, base = url.lower(), base.lower()
    return url == base or url[: len(base) + 1] in (base + "/", base + "?", base + "#")


def _node(client: str | None) -> str:
    """A caller's address as RFC 7239 writes a node: IPv6 quoted in brackets."""
    if client is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return f'"{_quoted(client)}"'
    return f'"[{address}]"' if address.version == 6 else str(address)


def _quoted(text: str) -> str:
    """`text` safe inside an RFC 7239 quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
