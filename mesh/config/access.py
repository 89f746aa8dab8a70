"""Who may call a peer and what may be called through it: the roster's `callers`,
`serves`, `callbacks` and `tls` (design brief: "Who may call", "What may be called").

Patterns are fnmatch patterns, matched case-sensitively, where ``*`` also matches ``/``:
- a caller's `may_call`: ``[METHOD ]peer/path`` (``"bravo/orders/*"``, ``"GET bravo/*"``,
  ``"*"``), matched against ``METHOD peer/path`` of a call (the path without its query);
- a peer's `serves`, per remote peer: ``[METHOD ]/path`` (``"GET /*"``);
- a peer's `callbacks`: ``scheme://host[:port][/path]`` (``"http://127.0.0.1:*"``), each
  part matched on its own against a URL taken apart (`CallbackPattern`); no port means the
  scheme's default one, no path means any path.

A path with a dot segment (``/a/../b``, also percent-encoded, ``..;`` or ``..\\``; see
`has_dot_segment`) or a ``;`` (``/admin;.json`` is ``/admin`` to some servers) matches
no pattern but ``*``: the upstream could resolve it to a path the pattern does not cover.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict

from ..wire.names import PEER_NAME, PEER_NAME_RULE
from .units import describe

ANY = "any"  # `callers: any`: every route open to everyone, on purpose
_DIGEST = re.compile(r"[0-9a-f]{64}")
_METHOD = re.compile(r"[A-Z*?\[\]!-]+")  # an HTTP method, or a pattern of them
_CALLBACK = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.*]+\]|[a-z0-9*?._-]+)(?::(?P<port>[0-9*?]+))?"
    r"(?P<path>/\S*)?",
    re.IGNORECASE,
)
_DEFAULT_PORT = {"http": 80, "https": 443}
_SEPARATOR = re.compile(r"[/\\]")  # between path segments, to some server
_DECODINGS = 4  # percent-decodings of a path looked through for a dot segment
DEFAULT_MAY_CALL = ("*",)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def has_dot_segment(path: str) -> bool:
    """True when a segment of `path` is ``.`` or ``..`` as some server could read it:
    written plainly or percent-encoded (also twice, also its ``/``), ended by ``/`` or
    ``\\`` (a separator on Windows servers), or with a ``;parameter`` (``..;`` is ``..``
    to Tomcat). A path still changing after `_DECODINGS` decodings counts as one."""
    for _ in range(_DECODINGS):
        segments = _SEPARATOR.split(path)
        if any(segment.partition(";")[0] in (".", "..") for segment in segments):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True


def _split(pattern: str) -> tuple[str, str]:
    """(method pattern, rest) of ``[METHOD ]rest``; ``*`` for no method."""
    method, space, rest = pattern.partition(" ")
    return (method, rest) if space else ("*", pattern)


def _matches(patterns: tuple[str, ...], method: str, subject: str) -> bool:
    for pattern in patterns:
        method_pattern, rest = _split(pattern)
        if rest != "*" and (has_dot_segment(subject) or ";" in subject):
            continue
        if fnmatch.fnmatchcase(method, method_pattern) and fnmatch.fnmatchcase(subject, rest):
            return True
    return False


def may_call(patterns: tuple[str, ...], method: str, peer: str, path: str) -> bool:
    """Whether `may_call` `patterns` allow `method` on ``peer`` + `path` (``/orders/1``)."""
    return _matches(patterns, method, peer + path)


def serves(patterns: tuple[str, ...], method: str, path: str) -> bool:
    """Whether `serves` `patterns` let `method` `path` (``/orders/1``) reach the upstream."""
    return _matches(patterns, method, path)


def _pattern_list(value: object, example: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of patterns, e.g. [{example!r}]")
    return tuple(value)


def call_patterns(value: object) -> tuple[str, ...]:
    """A `may_call` list: ``[METHOD ]peer/path`` or ``*`` each."""
    patterns = _pattern_list(value, "GET bravo/*")
    for pattern in patterns:
        method, rest = _split(pattern)
        if not _METHOD.fullmatch(method) or not (rest == "*" or "/" in rest):
            raise ValueError(
                f"{pattern!r} is not [METHOD ]peer/path, e.g. 'bravo/orders/*' or 'GET bravo/*'"
            )
    return patterns


def serve_patterns(value: object) -> tuple[str, ...]:
    """A `serves` list: ``[METHOD ]/path`` or ``*`` each."""
    patterns = _pattern_list(value, "GET /*")
    for pattern in patterns:
        method, rest = _split(pattern)
        if not _METHOD.fullmatch(method) or not (rest == "*" or rest.startswith("/")):
            raise ValueError(f"{pattern!r} is not [METHOD ]/path, e.g. 'GET /*'")
    return patterns


def token_digest(value: object) -> str:
    """The sha256 of a token, as 64 hex digits (taken in either case, kept lowercase)."""
    if isinstance(value, str) and _DIGEST.fullmatch(value.lower()):
        return value.lower()
    raise ValueError(
        f"{describe(value)} is not 64 hex digits (the sha256 of a token: mesh token prints it)"
    )


class Caller(BaseModel):
    """One caller of a peer's ingress: the sha256 of its token and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_sha256: str
    may_call: tuple[str, ...] = DEFAULT_MAY_CALL
    admin: bool = False


