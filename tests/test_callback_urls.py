"""Callback and events URLs are checked structurally (`checked_url`), and callbacks are
signed as webhooks are (`signing_key`, `signature`, `verify`)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.config.access import CallbackPattern
from mesh.http.callbacks import (
    SIGNATURE_HEADER,
    Signed,
    checked_url,
    signature,
    signature_of_body,
    signing_key,
    verify,
)
from mesh.http.problems import HTTPProblem
from mesh.pipe.bodies import Bodies

LOOPBACK = ("http://127.0.0.1:*",)
HEADER = "Mesh-Callback"


def refused(raw: str, patterns: tuple[str, ...] = LOOPBACK) -> HTTPProblem:
    with pytest.raises(HTTPProblem) as caught:
        checked_url(raw, patterns, HEADER)
    problem = caught.value
    assert problem.status == 403
    assert problem.title == "Mesh-Callback URL not allowed"
    assert problem.detail
    return problem


@pytest.mark.parametrize(
    ("raw", "patterns", "url"),
    [
        ("http://127.0.0.1:9/hook", LOOPBACK, "http://127.0.0.1:9/hook"),
        ("http://127.0.0.1:9", LOOPBACK, "http://127.0.0.1:9/"),
        ("http://127.0.0.1:9?a=1", LOOPBACK, "http://127.0.0.1:9/?a=1"),
        ("http://127.0.0.1:9/h?a=1&b=%2F", LOOPBACK, "http://127.0.0.1:9/h?a=1&b=%2F"),
        ("http://127.0.0.1:9/h?", LOOPBACK, "http://127.0.0.1:9/h"),
        ("HTTP://127.0.0.1:9/Case", LOOPBACK, "http://127.0.0.1:9/Case"),
        ("http://127.0.0.1/x", ("http://127.0.0.1",), "http://127.0.0.1:80/x"),
        (
            "https://Hooks.Example.com/x",
            ("https://hooks.example.com",),
            "https://hooks.example.com:443/x",
        ),
        ("http://[::1]:8080/x", ("http://[::1]:*",), "http://[::1]:8080/x"),
        ("http://[0:0::1]:8080/x", ("http://[::1]:*",), "http://[::1]:8080/x"),
        ("http://[::1]/x", ("http://[::1]",), "http://[::1]:80/x"),
        ("http://localhost:9/a/b", ("http://localhost:9/a/*",), "http://localhost:9/a/b"),
        ("http://127.0.0.1:9/x@y", LOOPBACK, "http://127.0.0.1:9/x@y"),
    ],
)
def test_allowed_urls_come_back_canonical(raw: str, patterns: tuple[str, ...], url: str) -> None:
    assert checked_url(raw, patterns, HEADER) == url


@pytest.mark.parametrize(
    "raw",
    [
        "http://127.0.0.1:1@127.0.0.2:9/x",  # userinfo that looks like host:port
        "http://user@127.0.0.1:9/",
        "http://@127.0.0.1:9/",
        "http://127.0.0.1:9\\@127.0.0.2/",  # a backslash some parsers take for a slash
        "http://127.0.0.1:9\\x",
        "http://127.0.0.1%40127.0.0.2:9/",  # percent-encoding in the host
        "http://127.0.0.%31:9/",
        " http://127.0.0.1:9/",
        "http://127.0.0.1:9/ ",
        "http://127.0.0.1:9/a b",
        "http://127.0.0.1 :9/",
        "http://127.0.0.1:9/\tx",
        "http://127.0.0.1:9/\nx",
        "http://127.0.0.1:9/\rx",
        "http://127.0.0.1:9/\x00",
        "http://127.0.0.1:9/\x7f",
        "http://127.0.0.1:9/\u00e9",  # non-ASCII
        "http://127.0.0.1:9/\u2028",
        "http://127.0.0.1:9/#frag",
        "http://127.0.0.1:9#",
        "ftp://127.0.0.1:9/",
        "file:///etc/passwd",
        "127.0.0.1:9/x",
        "//127.0.0.1:9/x",
        "http:///x",
        "http://:9/x",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:65536/",
        "http://127.0.0.1:99999999/",
        "http://127.0.0.1:/",
        "http://127.0.0.1:+9/",
        "http://127.0.0.1:09/",
        "http://127.0.0.1:9:9/",
        "http://127.1:9/",  # numbers a resolver reads as addresses
        "http://0x7f.0.0.1:9/",
        "http://2130706433:9/",
        "http://127.0.0.01:9/",
        "http://127.0.0.1.:9/",
        "http://[127.0.0.1]:9/",
        "http://[::1:9/",
        "http://[::1]x:9/",
        "http://127.0.0.1:9/a{b}",
        "http://127.0.0.1:9/a%zz",
        "http://127.0.0.1:9/?q=%2",
    ],
)
def test_bypasses_and_bad_urls_are_refused(raw: str) -> None:
    refused(raw)


def test_a_host_or_port_or_path_not_matching_is_refused() -> None:
    refused("http://127.0.0.2:9/")
    refused("http://localhost:9/")  # a name is not the address it resolves to
    refused("https://127.0.0.1:9/")
    refused("http://127.0.0.1:10/", ("http://127.0.0.1:9",))
    refused("http://127.0.0.1/", ("http://127.0.0.1:9",))  # no port: 80
    refused("http://127.0.0.1:9/b", ("http://127.0.0.1:9/a/*",))
    refused("http://127.0.0.1:9/a", ("http://127.0.0.1:9/a/*",))
    refused("http://127.0.0.1:9/x", ())  # no patterns: nothing allowed


@pytest.mark.parametrize(
    "raw",
    [
        "http://127.0.0.1:9/a/../b",
        "http://127.0.0.1:9/a/%2e%2e/b",
        "http://127.0.0.1:9/a/%252e%252e/b",
        "http://127.0.0.1:9/a/..;x/b",
        "http://127.0.0.1:9/a/.",
    ],
)
def test_a_dot_segment_escapes_no_path_pattern(raw: str) -> None:
    refused(raw, ("http://127.0.0.1:9/a/*",))


def test_the_detail_never_repeats_the_path_or_query() -> None:
    problem = refused("http://127.0.0.2:9/secret-path?token=s3cret")
    assert "secret" not in problem.detail and "s3cret" not in problem.detail
    problem = refused("http://alice:s3cret@127.0.0.1:9/")
    assert "s3cret" not in problem.detail and "alice" not in problem.detail
    with pytest.raises(HTTPProblem) as caught:
        checked_url("http://x.example/", LOOPBACK, "Mesh-Events")
    assert caught.value.title == "Mesh-Events URL not allowed"


# Any URL taken in goes, as httpx reads it (the one that connects), to the host and port
# that matched; the URL returned reads the same.
_CHARS = st.sampled_from([*"abc019.-:/@?#%[]\\ \t\n\u00e9", "%2e", "%41", "127.0.0.1"])
_PIECES = st.sampled_from(["/", "a", "%41", "%2e", "?", "=", "@", ":", "..", ".", "#", "\\"])
_TAILS = st.lists(_CHARS, max_size=12).map("".join) | st.lists(_PIECES, max_size=8).map(
    lambda pieces: "/" + "".join(pieces)
)
PATTERNS = ("http://127.0.0.1:*", "http://[::1]:9/a*", "https://localhost")
_HOSTS = st.sampled_from(["127.0.0.1", "127.0.0.2", "[::1]", "LocalHost", "127.1", ""])
_HOSTS = st.just("127.0.0.1") | st.just("[::1]") | _HOSTS  # more often one that matches
_PORTS = st.sampled_from(["", ":9", ":80", ":09", ":0", ":65536", ":9@127.0.0.2"])
_PORTS = st.just(":9") | _PORTS


@given(
    scheme=st.just("http://") | st.sampled_from(["https://", "HTTP://", "http:/", ""]),
    host=_HOSTS,
    port=_PORTS,
    tail=_TAILS,
)
def test_what_is_taken_connects_where_it_was_checked(
    scheme: str, host: str, port: str, tail: str
) -> None:
    raw = scheme + host + port + tail
    try:
        url = checked_url(raw, PATTERNS, HEADER)
    except HTTPProblem as problem:
        assert problem.status == 403
        return
    reads = {_where(httpx.URL(raw)), _where(httpx.URL(url))}
    assert len(reads) == 1  # httpx reads the caller's text and ours alike
    scheme, host, port_number = reads.pop()
    path = httpx.URL(url).raw_path.decode().partition("?")[0]
    patterns = [CallbackPattern.parse(p) for p in PATTERNS]
    assert any(p.matches(scheme, host, port_number, path) for p in patterns)
    assert "@" not in httpx.URL(url).netloc.decode()
    assert checked_url(url, PATTERNS, HEADER) == url  # canonical: a fixed point


def _where(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}[url.scheme]


# Signing


TOKEN = "tok_" + "a" * 40
BODY = b'{"status": 200}'
NOW = 1_700_000_000


ID = "ab" * 16
SIGNED = Signed(NOW, ID, "200")


def at(now: int, status: str = "200", request_id: str = ID) -> Signed:
    """What a receiver checks a signature against, at its `now`."""
    return Signed(now, request_id, status)


def test_a_signature_verifies_with_the_token() -> None:
    header = signature(signing_key(TOKEN), BODY, SIGNED)
    assert header.startswith(f"t={NOW},v1=")
    assert verify(TOKEN, header, BODY, SIGNED)
    assert verify(TOKEN, header, BODY, at(NOW + 300))
    assert verify(TOKEN, header, BODY, at(NOW - 300))
    assert SIGNATURE_HEADER == b"mesh-signature"


def test_the_key_and_signature_are_as_documented() -> None:
    key = hmac.new(TOKEN.encode(), b"mesh-callback-signature", hashlib.sha256).digest()
    assert signing_key(TOKEN) == key
    mac = hmac.new(key, f"{NOW}.{ID}.200.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature(key, BODY, SIGNED) == f"t={NOW},v1={mac}"
    event = hmac.new(key, f"{NOW}.{ID}..".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature(key, BODY, Signed(NOW, ID)) == f"t={NOW},v1={event}"
    assert TOKEN.encode() not in key


def test_a_file_body_signs_as_the_same_bytes(tmp_path: Path) -> None:
    body = bytes(range(256)) * 9000  # over one chunk
    bodies = Bodies(tmp_path)
    bodies.path("body").write_bytes(body)
    key = signing_key(TOKEN)
    with bodies.ranges("body") as ranges:
        header = signature_of_body(key, ranges, len(body), SIGNED)
    assert header == signature(key, body, SIGNED)
    assert verify(TOKEN, header, body, SIGNED)


def test_a_signature_fails_with_anything_changed() -> None:
    header = signature(signing_key(TOKEN), BODY, SIGNED)
    assert not verify("another token", header, BODY, SIGNED)
    assert not verify(TOKEN, header, BODY + b" ", SIGNED)
    assert not verify(TOKEN, header, b"", SIGNED)
    assert not verify(TOKEN, header, BODY, at(NOW, status="500"))  # another status
    assert not verify(TOKEN, header, BODY, at(NOW, request_id="cd" * 16))  # another request
    assert not verify(TOKEN, header.replace(f"t={NOW}", f"t={NOW + 1}"), BODY, SIGNED)
    assert not verify(TOKEN, header.replace(f"t={NOW}", f"t=0{NOW}"), BODY, SIGNED)
    assert not verify(TOKEN, header, BODY, at(NOW + 301))  # too old
    assert not verify(TOKEN, header, BODY, at(NOW - 301))  # from the future
    assert not verify(TOKEN, header, BODY, at(NOW + 10), tolerance=5)


@pytest.mark.parametrize(
    "header", ["", "t=1", "v1=00", "t=x,v1=" + "0" * 64, "t=1,v1=" + "0" * 63, "garbage"]
)
def test_a_malformed_signature_is_false_not_an_error(header: str) -> None:
    assert not verify(TOKEN, header, BODY, at(1))


def test_any_of_several_v1_may_match() -> None:
    good = signature(signing_key(TOKEN), BODY, SIGNED)
    other = signature(signing_key("old token"), BODY, SIGNED).partition(",")[2]
    assert verify(TOKEN, f"{good},{other}", BODY, SIGNED)
    assert verify(TOKEN, f"t={NOW},{other},{good.partition(',')[2]}", BODY, SIGNED)
    assert not verify(TOKEN, f"t={NOW},{other}", BODY, SIGNED)


_PATHS = st.lists(st.sampled_from(["/", "a", "Z", "%2F", "-", "~", "@", ":", ";", "="])).map(
    lambda pieces: "/" + "".join(pieces)
)


@given(
    address=st.ip_addresses(),
    port=st.integers(1, 65535),
    path=_PATHS,
    query=st.sampled_from(["", "?a=1", "?x=/y?z"]),
)
def test_any_address_and_port_reach_httpx_as_checked(
    address: object, port: int, path: str, query: str
) -> None:
    host = f"[{address}]" if ":" in str(address) else str(address)
    url = checked_url(f"https://{host}:{port}{path}{query}", ("https://*:*",), HEADER)
    parsed = httpx.URL(url)
    assert (parsed.host, parsed.port or 443) == (str(address), port)
    assert url == f"https://{host}:{port}{path}{query}"
