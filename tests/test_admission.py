"""What a request must be before the ingress looks further (`mesh.http.admission`)."""

from __future__ import annotations

import pytest

from mesh.config.roster import PeerSettings
from mesh.http.admission import (
    HOST,
    PROXY,
    Call,
    addressed,
    head_fits,
    host_answered,
    route,
    single_headers,
)
from mesh.http.headers import end_to_end
from mesh.http.problems import HTTPProblem


@pytest.mark.parametrize(
    ("raw", "call"),
    [
        (b"/bravo/x/y", Call("bravo", "/x/y")),
        (b"/bravo", Call("bravo", "/")),
        (b"/bravo/", Call("bravo", "/")),
        (b"/bravo/a%2Fb", Call("bravo", "/a%2Fb")),  # the target stays as it came
        (b"http://bravo/x", Call("bravo", "/x", PROXY, "bravo")),
        (b"HTTP://Bravo:80/x", Call("bravo", "/x", PROXY, "bravo:80")),
        (b"http://user:pw@bravo", Call("bravo", "/", PROXY, "bravo")),
        (b"https://bravo/", Call("bravo", "/", PROXY, "bravo", "https")),
        (b"/mesh/status", None),
        (b"/mesh", None),
        (b"/", None),
    ],
)
def test_a_call_is_read_from_the_raw_target(raw: bytes, call: Call | None) -> None:
    assert addressed(raw) == call


def test_options_of_a_peer_without_a_path_asks_the_upstream_itself() -> None:
    """RFC 9112, 3.2.4: ``OPTIONS http://bravo`` is forwarded as ``OPTIONS *``."""
    assert addressed(b"http://bravo", "OPTIONS") == Call("bravo", "*", PROXY, "bravo")
    assert addressed(b"http://bravo/", "OPTIONS") == Call("bravo", "/", PROXY, "bravo")
    assert addressed(b"http://bravo", "OPTIONS", b"a=1") == Call("bravo", "/", PROXY, "bravo")
    assert addressed(b"http://bravo", "GET") == Call("bravo", "/", PROXY, "bravo")


def _scope(target: bytes, host: bytes, method: str = "GET") -> dict[str, object]:
    path, _, query = target.partition(b"?")
    headers = [(b"host", host)]
    return {
        "raw_path": path,
        "path": path.decode(),
        "query_string": query,
        "method": method,
        "headers": headers,
    }


@pytest.mark.parametrize(
    ("target", "host", "call"),
    [
        (b"/x/y", b"bravo.localhost:8081", Call("bravo", "/x/y", HOST)),
        (b"//x", b"BRAVO.localhost", Call("bravo", "//x", HOST)),  # untouched in this form
        (b"/mesh/status", b"bravo.localhost", Call("bravo", "/mesh/status", HOST)),
        (b"/bravo/x", b"localhost:8081", Call("bravo", "/x")),
        (b"/bravo/x", b"alpha.localhost", Call("bravo", "/x")),  # itself: its own routes
        (b"/bravo/x", b"carol.localhost", Call("carol", "/bravo/x", HOST)),  # 404 if let in
        (b"/x", b"bravo.example.org", 421),  # another suffix, on a peer open to all
        (b"http://bravo/x", b"carol.localhost", Call("bravo", "/x", PROXY, "bravo")),
        (b"bravo/x", b"localhost", 400),  # neither form: it was peer "ravo"
        (b"xbravo/x", b"bravo.localhost", 400),
        (b"*", b"localhost", None),  # OPTIONS *: this peer's own
    ],
)
def test_the_three_forms(target: bytes, host: bytes, call: Call | int | None) -> None:
    settings = peer("127.0.0.1:8081")
    if isinstance(call, int):
        with pytest.raises(HTTPProblem) as refused:
            route(settings, _scope(target, host))
        assert refused.value.status == call
    else:
        assert route(settings, _scope(target, host)) == call


def test_a_host_suffix_of_the_roster_names_peers() -> None:
    settings = PeerSettings.model_validate(
        {
            "name": "alpha",
            "listen": "127.0.0.1:1",
            "outbox": "/p",
            "inbox": "/p",
            "host_suffix": "Mesh.Example.ORG",
        }
    )
    scope = _scope(b"/x", b"bravo.mesh.example.org:443")
    assert route(settings, scope) == Call("bravo", "/x", HOST)


