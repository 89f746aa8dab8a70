"""Who may call and what may be called: the roster's `callers`, `serves`, `tls` and
`callbacks` as a user writes them (the problem lines they see), and the matching rules of
`mesh.config.access`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from mesh.config.access import (
    ANY,
    CallbackPattern,
    Caller,
    has_dot_segment,
    is_loopback,
    may_call,
    serves,
)
from mesh.config.roster import PeerSettings, load_roster, open_to_strangers
from mesh.wire.names import PEER_NAME_RULE
from tests.test_roster import BASE, pair, parse, problems

DIGEST = hashlib.sha256(b"billing's token").hexdigest()
OTHER = hashlib.sha256(b"ops's token").hexdigest()
NOT_A_DIGEST = "is not 64 hex digits (the sha256 of a token: mesh token prints it)"
CALLBACK_HINT = 'is not a URL pattern scheme://host[:port][/path], e.g. "http://127.0.0.1:*"'
NEEDS_CALLERS = (
    "alpha.callers: missing: alpha listens on {listen}, which other machines can reach, so it "
    "needs callers (mesh token ROSTER alpha NAME prints the lines to add), or write callers: "
    "any to leave it open to everyone on purpose"
)


def alpha(**settings: Any) -> PeerSettings:
    """alpha of a valid pair with `settings`."""
    return parse(pair(settings)).peer("alpha")


def callers_problems(callers: object) -> list[str]:
    return problems(pair({"callers": callers}))


# --- callers: valid ---------------------------------------------------------------------------


def test_callers_absent_is_none_and_any_is_any() -> None:
    assert alpha().callers is None
    assert alpha(callers=None).callers is None
    assert alpha(callers="any").callers == ANY == "any"


def test_callers_mapping_with_defaults() -> None:
    found = alpha(callers={"billing": {"token_sha256": DIGEST}}).callers
    assert found == {"billing": Caller(token_sha256=DIGEST, may_call=("*",), admin=False)}


def test_callers_with_every_setting() -> None:
    found = alpha(
        callers={
            "billing": {
                "token_sha256": DIGEST.upper(),  # kept lowercase
                "may_call": ["bravo/orders/*", "GET bravo/*", "[GP]* bravo/x", "*"],
            },
            "ops": {"token_sha256": OTHER, "admin": True, "may_call": []},
        }
    ).callers
    assert isinstance(found, dict)
    assert list(found) == ["billing", "ops"]
    assert found["billing"].token_sha256 == DIGEST
    assert found["billing"].may_call == ("bravo/orders/*", "GET bravo/*", "[GP]* bravo/x", "*")
    assert found["billing"].admin is False
    assert found["ops"] == Caller(token_sha256=OTHER, may_call=(), admin=True)  # admin only


def test_callers_from_defaults() -> None:
    roster = parse({"defaults": {"callers": {"ops": {"token_sha256": OTHER}}}, **pair()})
    assert roster.peer("alpha").callers == roster.peer("bravo").callers
    assert set(roster.peer("bravo").callers or ()) == {"ops"}


@pytest.mark.parametrize("name", ["a", "0", "billing-2", "a" * 63])
def test_caller_names(name: str) -> None:
    assert set(alpha(callers={name: {"token_sha256": DIGEST}}).callers or ()) == {name}


def test_the_same_token_for_callers_of_two_peers() -> None:
    callers = {"billing": {"token_sha256": DIGEST}}
    roster = parse(pair({"callers": callers}, {"callers": callers}))
    assert roster.peer("alpha").callers == roster.peer("bravo").callers


def test_settings_with_callers_serves_and_tls_dump_and_load_back() -> None:
    settings = alpha(
        callers={"billing": {"token_sha256": DIGEST, "may_call": ["GET bravo/*"]}},
        serves={"bravo": ["GET /*"]},
        tls={"cert": "tls/a.crt", "key": "tls/a.key", "client_ca": "/etc/ca.pem"},
    )
    assert PeerSettings.model_validate(settings.model_dump()) == settings


# --- callers: wrong ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("callers", "problem"),
    [
        ("ANY", "must be a mapping of caller names to settings, or any"),
        ("all", "must be a mapping of caller names to settings, or any"),
        ({}, "must be a mapping of caller names to settings, or any"),
        (["billing"], "must be a mapping of caller names to settings, or any"),
        (True, "must be a mapping of caller names to settings, or any"),
        (
            {"Billing": {"token_sha256": DIGEST}},
            f'"Billing" is not a caller name ({PEER_NAME_RULE})',
        ),
        ({"a_b": {"token_sha256": DIGEST}}, f'"a_b" is not a caller name ({PEER_NAME_RULE})'),
        ({1: {"token_sha256": DIGEST}}, f"1 is not a caller name ({PEER_NAME_RULE})"),
        ({"billing": None}, "billing: must be a mapping with token_sha256"),
        ({"billing": DIGEST}, "billing: must be a mapping with token_sha256"),
        ({"billing": {}}, "billing.token_sha256: missing (mesh token prints it)"),
        (
            {"billing": {"may_call": ["*"]}},
            "billing.token_sha256: missing (mesh token prints it)",
        ),
        (
            {"billing": {"token_sha256": "abc"}},
            f'billing.token_sha256: "abc" {NOT_A_DIGEST}',
        ),
        (
            {"billing": {"token_sha256": "g" * 64}},
            f'billing.token_sha256: "{"g" * 64}" {NOT_A_DIGEST}',
        ),
        (
            {"billing": {"token_sha256": f" {DIGEST}"}},
            f'billing.token_sha256: " {DIGEST}" {NOT_A_DIGEST}',
        ),
        ({"billing": {"token_sha256": 5}}, f"billing.token_sha256: 5 {NOT_A_DIGEST}"),
        (
            {"billing": {"token_sha256": DIGEST, "token": "secret"}},
            "billing.token: unknown setting",
        ),
        (
            {"billing": {"token_sha256": DIGEST, "admin": "yes"}},
            'billing.admin: "yes" is not true or false',
        ),
        (
            {"billing": {"token_sha256": DIGEST, "admin": 1}},
            "billing.admin: 1 is not true or false",
        ),
        (
            {"billing": {"token_sha256": DIGEST, "may_call": "bravo/*"}},
            "billing.may_call: must be a list of patterns, e.g. ['GET bravo/*']",
        ),
        (
            {"billing": {"token_sha256": DIGEST, "may_call": [""]}},
            "billing.may_call: must be a list of patterns, e.g. ['GET bravo/*']",
        ),
        (
            {"billing": {"token_sha256": DIGEST, "may_call": [3]}},
            "billing.may_call: must be a list of patterns, e.g. ['GET bravo/*']",
        ),
    ],
)
def test_bad_callers(callers: object, problem: str) -> None:
    assert callers_problems(callers) == [f"alpha.callers: {problem}"]


@pytest.mark.parametrize(
    "pattern",
    [
        "bravo",  # no path
        "bravo*",
        "get bravo/*",  # methods are upper case
        "GET",
        "GET bravo",
        "G_T bravo/*",
        "hex",  # once reported as a token_sha256 problem ("hex" was in the message)
    ],
)
def test_bad_may_call_patterns(pattern: str) -> None:
    callers = {"billing": {"token_sha256": DIGEST, "may_call": ["*", pattern]}}
    assert callers_problems(callers) == [
        f"alpha.callers: billing.may_call: {pattern!r} is not [METHOD ]peer/path, "
        "e.g. 'bravo/orders/*' or 'GET bravo/*'"
    ]


def test_two_callers_with_one_token() -> None:
    callers = {"billing": {"token_sha256": DIGEST}, "ops": {"token_sha256": DIGEST.upper()}}
    assert callers_problems(callers) == [
        "alpha.callers: two callers have the same token_sha256; give each its own token"
    ]


def test_bad_callers_in_defaults() -> None:
    assert problems({"defaults": {"callers": {"ops": {"token_sha256": "x"}}}, **pair()}) == [
        'defaults.callers: ops.token_sha256: "x" is not 64 hex digits (the sha256 of a token: '
        "mesh token prints it)"
    ]


# --- callers and listen -----------------------------------------------------------------------


def start_problems(doc: dict[str, Any] | str) -> list[str]:
    """What `mesh up` of every peer of `doc` would refuse for listening without callers."""
    roster = parse(doc)
    return open_to_strangers(roster, roster.peers)


@pytest.mark.parametrize(
    ("listen", "shown"),
    [
        ("0.0.0.0:8081", "0.0.0.0:8081"),
        ("[::]:8081", "[::]:8081"),
        ("10.1.2.3:8081", "10.1.2.3:8081"),
        ("Gateway.example:8081", "gateway.example:8081"),
        ("[2001:db8::1]:8081", "[2001:db8::1]:8081"),
        ("[::ffff:127.0.0.1]:8081", "[::ffff:7f00:1]:8081"),  # refused: the safe side
    ],
)
def test_listen_beyond_loopback_needs_callers(listen: str, shown: str) -> None:
    assert start_problems(pair({"listen": listen})) == [NEEDS_CALLERS.format(listen=shown)]
    assert start_problems(pair({"listen": listen, "callers": "any"})) == []
    assert alpha(listen=listen, callers="any").callers == ANY
    assert alpha(listen=listen, callers={"billing": {"token_sha256": DIGEST}}).callers


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8081", "127.9.9.9:8081", "[::1]:8081", "localhost:1"]
)
def test_listen_on_loopback_needs_no_callers(listen: str) -> None:
    assert alpha(listen=listen, callers=None).callers is None
    assert start_problems(pair({"listen": listen})) == []


def test_callers_any_from_defaults_opens_a_wide_listen() -> None:
    doc = {"defaults": {"callers": "any"}, **pair({"listen": "0.0.0.0:8081"})}
    assert parse(doc).peer("alpha").callers == ANY
    assert start_problems(doc) == []


def test_only_the_peers_started_are_checked() -> None:
    roster = parse(pair({"listen": "0.0.0.0:8081"}))
    assert open_to_strangers(roster, ["bravo"]) == []


# --- serves -----------------------------------------------------------------------------------


def test_serves_absent_and_given() -> None:
    assert alpha().serves is None
    found = alpha(serves={"bravo": ["GET /*", "POST /orders/*", "*", "[GH]* /x"]}).serves
    assert found == {"bravo": ("GET /*", "POST /orders/*", "*", "[GH]* /x")}
    assert alpha(serves={"bravo": []}).serves == {"bravo": ()}  # serves bravo nothing


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["GET /*"], "must be a mapping of peer names to lists of patterns"),
        ("all", "must be a mapping of peer names to lists of patterns"),
        ({"bravo": "GET /*"}, "bravo: must be a list of patterns, e.g. ['GET /*']"),
        ({"bravo": [""]}, "bravo: must be a list of patterns, e.g. ['GET /*']"),
        ({"bravo": ["orders"]}, "bravo: 'orders' is not [METHOD ]/path, e.g. 'GET /*'"),
        ({"bravo": ["GET orders/*"]}, "bravo: 'GET orders/*' is not [METHOD ]/path, e.g. 'GET /*'"),
        ({"bravo": ["get /*"]}, "bravo: 'get /*' is not [METHOD ]/path, e.g. 'GET /*'"),
        ({"bravo": ["bravo/*"]}, "bravo: 'bravo/*' is not [METHOD ]/path, e.g. 'GET /*'"),
        ({"carol": ["GET /*"]}, "carol not in talks_to"),
        ({"carol": ["*"], "bravo": ["*"], "dave": ["*"]}, "carol, dave not in talks_to"),
    ],
)
def test_bad_serves(value: object, problem: str) -> None:
    assert problems(pair({"serves": value})) == [f"alpha.serves: {problem}"]


def test_serves_with_a_wrong_talks_to_is_reported_once() -> None:
    doc = pair({"talks_to": "bravo", "serves": {"bravo": ["GET /*"]}})
    assert problems(doc) == ["alpha.talks_to: must be a list of peer names, e.g. [bravo]"]


# --- tls --------------------------------------------------------------------------------------


def test_tls_paths_are_taken_from_the_roster_folder() -> None:
    tls = alpha(tls={"cert": "tls/a.crt", "key": "/etc/a.key"}).tls
    assert tls is not None
    assert (tls.cert, tls.key, tls.client_ca) == (BASE / "tls/a.crt", Path("/etc/a.key"), None)
    tls = alpha(tls={"cert": "a.crt", "key": "a.key", "client_ca": "~/ca.pem"}).tls
    assert tls is not None and tls.client_ca == Path.home() / "ca.pem"
    assert alpha().tls is None


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("tls/a.crt", "alpha.tls: input should be a valid dictionary or instance of TLSFiles"),
        ({"cert": "a.crt"}, "alpha.tls.key: missing"),
        ({"key": "a.key"}, "alpha.tls.cert: missing"),
        (
            {"cert": "a.crt", "key": "a.key", "ca": "ca.pem"},
            "alpha.tls.ca: unknown setting",
        ),
        (
            {"cert": "", "key": "a.key"},
            'alpha.tls.cert: "" is not a path (write a file, e.g. ./tls/alpha.crt)',
        ),
        (
            {"cert": "a.crt", "key": "a.key", "client_ca": 3},
            "alpha.tls.client_ca: 3 is not a path (write a file, e.g. ./tls/alpha.crt)",
        ),
    ],
)
def test_bad_tls(tls: object, problem: str) -> None:
    assert problems(pair({"tls": tls})) == [problem]


# --- callbacks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "http://127.0.0.1:*",
        "https://hooks.example.com/mesh/*",
        "HTTP://Hooks.Example.com",
        "http://*.internal:80?0/cb",
        "http://[::1]:*",
        "http://[fd00::*]:8080",
        "http://callback_receiver:8000",  # a docker compose service
        "http://*",
    ],
)
def test_good_callbacks(pattern: str) -> None:
    assert alpha(callbacks=[pattern]).callbacks == (pattern,)


@pytest.mark.parametrize(
    "pattern",
    [
        "127.0.0.1:*",  # no scheme
        "ftp://files.example",
        "ws://127.0.0.1:*",
        "http://",
        "http://user@127.0.0.1:*",  # userinfo
        "http://127.0.0.1:*@evil.example",
        "http://127.0.0.1%2eevil.example",  # an encoding
        "http://x/%2e%2e/admin",
        "http://x\\@evil.example",
        "http://::1:8080",  # IPv6 without brackets
        "http://[::1:8080",
        "http://[::g]:1",
        "http://x:http",
        "http://x/a b",
        "http://exa mple",
    ],
)
def test_bad_callbacks(pattern: str) -> None:
    assert problems(pair({"callbacks": ["http://127.0.0.1:*", pattern]})) == [
        f"alpha.callbacks: {pattern!r} {CALLBACK_HINT}"
    ]


def test_bad_ipv6_callback() -> None:
    assert problems(pair({"callbacks": ["http://[1::2::3]:80"]})) == [
        "alpha.callbacks: 'http://[1::2::3]:80': [1::2::3] is not an IPv6 address"
    ]


# --- is_loopback ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.example", False),
        ("myhost", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- dot segments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/orders/../admin",
        "/orders/./x",
        "/orders/..",
        "..",
        "/orders/%2e%2e/admin",
        "/orders/%2E%2E/admin",
        "/orders/.%2e/admin",
        "/orders/%2e/admin",
        "/orders/%252e%252e/admin",  # decoded twice by some servers
        "/a/%25252e/x",  # "." encoded three times
        "/orders/..%2fadmin",  # the slash encoded
        "/orders/..\\admin",  # a separator to Windows servers
        "/orders/..%5cadmin",
        "/orders/..;/admin",  # .. to Tomcat
        "/orders/..;jsessionid=x/admin",
        "/a/%2525252525252e/x",  # "." encoded 6 times: still decoding after 4, refused
    ],
)
def test_dot_segments(path: str) -> None:
    assert has_dot_segment(path)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/orders/1",
        "/orders/...",
        "/orders/..x",
        "/orders/x..",
        "/.well-known/x",
        "/orders/.hidden",
        "/files/a%2525b",  # a literal %25: decodes to "a%b" and stops
        "/a;b/c",
        "/orders/1?next=../x",  # the query is not part of the path, but harmless here
    ],
)
def test_no_dot_segments(path: str) -> None:
    assert not has_dot_segment(path)


# --- may_call ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "method", "peer", "path", "allowed"),
    [
        (("*",), "DELETE", "bravo", "/anything/at/all", True),
        (("bravo/orders/*",), "POST", "bravo", "/orders/1", True),
        (("bravo/orders/*",), "GET", "bravo", "/orders/1/items/2", True),  # * matches /
        (("bravo/orders/*",), "GET", "bravo", "/orders", False),
        (("bravo/orders/*",), "GET", "bravo", "/ordersx", False),
        (("bravo/orders/*",), "GET", "carol", "/orders/1", False),
        (("bravo/orders/*",), "GET", "bravo", "/Orders/1", False),  # case-sensitive
        (("GET bravo/*",), "GET", "bravo", "/x", True),
        (("GET bravo/*",), "POST", "bravo", "/x", False),
        (("GET bravo/*",), "get", "bravo", "/x", False),
        (("[GH]* bravo/*",), "HEAD", "bravo", "/x", True),
        (("[GH]* bravo/*",), "POST", "bravo", "/x", False),
        (("[!G]* bravo/*",), "POST", "bravo", "/x", True),
        (("[!G]* bravo/*",), "GET", "bravo", "/x", False),
        (("P* bravo/*",), "PATCH", "bravo", "/x", True),
        (("GET bravo/*", "POST bravo/orders"), "POST", "bravo", "/orders", True),
        (("*/health",), "GET", "carol", "/health", True),
        (("bravo/*",), "GET", "bravo", "/", True),
        (("bravo/?",), "GET", "bravo", "/a", True),
        ((), "GET", "bravo", "/", False),
    ],
)
def test_may_call(
    patterns: tuple[str, ...], method: str, peer: str, path: str, allowed: bool
) -> None:
    assert may_call(patterns, method, peer, path) is allowed


@pytest.mark.parametrize("path", ["/orders/../admin", "/orders/%2e%2e/admin", "/orders/..;/x"])
def test_a_dot_segment_matches_only_star(path: str) -> None:
    assert not may_call(("bravo/orders/*",), "GET", "bravo", path)
    assert not may_call(("bravo/*", "GET bravo/*", "*/*"), "GET", "bravo", path)
    assert may_call(("*",), "GET", "bravo", path)
    assert may_call(("GET *",), "GET", "bravo", path)
    assert not may_call(("POST *",), "GET", "bravo", path)


# --- serves -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "method", "path", "allowed"),
    [
        (("*",), "PUT", "/x", True),
        (("GET /*",), "GET", "/a/b/c", True),
        (("GET /*",), "POST", "/a", False),
        (("POST /orders/*",), "POST", "/orders/1", True),
        (("POST /orders/*",), "POST", "/orders", False),
        (("GET /*", "POST /orders/*"), "POST", "/orders/1/lines", True),
        (("GET /*", "POST /orders/*"), "DELETE", "/orders/1", False),
        (("/public/*",), "DELETE", "/public/x", True),  # no method: any
        (("GET /",), "GET", "/", True),
        (("GET /",), "GET", "/x", False),
        ((), "GET", "/", False),
    ],
)
def test_serves(patterns: tuple[str, ...], method: str, path: str, allowed: bool) -> None:
    assert serves(patterns, method, path) is allowed


@pytest.mark.parametrize("path", ["/public/../admin", "/public/%2E%2E/admin", "/public/.\\x"])
def test_serves_a_dot_segment_only_with_star(path: str) -> None:
    assert not serves(("GET /*", "GET /public/*"), "GET", path)
    assert serves(("GET *",), "GET", path)
    assert serves(("*",), "GET", path)


# --- callback patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("http://127.0.0.1:*", ("http", "127.0.0.1", "*", "/*")),
        ("http://127.0.0.1", ("http", "127.0.0.1", "80", "/*")),  # the default port
        ("https://hooks.example.com", ("https", "hooks.example.com", "443", "/*")),
        ("HTTPS://Hooks.Example.COM/CB", ("https", "hooks.example.com", "443", "/CB")),
        ("http://[::1]:8080/cb/*", ("http", "::1", "8080", "/cb/*")),
        ("http://[0:0:0::1]", ("http", "::1", "80", "/*")),  # compressed, as URLs are
        ("http://[FD00::*]:*", ("http", "fd00::*", "*", "/*")),
        ("http://10.0.*.*:80?0", ("http", "10.0.*.*", "80?0", "/*")),
        ("  http://x:1/  ", ("http", "x", "1", "/")),
    ],
)
def test_callback_pattern_parts(text: str, parts: tuple[str, str, str, str]) -> None:
    assert CallbackPattern.parse(text) == CallbackPattern(*parts)


@pytest.mark.parametrize(
    ("pattern", "url", "fits"),
    [
        ("http://127.0.0.1:*", ("http", "127.0.0.1", 9000, "/cb"), True),
        ("http://127.0.0.1:*", ("https", "127.0.0.1", 9000, "/cb"), False),
        ("http://127.0.0.1:*", ("http", "127.0.0.2", 9000, "/cb"), False),
        ("http://127.0.0.1:*", ("http", "127.0.0.1.evil.example", 80, "/"), False),
        ("http://127.0.0.1", ("http", "127.0.0.1", 80, "/cb"), True),  # the default port
        ("http://127.0.0.1", ("http", "127.0.0.1", 8080, "/cb"), False),
        ("https://hooks.example", ("https", "hooks.example", 443, "/"), True),
        ("https://hooks.example", ("https", "hooks.example", 80, "/"), False),
        ("http://x:80?0", ("http", "x", 8080, "/"), True),
        ("http://x:80?0", ("http", "x", 80, "/"), False),
        ("http://*.example.com", ("http", "a.b.example.com", 80, "/"), True),
        ("http://*.example.com", ("http", "example.com", 80, "/"), False),
        ("http://*.example.com", ("http", "evil.com", 80, "/"), False),
        ("http://Hooks.Example.com", ("http", "hooks.example.com", 80, "/"), True),
        ("http://[::1]:*", ("http", "::1", 8080, "/"), True),
        ("http://[::1]:*", ("http", "::2", 8080, "/"), False),
        ("http://[::1]:*", ("http", "127.0.0.1", 8080, "/"), False),
        ("http://[0:0::1]:*", ("http", "::1", 8080, "/"), True),
        ("http://[fd00::*]:*", ("http", "fd00::7", 1, "/"), True),
        ("http://[fd00::*]:*", ("http", "fd01::7", 1, "/"), False),
        ("http://h/cb/*", ("http", "h", 80, "/cb/1/2"), True),
        ("http://h/cb/*", ("http", "h", 80, "/other"), False),
        ("http://h/cb/*", ("http", "h", 80, "/cb/../admin"), False),  # a dot segment
        ("http://h/cb/*", ("http", "h", 80, "/cb/%2e%2e/admin"), False),
        ("http://h", ("http", "h", 80, "/cb/../admin"), True),  # any path: / and *
        ("http://h/", ("http", "h", 80, "/"), True),
        ("http://h/", ("http", "h", 80, "/x"), False),
    ],
)
def test_callback_pattern_matches(pattern: str, url: tuple[str, str, int, str], fits: bool) -> None:
    assert CallbackPattern.parse(pattern).matches(*url) is fits


@pytest.mark.parametrize(
    "text",
    ["http://u@h", "http://h%2e", "http://h\\x", "gopher://h", "http://[::1", "http://h:-1", ""],
)
def test_callback_pattern_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a URL pattern"):
        CallbackPattern.parse(text)


def test_the_readme_example_starts_as_written() -> None:
    """peers.example.yaml listens on loopback without callers: `mesh up` takes it."""
    example = load_roster(Path(__file__).resolve().parent.parent / "peers.example.yaml")
    assert open_to_strangers(example, example.peers) == []
    assert all(peer.callers is None for peer in example.peers.values())
