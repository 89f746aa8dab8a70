"""Errors as HTTP answers, in application/problem+json (RFC 9457): those the ingress
gives its callers, those the far side sends back instead of an upstream's answer, and the
one table that maps lower layers' errors to them (as httpx maps httpcore's)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import disk_full
from ..wire.messages import Response

PROBLEM_JSON = b"application/problem+json"

# What a lower layer's failure means to a caller, by the class of its error (the first
# that matches, in this order): the state or a body file could not take what was asked.
LOWER_ERRORS: Mapping[type[Exception], int] = {
    sqlite3.Error: 503,  # the database: full, locked, read-only, gone
    OSError: 503,  # the disk of the state or of a body file: full, read-only, gone
}


STATE_FULL = "no space left where the state is"
PIPE_FULL = "no space left where the pipe is"


class HTTPProblem(Exception):
    """An answer other than the upstream's, raised to the ingress, which sends it."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers  # sent with it, e.g. a challenge (WWW-Authenticate)
        self.body_read = False  # the request body was read to its end

    def as_json(self) -> dict[str, Any]:
        return problem_json(self.status, self.title, self.detail)


def problem_json(status: int, title: str, detail: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return body


@contextmanager
def answered_as(title: str) -> Iterator[None]:
    """Raise an error of a lower layer inside the block as the `HTTPProblem` that
    `LOWER_ERRORS` maps its class to, titled `title`, its message as the detail (a full
    disk: ``disk full``, where the state is); any other error passes as it is."""
    try:
        yield
    except Exception as exc:
        status = next((s for kind, s in LOWER_ERRORS.items() if isinstance(exc, kind)), None)
        if status is None:
            raise
        if disk_full(exc):
            raise HTTPProblem(status, "disk full", STATE_FULL) from None
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HTTPProblem(status, title, detail) from None  # no path, an OSError's strerror


PROBLEM_BY = b"mesh-problem"  # on an answer made by mesh, not the upstream: by which peer


def problem_response(request_id: str, by: str, status: int, title: str, **extra: str) -> Response:
    """Peer `by`'s answer to `request_id` when it is not the upstream's: a problem, marked
    ``Mesh-Problem: {by}`` (an upstream's own ``Mesh-*`` headers never cross), with
    `extra` as ``Mesh-*`` headers (``outcome="unknown"``)."""
    body = json.dumps(problem_json(status, title)).encode()
    headers = [(b"content-type", PROBLEM_JSON), (PROBLEM_BY, by.encode())]
    headers += [(f"mesh-{k}".encode(), v.encode()) for k, v in extra.items()]
    return Response(request_id, status, tuple(headers), body)


def is_problem(response: Response) -> bool:
    """Whether `response` is mesh's own problem rather than an upstream's answer."""
    return any(name == PROBLEM_BY for name, _ in response.headers)


def over_limit(whose: str, limit: int) -> str:
    """How a body past a peer's `body_limit` is described in a problem's title."""
    return f"over {whose} body_limit of {limit} bytes"
