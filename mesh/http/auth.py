"""Who is calling: the caller a request's credentials name, and what it may do
(design brief: "Who may call").

Credentials are a token, sent as ``Proxy-Authorization: Bearer TOKEN`` or ``Basic
base64(NAME:TOKEN)`` (what ``curl -x http://NAME:TOKEN@host:port`` and ``HTTP_PROXY``
send); on mesh's own routes also as ``Authorization: Bearer TOKEN``. A token is known by
its sha256, compared with every caller's in constant time; it is never kept, logged or
put in a problem. A peer without callers (or with ``callers: any``) lets everyone do
everything, as the anonymous `OPEN` caller.

Missing or unknown credentials are a ``407`` with ``Proxy-Authenticate`` on forwarded
calls and a ``401`` with ``WWW-Authenticate`` on mesh's routes; known but not allowed is
a ``403``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config.access import DEFAULT_MAY_CALL, Caller, may_call
from .callbacks import signing_key
from .problems import HTTPProblem

Headers = Mapping[bytes, bytes]  # lowercase names

PROXY_CHALLENGE = (b"proxy-authenticate", b'Basic realm="mesh"')
CHALLENGE = (b"www-authenticate", b'Bearer realm="mesh"')


@dataclass(frozen=True)
class Identity:
    """A caller as the ingress knows it: its name (None when the peer has no callers),
    whether it is an admin, and what it may call."""

    name: str | None
    admin: bool
    may_call: tuple[str, ...] = DEFAULT_MAY_CALL
    signing_key: bytes | None = field(default=None, repr=False)  # signs its callbacks

    def owns(self, caller: str | None) -> bool:
        """Whether it may read a request made by `caller`: its own, or any as an admin."""
        return self.admin or self.name is None or caller == self.name


OPEN = Identity(None, admin=True)


class Gate:
    """The callers of one peer: None or ``"any"`` open everything."""

    def __init__(self, callers: str | Mapping[str, Caller] | None) -> None:
        self._callers = dict(callers) if isinstance(callers, Mapping) else None

    def forwarded(self, headers: Headers, method: str, peer: str, path: str) -> Identity:
        """The caller of a forwarded call to `peer` `path` (no query), if it may make it;
        HTTPProblem 407 without known credentials, 403 when `may_call` refuses it."""
        given = headers.get(b"proxy-authorization")
        identity = self._identify(given, None)
        if identity is None:
            title = "unknown proxy credentials" if given else "proxy credentials needed"
            raise HTTPProblem(
                407,
                title,
                "send Proxy-Authorization: Bearer TOKEN, or use the proxy URL "
                "http://NAME:TOKEN@host:port",
                headers=(PROXY_CHALLENGE,),
            )
        if self._holds_token(headers.get(b"authorization")):
            detail = (
                "a mesh token in Authorization would go on to the upstream: send it as "
                "Proxy-Authorization (Authorization belongs to the upstream)"
            )
            raise HTTPProblem(400, "mesh token in Authorization", detail)
        if not may_call(identity.may_call, method, peer, path):
            detail = f"caller {identity.name} may not call {method} {peer}{path}"
            raise HTTPProblem(403, "not allowed", detail)
        return identity

    def own_route(self, headers: Headers) -> Identity:
        """The caller of one of mesh's own routes; HTTPProblem 401 without known
        credentials."""
        proxy, bearer = headers.get(b"proxy-authorization"), headers.get(b"authorization")
        identity = self._identify(proxy, bearer)
        if identity is None:
            raise HTTPProblem(
                401,
                "unknown credentials" if proxy or bearer else "credentials needed",
                "send Authorization: Bearer TOKEN",
                headers=(CHALLENGE,),
            )
        return identity

    def admin(self, identity: Identity, route: str) -> None:
        """HTTPProblem 403 unless `identity` (`own_route`'s) is an admin's."""
        if not identity.admin:
            raise HTTPProblem(403, "not allowed", f"{route} is for admin callers only")

    def _caller_of(self, token: bytes) -> str | None:
        """The caller whose token `token` is, compared with every one in constant time."""
        assert self._callers is not None
        digest = hashlib.sha256(token).hexdigest().encode()
        found = None
        for caller_name, caller in self._callers.items():  # every one: constant time
            if hmac.compare_digest(digest, caller.token_sha256.encode()):
                found = caller_name
        return found

    def _holds_token(self, authorization: bytes | None) -> bool:
        """Whether an `Authorization` header carries a mesh token in any shape (Bearer,
        Basic NAME:TOKEN, any other scheme): it would reach the upstream."""
        if self._callers is None or not authorization:
            return False
        return any(self._caller_of(shape) is not None for shape in _token_shapes(authorization))

    def _identify(self, proxy: bytes | None, bearer: bytes | None) -> Identity | None:
        """The caller named by `proxy` (Proxy-Authorization) or else `bearer`
        (Authorization, Bearer only); None when neither names a known caller."""
        if self._callers is None:
            return OPEN
        given = _credentials(proxy, basic=True) or _credentials(bearer, basic=False)
        if given is None:
            return None
        name, token = given
        found = self._caller_of(token)
        if found is None or name not in (None, "", found):
            return None
        caller = self._callers[found]
        return Identity(found, caller.admin, caller.may_call, signing_key(token.decode("latin-1")))


def _token_shapes(value: bytes) -> set[bytes]:
    """Every piece of `value` (an Authorization header) that could be a token: each run
    between spaces, commas, quotes and ``=``, and, base64-decoded (padding or not),
    each side of its ``:`` (Basic's user name and password)."""
    pieces = {piece for piece in re.split(rb'[\s,"=]+', value) if piece}
    shapes = set(pieces)
    for piece in pieces:
        decoded = _lenient_base64(piece)
        if decoded is not None:
            shapes.add(decoded)
            shapes.update(part for part in decoded.split(b":") if part)
    return shapes


def _lenient_base64(piece: bytes) -> bytes | None:
    """`piece` decoded as base64 (standard or URL alphabet, padding optional); None if
    it is not."""
    padded = piece + b"=" * (-len(piece) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


def _credentials(value: bytes | None, basic: bool) -> tuple[str | None, bytes] | None:
    """(name, token) from an authorization header: ``Bearer TOKEN``, or with `basic`
    also ``Basic base64(NAME:TOKEN)``; None for anything else."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(b" ")
    rest = rest.strip()
    if scheme.lower() == b"bearer" and rest:
        return None, rest
    if not (basic and scheme.lower() == b"basic"):
        return None
    try:
        decoded = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        return None
    name, colon, token = decoded.partition(b":")
    if not colon or not token:
        return None
    return name.decode("latin-1"), token
