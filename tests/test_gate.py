"""Who calls (`mesh.http.auth.Gate`): a mesh token never goes on to the upstream."""

from __future__ import annotations

import base64
import hashlib

import pytest

from mesh.config.access import Caller
from mesh.http.auth import Gate
from mesh.http.problems import HTTPProblem

TOKEN = "t0ken-of-billing"
GATE = Gate({"billing": Caller(token_sha256=hashlib.sha256(TOKEN.encode()).hexdigest())})
PROXY = (b"proxy-authorization", f"Bearer {TOKEN}".encode())


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN}".encode(),
        basic("billing", TOKEN),  # curl -u billing:TOKEN beside -x http://billing:TOKEN@...
        basic("anyone", TOKEN),
        f"Token {TOKEN}".encode(),
        TOKEN.encode(),
        f"Bearer\t{TOKEN}".encode(),
        f'Bearer "{TOKEN}"'.encode(),
        f"Bearer {TOKEN},".encode(),
        basic("billing", TOKEN).rstrip(b"="),  # padding stripped
        b"Basic " + base64.b64encode(f"{TOKEN}:".encode()),  # curl -u TOKEN:
        b"Basic " + base64.b64encode(TOKEN.encode()),
        f'Token token="{TOKEN}"'.encode(),
        f'Digest username="x", response="{TOKEN}"'.encode(),
    ],
)
def test_a_mesh_token_in_authorization_is_refused_in_any_shape(authorization: bytes) -> None:
    headers = dict([PROXY, (b"authorization", authorization)])
    with pytest.raises(HTTPProblem) as refused:
        GATE.forwarded(headers, "GET", "bravo", "/x")
    assert refused.value.status == 400


def test_the_upstreams_own_authorization_passes() -> None:
    headers = dict([PROXY, (b"authorization", basic("billing", "the upstream's password"))])
    assert GATE.forwarded(headers, "GET", "bravo", "/x").name == "billing"