def callers(value: object) -> str | Mapping[str, Caller] | None:
    """None (no callers), ``"any"``, or the callers by name; `ValueError` on the first
    problem, naming the caller."""
    if value is None or value == ANY:
        return value
    if not isinstance(value, dict) or not value:
        raise ValueError("must be a mapping of caller names to settings, or any")
    found: dict[str, Caller] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not PEER_NAME.fullmatch(name):
            raise ValueError(f"{describe(name)} is not a caller name ({PEER_NAME_RULE})")
        found[name] = _caller(name, raw)
    digests = [caller.token_sha256 for caller in found.values()]
    if len(set(digests)) < len(digests):
        raise ValueError("two callers have the same token_sha256; give each its own token")
    return found


def _caller(name: str, raw: object) -> Caller:
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: must be a mapping with token_sha256")
    unknown = sorted(str(key) for key in raw if key not in Caller.model_fields)
    if unknown:
        raise ValueError(f"{name}.{unknown[0]}: unknown setting")
    if "token_sha256" not in raw:
        raise ValueError(f"{name}.token_sha256: missing (mesh token prints it)")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise ValueError(f"{name}.admin: {describe(admin)} is not true or false")
    try:
        digest = token_digest(raw["token_sha256"])
    except ValueError as error:
        raise ValueError(f"{name}.token_sha256: {error}") from None
    try:
        may = call_patterns(raw.get("may_call", list(DEFAULT_MAY_CALL)))
    except ValueError as error:
        raise ValueError(f"{name}.may_call: {error}") from None
    return Caller(token_sha256=digest, may_call=may, admin=admin)


def serves_map(value: object) -> Mapping[str, tuple[str, ...]] | None:
    """None (all served), or the `serves` patterns by remote peer."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of peer names to lists of patterns")
    found = {}
    for name, raw in value.items():
        try:
            found[str(name)] = serve_patterns(raw)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return found


@dataclass(frozen=True)
class CallbackPattern:
    """A `callbacks` pattern taken apart: each part is matched on its own."""

    scheme: str
    host: str
    port: str  # a pattern of digits
    path: str

    @classmethod
    def parse(cls, text: str) -> CallbackPattern:
        """``scheme://host[:port][/path]``; `ValueError` for anything else."""
        found = _CALLBACK.fullmatch(text.strip())
        if found is None or "@" in text or "\\" in text or "%" in text:
            raise ValueError(
                f"{text!r} is not a URL pattern scheme://host[:port][/path], "
                'e.g. "http://127.0.0.1:*"'
            )
        scheme, host = found["scheme"].lower(), found["host"].lower()
        if host.startswith("[") and "*" not in host:  # as a URL's host is compared: compressed
            try:
                host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
            except ValueError:
                raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
        port = found["port"] or str(_DEFAULT_PORT[scheme])
        return cls(scheme, host.strip("[]"), port, found["path"] or "/*")

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        """Whether a URL with these parts (host lowercase, path without query) fits."""
        return (
            scheme == self.scheme
            and fnmatch.fnmatchcase(host, self.host)
            and fnmatch.fnmatchcase(str(port), self.port)
            and (self.path in ("/*", "*") or not has_dot_segment(path))
            and fnmatch.fnmatchcase(path, self.path)
        )


def callback_patterns(value: object) -> tuple[str, ...]:
    """A `callbacks` list, each a valid `CallbackPattern`."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError('must be a list of URL patterns, e.g. ["http://127.0.0.1:*"]')
    for text in value:
        CallbackPattern.parse(text)
    return tuple(value)
