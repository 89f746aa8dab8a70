"""Callback and events URLs, checked before they are stored, and the signature each
callback POST carries (design brief: "Who may call", "HTTP API").

`checked_url` takes a caller's ``Mesh-Callback`` or ``Mesh-Events`` URL apart by a
strict grammar of its own, matches the parts against the roster's `callbacks` patterns
(`CallbackPattern`), and has httpx, which makes the connection, read the same host and
port; it returns the URL rebuilt from the parts checked, never the caller's text.

A callback is signed as webhooks are (Stripe, Standard Webhooks): header
``Mesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, signed)>`` where `signed` is
``"<t>.<Mesh-Request-Id>.<Mesh-Status>." + body`` (the status empty on event posts), the
key derived from the caller's token (`signing_key`), so mesh keeps the key, not the
token, and the receiver, which knows the token, derives the same key (`verify`). A
captured callback cannot be passed off as another request's, or with another status.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass

import httpx

from ..config.access import CallbackPattern
from ..pipe.pieces import BodyRanges
from .problems import HTTPProblem

SIGNATURE_HEADER = b"mesh-signature"
_KEY_LABEL = b"mesh-callback-signature"
_CHUNK = 1 << 20
_DEFAULT_PORT = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/"  # RFC 3986 pchar and "/", but pct-encoded
_PATH = re.compile(rf"(?:[{_PCHARS}]|%[0-9A-Fa-f]{{2}})*")
_QUERY = re.compile(rf"(?:[{_PCHARS}?]|%[0-9A-Fa-f]{{2}})*")
_SIGNED = re.compile(r"t=([0-9]{1,20})((?:,v1=[0-9a-f]{64})+)")


class _Refused(ValueError):
    """Why a URL is refused, in words that never repeat the URL."""


@functools.lru_cache(maxsize=64)
def _parsed(patterns: tuple[str, ...]) -> tuple[CallbackPattern, ...]:
    return tuple(CallbackPattern.parse(p) for p in patterns)


def checked_url(raw: str, patterns: tuple[str, ...], header: str) -> str:
    """The URL `raw` from header `header` (``Mesh-Callback``, ``Mesh-Events``), rebuilt
    as ``scheme://host:port/path[?query]`` (scheme and host lowercase, IPv6 compressed
    in brackets, the port always written, an empty path as ``/``, an empty query
    dropped) if it matches one of `patterns` (`callbacks`; none: nothing matches).

    `HTTPProblem` 403 otherwise, its detail saying why without the path or query (they
    may hold a secret): whitespace, control or non-ASCII characters anywhere, ``\\``,
    a fragment, userinfo (any ``@`` in the authority), ``%`` in the host, a scheme
    other than http(s), no host, a port not 1-65535, a host neither an IP address nor a
    DNS name (its last label starting with a letter, so never read as a number), a
    character RFC 3986 does not allow in the path or query, a bad ``%`` escape, or a
    URL httpx reads with another scheme, host or port.
    """
    title = f"{header} URL not allowed"
    try:
        scheme, host, port, path, query = _split(raw)
    except _Refused as error:
        raise HTTPProblem(403, title, str(error)) from None
    where = f"{scheme}://{_bracketed(host)}:{port}"
    if not any(p.matches(scheme, host, port, path) for p in _parsed(patterns)):
        detail = f"{where} with that path matches none of the callbacks patterns"
        raise HTTPProblem(403, title, detail)
    url = where + path + (f"?{query}" if query else "")
    for text in (raw, url):  # the caller's text and ours both go where we checked
        if _httpx_reads(text) != (scheme, host, port):
            detail = f"an HTTP client reads another host than {where} in it"
            raise HTTPProblem(403, title, detail)
    return url


def _split(raw: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, path, query) of `raw`, or `_Refused`."""
    _check_characters(raw)
    found = _SCHEME.match(raw)
    if found is None:
        raise _Refused("not an absolute URL scheme://host[:port]/path")
    scheme = found[1].lower()
    if scheme not in _DEFAULT_PORT:
        raise _Refused("the scheme must be http or https")
    rest = raw[found.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:cut], rest[cut:]
    if "@" in authority:
        raise _Refused("userinfo (an @ before the host) is not allowed")
    if "%" in authority:
        raise _Refused("percent-encoding is not allowed in the host")
    host, port = _host_port(authority, _DEFAULT_PORT[scheme])
    path, _, query = rest.partition("?")
    if not _PATH.fullmatch(path) or not _QUERY.fullmatch(query):
        raise _Refused("the path or query holds a character not allowed or a bad % escape")
    return scheme, host, port, path or "/", query


