"""How long a caller waits for its answer before a 202 (`Prefer`, `Mesh-Timeout`)."""

from __future__ import annotations

import math

import pytest

from mesh.http.answering import wait_for_answer
from mesh.http.problems import HTTPProblem


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ([], math.inf),  # as through any proxy: until the request ends
        ([(b"Prefer", b"respond-async")], 0.0),
        ([(b"prefer", b"wait=5")], 5.0),
        ([(b"prefer", b'return=minimal, wait="7"')], 7.0),
        ([(b"prefer", b"respond-async, wait=5")], 0.0),
        ([(b"prefer", b"wait=5"), (b"mesh-timeout", b"2.5")], 2.5),  # the smaller
        ([(b"Mesh-Timeout", b"30")], 30.0),
        ([(b"prefer", b"handling=lenient")], math.inf),
    ],
)
def test_the_wait_a_caller_asks_for(headers: list[tuple[bytes, bytes]], seconds: float) -> None:
    assert wait_for_answer(headers) == seconds


@pytest.mark.parametrize(
    "headers",
    [
        [(b"mesh-timeout", b"soon")],
        [(b"mesh-timeout", b"-1")],
        [(b"mesh-timeout", b"nan")],
        [(b"prefer", b"wait=inf")],
    ],
)
def test_a_bad_wait_is_a_400(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(HTTPProblem) as refused:
        wait_for_answer(headers)
    assert refused.value.status == 400
