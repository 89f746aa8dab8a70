"""Durations and sizes as people write them in a roster (``5s``, ``64KiB``), and back.

Parsers raise `ValueError` with a sentence a user can act on; formatters give the short form
used in messages and status. A value that formats exactly (``90.0`` -> ``1.5m``) parses back.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["describe", "format_duration", "format_size", "parse_duration", "parse_size"]

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_WITH_UNIT = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")

_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_DURATION_HINT = "use a number with ms, s, m or h, e.g. 5s"

_BINARY = {"TiB": 1024**4, "GiB": 1024**3, "MiB": 1024**2, "KiB": 1024}
_DECIMAL = {"TB": 1000**4, "GB": 1000**3, "MB": 1000**2, "KB": 1000}
_BYTES = {"B": 1, **_BINARY, **_DECIMAL}
_UNITS_ANY_CASE = {unit.lower(): unit for unit in _BYTES}
_SIZE_HINT = (
    "use a whole number of bytes or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB, "
    "e.g. 64KiB"
)


def describe(value: object) -> str:
    """How a user's value is shown in a message: text quoted, YAML words for bool and null."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "an empty value"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return str(value)


def parse_duration(value: object) -> float:
    """Seconds in `value`: ``"5ms"``, ``"5s"``, ``"1.5m"``, ``"2h"``, or a bare number of seconds.

    Spaces between number and unit are allowed. Bools, negatives, nan/inf, unknown units,
    empty text and anything that is not text or a number are a `ValueError`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{describe(value)} is not a duration ({_DURATION_HINT})")
    if isinstance(value, str):
        match = _WITH_UNIT.fullmatch(value.strip())
        if match is None or match[2] not in ("", *_SECONDS):
            raise ValueError(f"{describe(value)} is not a duration ({_DURATION_HINT})")
        amount = Decimal(match[1]) * _SECONDS[match[2] or "s"]
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{describe(value)} is not a duration ({_DURATION_HINT})")
        amount = Decimal(value)
    if amount < 0:
        raise ValueError(f"{describe(value)} is negative (a duration must be 0 or more)")
    seconds = float(amount) or 0.0  # no -0.0
    if not math.isfinite(seconds):
        raise ValueError(f"{describe(value)} is too long to be a duration")
    return seconds


def parse_size(value: object) -> int:
    """Bytes in `value`: ``"64KiB"``, ``"1.5MiB"``, ``"10MB"``, ``"100B"``, or a bare int.

    Units are case-sensitive: KiB MiB GiB TiB are powers of 1024, KB MB GB TB of 1000.
    A decimal needs a unit and must come to a whole number of bytes (``"1.1KiB"`` does not).
    Bools, floats, negatives and unknown units are a `ValueError`.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{describe(value)} is not a size ({_SIZE_HINT})")
    if isinstance(value, int):
        amount = Decimal(value)
    else:
        match = _WITH_UNIT.fullmatch(value.strip())
        if match is not None and match[2] not in _BYTES and match[2].lower() in _UNITS_ANY_CASE:
            right = _UNITS_ANY_CASE[match[2].lower()]
            raise ValueError(f"{describe(value)}: units are case-sensitive, write {right}")
        if match is None or match[2] not in ("", *_BYTES) or (not match[2] and "." in match[1]):
            raise ValueError(f"{describe(value)} is not a size ({_SIZE_HINT})")
        amount = Decimal(match[1]) * _BYTES[match[2] or "B"]
    if amount < 0:
        raise ValueError(f"{describe(value)} is negative (a size must be 0 or more)")
    if amount != amount.to_integral_value():
        raise ValueError(f"{describe(value)} is not a whole number of bytes ({amount} bytes)")
    return int(amount)


def _short(q: float) -> bool:
    """True when `q` needs at most two decimals."""
    return abs(q * 100 - round(q * 100)) < 1e-6


def _num(q: float) -> str:
    """`q` with at most two decimals and no trailing zeros."""
    return f"{q:.2f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """Short form of `seconds`: ``"250ms"``, ``"5s"``, ``"1.5m"``, ``"2h"``.

    The largest unit that shows the value exactly with at most two decimals is used;
    otherwise the value is rounded to two decimals in the largest unit it reaches.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    units = (("h", 3600.0), ("m", 60.0), ("s", 1.0))
    for unit, size in units:
        if seconds >= size and _short(seconds / size):
            return f"{_num(seconds / size)}{unit}"
    for unit, size in units:
        if seconds >= size:
            return f"{_num(seconds / size)}{unit}"
    return f"{_num(seconds * 1000)}ms"


def format_size(n: int) -> str:
    """Short form of `n` bytes: ``"1000B"``, ``"64KiB"``, ``"1.5MiB"``, ``"10MB"``.

    Below 1KiB in bytes; else the largest binary, then decimal, unit that shows it exactly
    with at most two decimals; else in bytes below 1MiB, rounded to two decimals above.
    """
    if abs(n) < 1024:
        return f"{n}B"
    for units in (_BINARY, _DECIMAL):
        for unit, size in units.items():
            if abs(n) >= size and _short(n / size):
                return f"{_num(n / size)}{unit}"
    if abs(n) < _BINARY["MiB"]:
        return f"{n}B"
    unit, size = next((u, s) for u, s in _BINARY.items() if abs(n) >= s)
    return f"{_num(n / size)}{unit}"