def _check_characters(raw: str) -> None:
    for char in raw:
        if not char.isascii():
            raise _Refused("a non-ASCII character is not allowed (percent-encode it)")
        if char.isspace() or not char.isprintable():
            raise _Refused("whitespace and control characters are not allowed")
    if "\\" in raw:
        raise _Refused("a backslash is not allowed")
    if "#" in raw:
        raise _Refused("a fragment (#) is not allowed")


def _host_port(authority: str, default: int) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` or ``[ipv6][:port]``: the host canonical."""
    if authority.startswith("["):
        inside, bracket, after = authority[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _Refused("the host is not a bracketed IPv6 address")
        host = _ipv6(inside)
    else:
        name, _, _ = authority.partition(":")
        host, after = _ip_or_name(name), authority[len(name) :]
    if not after:
        return host, default
    port_text = after[1:]
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise _Refused("the port is not a number from 1 to 65535")
    return host, int(port_text)


def _ipv6(text: str) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise _Refused("the host is not a bracketed IPv6 address") from None


def _ip_or_name(text: str) -> str:
    """An IPv4 address as written (dotted quad, no leading zeros) or a DNS name, lower."""
    if not text:
        raise _Refused("the URL has no host")
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    name = text.lower()
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _Refused("the host is neither an IP address nor a DNS name")
    if not labels[-1][0].isalpha():  # ``127.1``, ``0x7f.1``: resolvers read a number
        raise _Refused("the host is neither an IP address nor a DNS name")
    return name


def _httpx_reads(text: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) as httpx reads `text`, the host canonical; None if it can't."""
    try:
        url = httpx.URL(text)
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORT[url.scheme]
    except (httpx.InvalidURL, UnicodeError, KeyError):
        return None
    with contextlib.suppress(ValueError):  # an IP address, as `_split` writes it
        host = ipaddress.ip_address(host).compressed
    return url.scheme, host, port


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def signing_key(token: str) -> bytes:
    """The key that signs the callbacks of the caller holding `token`: mesh keeps this
    key, never the token; the receiver, knowing the token, derives it again."""
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class Signed:
    """What a signature covers besides the body: when it was made (unix seconds), the
    request it is about, and the status a callback carries (empty for an event)."""

    at: int
    request_id: str
    status: str = ""

    def prefix(self, stamp: str | None = None) -> bytes:
        """``"<at>.<request_id>.<status>."``, with `stamp` for `at` as a header wrote it."""
        return f"{stamp or self.at}.{self.request_id}.{self.status}.".encode()


def signature(key: bytes, body: bytes, signed: Signed) -> str:
    """The ``Mesh-Signature`` value of a POST of `body`:
    ``t=<at>,v1=<hex HMAC-SHA256(key, "<at>.<request id>.<status>." + body)>``."""
    mac = hmac.new(key, signed.prefix() + body, hashlib.sha256).hexdigest()
    return f"t={signed.at},v1={mac}"


def signature_of_body(key: bytes, body: BodyRanges, size: int, signed: Signed) -> str:
    """`signature` of the `size` bytes of a body kept on disk, read in chunks (blocking:
    run it off the event loop); `OSError` if they cannot all be read."""
    mac = hmac.new(key, signed.prefix(), hashlib.sha256)
    for offset in range(0, size, _CHUNK):
        mac.update(body.read(offset, min(_CHUNK, size - offset)))
    return f"t={signed.at},v1={mac.hexdigest()}"


def verify(token: str, header: str, body: bytes, signed: Signed, tolerance: int = 300) -> bool:
    """Whether `header` (a ``Mesh-Signature`` value) signs `body` and `signed`'s request
    id and status with the key of `token`, made within `tolerance` seconds of
    `signed.at` (the receiver's now) either way. What a receiver runs: any ``v1`` of
    several may match (a key being rotated); anything malformed is False; digests are
    compared in constant time."""
    found = _SIGNED.fullmatch(header.strip())
    if found is None or abs(signed.at - int(found[1])) > tolerance:
        return False
    content = signed.prefix(found[1]) + body  # over the stamp as written
    expected = hmac.new(signing_key(token), content, hashlib.sha256).hexdigest()
    given = found[2].split(",v1=")[1:]
    return any([hmac.compare_digest(expected, mac) for mac in given])
