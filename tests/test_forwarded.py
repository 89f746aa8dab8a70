"""How the upstream learns the way its caller came, and its redirects are turned back
(`mesh.http.forwarded`)."""

from __future__ import annotations

import pytest

from mesh.http.forwarded import View, caller_location, forwarded


def test_the_callers_own_claims_are_replaced_and_its_lists_extended() -> None:
    crossing = (
        (b"x-forwarded-host", b"evil.example"),
        (b"accept", b"*/*"),
        (b"x-forwarded-prefix", b"/admin"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"forwarded", b"for=10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
    )
    view = View("http", "127.0.0.1:8081", "/bravo")
    headers = forwarded(crossing, view, "127.0.0.1")
    assert headers == (
        (b"accept", b"*/*"),
        (b"x-forwarded-host", b"127.0.0.1:8081"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-prefix", b"/bravo"),
        (b"x-forwarded-for", b"10.0.0.1, 127.0.0.1"),
        (b"forwarded", b'for=10.0.0.1, for=127.0.0.1;host="127.0.0.1:8081";proto=http'),
    )
    assert View.of(headers) == view


def test_an_ipv6_caller_is_quoted_and_no_prefix_outside_the_path_form() -> None:
    headers = dict(forwarded((), View("https", "bravo"), "::1"))
    assert headers[b"forwarded"] == b'for="[::1]";host="bravo";proto=https'
    assert b"x-forwarded-prefix" not in headers
    assert View.of(()) is None


@pytest.mark.parametrize(
    ("location", "seen"),
    [
        (b"http://127.0.0.1:9000/simple/x/", b"http://alpha:8081/bravo/simple/x/"),
        (b"HTTP://127.0.0.1:9000", b"http://alpha:8081/bravo"),
        (b"http://127.0.0.1:9000?a=1", b"http://alpha:8081/bravo?a=1"),
        (b"http://127.0.0.1:90001/x", b"http://127.0.0.1:90001/x"),  # another port
        (b"https://example.org/x", b"https://example.org/x"),  # elsewhere
        (b"/simple/x/", b"/bravo/simple/x/"),  # from the upstream's root
        (b"/bravo/simple/", b"/bravo/simple/"),  # the upstream honoured the prefix
        (b"/bravo", b"/bravo"),
        (b"//elsewhere.example/x", b"//elsewhere.example/x"),  # another host
        (b"//127.0.0.1:9000/x", b"//alpha:8081/bravo/x"),  # the upstream, scheme-relative
        (b"simple/x/", b"simple/x/"),  # relative: already the caller's
    ],
)
def test_a_location_naming_the_upstream_is_the_callers_view(location: bytes, seen: bytes) -> None:
    view = View("http", "alpha:8081", "/bravo")
    assert caller_location(location, "http://127.0.0.1:9000", view) == seen


def test_an_upstream_under_a_path_keeps_its_own_prefix_out() -> None:
    view = View("http", "bravo")
    got = caller_location(b"http://up:9000/api/v1/x", "http://up:9000/api", view)
    assert got == b"http://bravo/v1/x"
    assert (
        caller_location(b"http://up:9000/apix", "http://up:9000/api", view)
        == b"http://up:9000/apix"
    )


def test_outside_the_path_form_a_rooted_location_stays() -> None:
    assert caller_location(b"/dir/", "http://up:9000", View("http", "bravo")) == b"/dir/"


def test_a_callers_other_claims_and_malformed_lists_are_dropped() -> None:
    crossing = (
        (b"x_forwarded_host", b"evil.example"),  # what CGI-style servers read as dashed
        (b"x-forwarded-port", b"443"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"true-client-ip", b"6.6.6.6"),
        (b"x-forwarded", b"for=6.6.6.6"),
        (b"front-end-https", b"on"),
        (b"forwarded", b'for="x'),  # a stray quote would swallow mesh's element
        (b"x-forwarded-for", b"1.2.3.4, evil;x=y"),
        (b"accept", b"*/*"),
    )
    headers = forwarded(crossing, View("http", "bravo"), "127.0.0.1")
    assert headers == (
        (b"accept", b"*/*"),
        (b"x-forwarded-host", b"bravo"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-for", b"127.0.0.1"),
        (b"forwarded", b'for=127.0.0.1;host="bravo";proto=http'),
    )
    good = ((b"forwarded", b'for=10.0.0.1;proto=https, for="[::1]:80"'),)
    assert dict(forwarded(good, View("http", "b"), None))[b"forwarded"] == (
        b'for=10.0.0.1;proto=https, for="[::1]:80", for=unknown;host="b";proto=http'
    )
