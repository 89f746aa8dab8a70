"""A small echo service to try a mesh with (`mesh up --echo HOST:PORT`): it answers each
request with JSON saying what arrived (method, path, query, headers, body), so a caller
can see exactly what crossed the pipe."""

from __future__ import annotations

import base64
import json
from typing import Any

from .asgi import Receive, Scope, Send, lifespan, linger, read_body, respond_json, too_large
from .headers import declared_length
from .problems import HTTPProblem

MAX_BODY = 64 << 20


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    declared = declared_length(dict(scope["headers"]).get(b"content-length"))
    try:
        if declared is not None and declared > MAX_BODY:
            raise too_large(MAX_BODY)  # at once, before any of it is read
        body = await read_body(receive, MAX_BODY)
    except HTTPProblem as problem:  # over the limit, stopped coming
        await respond_json(send, problem.status, problem.as_json(), "", problem.headers)
        if problem.status == 413:
            await linger(receive)
        return
    try:
        text: dict[str, Any] = {"text": body.decode()}
    except UnicodeDecodeError:
        text = {"base64": base64.b64encode(body).decode()}
    answer = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "headers": [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in scope["headers"]],
        "body": text,
    }
    data = json.dumps(answer, indent=2).encode() + b"\n"
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})
