"""How `mesh up` logs: text lines (the default), or one JSON object per line
(``--log-format json``) with ``time``, ``level``, ``peer``, ``event`` and ``message``,
and the ids a line carries (``request``, ``remote``, ``file``, and an access line's
``method``, ``path``, ``status``, ``duration``, ``caller``).

``peer`` is the peer a line is about: its logger's (``mesh.alpha``), or the name its
message starts with (``alpha: ...``); None for the process's own lines. ``event`` is the
line's own (``extra={"event": ...}``), else the words of its message's template up to
the first value (``"%s: first heard from %s"`` is ``first-heard-from``): the same for
every line logged from one place, whatever the values.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
IDS = ("request", "remote", "file", "method", "path", "status", "duration", "caller")
_PEER_PREFIX = re.compile(r"([a-z0-9][a-z0-9-]{0,62}): ")
_WORDS = re.compile(r"[A-Za-z][A-Za-z-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with control characters in a message written as ``\\x0a``: a value
    from outside in it (a name, a header, a path) can neither start a line of its own
    nor steer a terminal. A traceback keeps its lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        escaped = logging.makeLogRecord(record.__dict__)
        escaped.message = _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", record.message)
        return super().formatMessage(escaped)


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "peer": getattr(record, "peer", None) or _peer_of(record, message),
            "event": getattr(record, "event", None) or _event_of(record),
            "message": message,
        }
        line.update({key: getattr(record, key) for key in IDS if hasattr(record, key)})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _peer_of(record: logging.LogRecord, message: str) -> str | None:
    """The peer of a record: its logger's (``mesh.alpha``), or its message's prefix."""
    parts = record.name.split(".")
    if len(parts) == 2 and parts[0] == "mesh":
        return parts[1]
    found = _PEER_PREFIX.match(message)
    return found.group(1) if found and found.group(1) != "mesh" else None


def _event_of(record: logging.LogRecord) -> str:
    """The words of a record's template before its first value, joined by dashes."""
    template = str(record.msg)
    if template.startswith("%s: "):
        template = template[4:]
    head = template.split("%", 1)[0]
    words = _WORDS.findall(head.split(":", 1)[0])
    return "-".join(word.lower() for word in words) or "log"


def configure(level: str, log_format: str) -> None:
    """Log to stderr at `level` in `log_format` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for chatty in ("watchfiles", "hypercorn.error", "httpx"):  # httpx: a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
