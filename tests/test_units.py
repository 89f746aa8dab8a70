import math

import pytest

from mesh.config.units import describe, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5ms", 0.005),
        ("5s", 5.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("5 s", 5.0),
        (" 250 ms ", 0.25),
        (".5s", 0.5),
        ("3", 3.0),
        ("0", 0.0),
        ("-0s", 0.0),
        (3, 3.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    result = parse_duration(text)
    assert result == seconds
    assert type(result) is float
    assert not math.copysign(1, result) < 0


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("5 parsecs", "is not a duration"),
        ("", "is not a duration"),
        ("   ", "is not a duration"),
        ("s", "is not a duration"),
        ("5S", "is not a duration"),
        ("5 s s", "is not a duration"),
        ("nan", "is not a duration"),
        ("inf", "is not a duration"),
        (float("nan"), "is not a duration"),
        (float("inf"), "is not a duration"),
        (True, "true is not a duration"),
        (False, "false is not a duration"),
        (None, "an empty value is not a duration"),
        ([5], "a list is not a duration"),
        (-1, "-1 is negative"),
        (-0.5, "is negative"),
        ("-5s", '"-5s" is negative'),
        (10**400, "too long"),
        ("9" * 400 + "h", "too long"),
    ],
)
def test_parse_duration_rejects(value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(value)


def test_duration_message_tells_the_user_what_to_write() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5 parsecs")
    assert str(info.value) == (
        '"5 parsecs" is not a duration (use a number with ms, s, m or h, e.g. 5s)'
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100B", 100),
        ("64KiB", 64 * 1024),
        ("64 KiB", 64 * 1024),
        ("1.5MiB", 3 * 2**19),
        ("2GiB", 2 * 2**30),
        ("1TiB", 2**40),
        ("0.5KiB", 512),
        ("10KB", 10_000),
        ("2MB", 2_000_000),
        ("1.5GB", 1_500_000_000),
        ("1TB", 10**12),
        ("1000", 1000),
        (1000, 1000),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    result = parse_size(text)
    assert result == size
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1.1KiB", r"not a whole number of bytes \(1126.4 bytes\)"),
        ("0.5B", "not a whole number of bytes"),
        ("1.5", "is not a size"),
        (1.0, "1.0 is not a size"),
        (1.5, "is not a size"),
        (True, "true is not a size"),
        (None, "is not a size"),
        (-1, "-1 is negative"),
        ("-1KiB", "is negative"),
        ("64kib", "units are case-sensitive, write KiB"),
        ("10mb", "units are case-sensitive, write MB"),
        ("64 parsecs", "is not a size"),
        ("", "is not a size"),
        ("KiB", "is not a size"),
        ("1.5.5KiB", "is not a size"),
    ],
)
def test_parse_size_rejects(value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_size(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (0.005, "5ms"),
        (0.0001, "0.1ms"),
        (5.0, "5s"),
        (1.5, "1.5s"),
        (61.0, "61s"),
        (90.0, "1.5m"),
        (3600.0, "1h"),
        (5400.0, "1.5h"),
        (0.0, "0s"),
        (1.234, "1.23s"),
        (-5.0, "-5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1000, "1000B"),
        (1023, "1023B"),
        (1025, "1025B"),
        (64 * 1024, "64KiB"),
        (1536, "1.5KiB"),
        (256 * 2**20, "256MiB"),
        (2**40, "1TiB"),
        (1_000_000, "1MB"),
        (123_456_789, "117.74MiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("text", ["250ms", "5s", "1.5m", "2h", "0s", "0.5ms"])
def test_duration_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["100B", "64KiB", "1.5MiB", "3GiB", "10MB", "1.25GB"])
def test_size_round_trips(text: str) -> None:
    assert format_size(parse_size(text)) == text


@pytest.mark.parametrize(
    ("value", "shown"),
    [("x", '"x"'), (True, "true"), (None, "an empty value"), ({}, "a mapping"), (3, "3")],
)
def test_describe(value: object, shown: str) -> None:
    assert describe(value) == shown