@pytest.mark.parametrize(
    "raw", [b"//bravo/x", b"/%62ravo/x", b"/bravo%2Fx", b"http:///x", b"http://@/x"]
)
def test_a_target_that_reads_two_ways_is_a_400(raw: bytes) -> None:
    with pytest.raises(HTTPProblem) as refused:
        addressed(raw)
    assert refused.value.status == 400


@pytest.mark.parametrize("name", [b"host", b"Origin", b"authorization", b"Proxy-Authorization"])
def test_deciding_headers_come_once(name: bytes) -> None:
    single_headers([(name, b"a"), (b"x", b"1"), (b"x", b"2")])
    with pytest.raises(HTTPProblem) as refused:
        single_headers([(name, b"a"), (name.lower(), b"b")])
    assert refused.value.status == 400


def peer(listen: str, callers: object = None) -> PeerSettings:
    return PeerSettings.model_validate(
        {"name": "alpha", "listen": listen, "outbox": "/p", "inbox": "/p", "callers": callers}
    )


@pytest.mark.parametrize(
    ("listen", "host", "answered"),
    [
        ("127.0.0.1:8081", "127.0.0.1:8081", True),
        ("127.0.0.1:8081", "localhost:8081", True),
        ("127.0.0.1:8081", "bravo.localhost", True),
        ("127.0.0.1:8081", "[::1]:8081", True),
        ("127.0.0.1:8081", "attacker.example:8081", False),
        ("127.0.0.1:8081", "localhost.attacker.example", False),
        ("127.0.0.1:8081", "", False),
        ("0.0.0.0:8081", "10.1.2.3:8081", True),  # callers: any, reached by address
        ("gateway.lan:8081", "gateway.lan:8081", True),
        ("127.0.0.1:8081", "alpha", True),  # the peer's own name
    ],
)
@pytest.mark.parametrize("callers", [None, "any"])
def test_a_peer_open_to_all_answers_only_to_its_names(
    listen: str, host: str, answered: bool, callers: str | None
) -> None:
    settings = peer(listen, "any").model_copy(update={"callers": callers})
    try:
        host_answered(settings, {b"host": host.encode()})
    except HTTPProblem as problem:
        assert problem.status == 421 and not answered
    else:
        assert answered


def test_a_peer_with_callers_answers_any_name() -> None:
    settings = peer("0.0.0.0:8081", {"ops": {"token_sha256": "a" * 64, "admin": True}})
    host_answered(settings, {b"host": b"anything.example"})


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [
        ("GET", "/x", [], None),
        ("X" * 33, "/x", [], 400),
        ("GET /", "/x", [], 400),
        ("GET", "/" + "a" * 16384, [], 414),
        ("GET", "/caf\u00e9", [], 400),
        ("GET", "/x", [(b"x-%d" % n, b"1") for n in range(1001)], 431),
        ("GET", "/x", [(b"x-big", b"a" * 70000)], 431),
        ("GET", "/x", [(b"connection", b"a" * 70000)], None),  # does not cross
    ],
)
def test_a_head_the_far_side_would_refuse_is_refused_here(
    method: str, target: str, headers: list[tuple[bytes, bytes]], status: int | None
) -> None:
    try:
        head_fits(method, target, end_to_end(headers))
    except HTTPProblem as problem:
        assert problem.status == status
    else:
        assert status is None


@pytest.mark.parametrize(
    ("target", "host"),
    [
        (b"/bravo/x", b"localhost:1,evil.example"),  # would read as a list when copied
        (b"/bravo/x", b'localhost;for="6.6.6.6"'),
        (b"/bravo/x", b"local host"),
        (b"/bravo/x", b"localhost:99999"),
        (b"http://bravo:1,evil.example/x", b"localhost"),
        (b"http://bravo;x=y/x", b"localhost"),
    ],
)
def test_a_host_that_is_not_a_name_or_address_is_a_400(target: bytes, host: bytes) -> None:
    with pytest.raises(HTTPProblem) as refused:
        route(peer("127.0.0.1:8081"), _scope(target, host))
    assert refused.value.status == 400


def test_a_header_value_with_a_control_character_is_a_400() -> None:
    with pytest.raises(HTTPProblem) as refused:
        head_fits("GET", "/x", ((b"x-ctl", b"a\x0bb"),))
    assert refused.value.status == 400
    head_fits("GET", "/x", ((b"x-tab", b"a\tb"),))
