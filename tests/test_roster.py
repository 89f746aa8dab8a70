import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.config.roster import (
    PEER_NAME,
    Address,
    PeerSettings,
    Roster,
    RosterError,
    load_roster,
    parse_roster,
)

BASE = Path("/srv/mesh")

DESIGN_EXAMPLE = """\
defaults:               # optional; any per-peer setting below, for every peer
  heartbeat: 5s
  resend_after: 10s
  fragment_size: 256MiB
  collate_below: 64KiB
  linger: 5ms
  encrypt: false        # AEAD per link when true (both ends)
keys: ./keys            # <peer>.key (private, mode 0600) and <peer>.pub
state: ./state          # durable state per peer (SQLite by default)
peers:
  alpha:
    listen: 127.0.0.1:8081      # HTTP ingress for callers
    outbox: ./pipe
    inbox: ./pipe
    talks_to: [bravo]           # whitelist: peers it may send to and accept from
    callbacks: ["http://127.0.0.1:*"]  # URL patterns (fnmatch)
  bravo:
    listen: 127.0.0.1:8082
    outbox: ./pipe
    inbox: ./pipe
    upstream: http://127.0.0.1:9000   # where requests for bravo/... go
    talks_to: [alpha]
"""


def peer(port: int, *talks_to: str, **settings: Any) -> dict[str, Any]:
    """A valid peer's settings, plus `settings`."""
    return {
        "listen": f"127.0.0.1:{port}",
        "outbox": "./pipe",
        "inbox": "./pipe",
        "talks_to": list(talks_to),
        **settings,
    }


def pair(
    alpha: dict[str, Any] | None = None, bravo: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A roster of alpha and bravo talking to each other, with extra settings for each."""
    return {
        "peers": {
            "alpha": peer(8081, "bravo", **alpha or {}),
            "bravo": peer(8082, "alpha", **bravo or {}),
        }
    }


def parse(doc: dict[str, Any] | str) -> Roster:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    return parse_roster(text, BASE)


def problems(doc: dict[str, Any] | str) -> list[str]:
    with pytest.raises(RosterError) as info:
        parse(doc)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def write(tmp_path: Path, text: str, name: str = "roster.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- a valid roster ---------------------------------------------------------------------------


def test_design_example_loads(tmp_path: Path) -> None:
    roster = load_roster(write(tmp_path, DESIGN_EXAMPLE))
    assert roster.path == tmp_path / "roster.yaml"
    assert roster.keys == tmp_path / "keys"
    assert roster.state == tmp_path / "state"
    assert list(roster.peers) == ["alpha", "bravo"]
    alpha, bravo = roster.peer("alpha"), roster.peer("bravo")
    assert alpha.name == "alpha"
    assert alpha.listen == Address("127.0.0.1", 8081)
    assert alpha.outbox == alpha.inbox == tmp_path / "pipe"
    assert alpha.talks_to == ("bravo",)
    assert alpha.callbacks == ("http://127.0.0.1:*",)
    assert alpha.upstream is None
    assert bravo.upstream == "http://127.0.0.1:9000"
    assert (alpha.heartbeat, alpha.resend_after, alpha.linger) == (5.0, 10.0, 0.005)
    assert (alpha.fragment_size, alpha.collate_below) == (256 * 2**20, 64 * 2**10)
    assert alpha.encrypt is False
    assert roster.state_dir("bravo") == tmp_path / "state" / "bravo"


def test_built_in_defaults() -> None:
    alpha = parse({"peers": {"alpha": peer(8081)}}).peer("alpha")
    assert alpha.model_dump(exclude={"name", "listen", "outbox", "inbox"}) == {
        "talks_to": (),
        "callbacks": (),
        "upstream": None,
        "heartbeat": 5.0,
        "resend_after": 10.0,
        "settle": 2.0,
        "fragment_size": 256 * 2**20,
        "collate_below": 64 * 2**10,
        "linger": 0.005,
        "encrypt": False,
        "watch": "auto",
        "poll_interval": 1.0,
        "body_limit": 64 * 2**20,
        "request_deadline": 3600.0,
        "upstream_timeout": 60.0,
        "upstream_concurrency": 64,
        "quarantine_limit": 1 << 30,
        "retention": 7 * 86400.0,
        "file_mode": 0o600,
        "callers": None,
        "serves": None,
        "tls": None,
        "host_suffix": "localhost",
        "preserve_host": False,
    }


@pytest.mark.parametrize(
    ("key", "value", "parsed"),
    [
        ("listen", "[::1]:8081", Address("::1", 8081)),
        ("listen", "[0:0::1]:8081", Address("::1", 8081)),
        ("listen", "LocalHost:80", Address("localhost", 80)),
        ("listen", "0.0.0.0:65535", Address("0.0.0.0", 65535)),
        ("linger", 0, 0.0),
        ("host_suffix", "Mesh.Example.org.", "mesh.example.org"),
        ("preserve_host", True, True),
        ("linger", "0ms", 0.0),
        ("heartbeat", 2, 2.0),
        ("settle", "500ms", 0.5),
        ("poll_interval", "1.5m", 90.0),
        ("fragment_size", "64KiB", 65536),
        ("collate_below", "1KB", 1000),
        ("body_limit", 1, 1),
        ("request_deadline", "2h", 7200.0),
        ("upstream_timeout", "90s", 90.0),
        ("upstream_concurrency", 8, 8),
        ("encrypt", True, True),
        ("watch", "poll", "poll"),
        ("watch", "notify", "notify"),
        ("upstream", "https://example.com:8443/base", "https://example.com:8443/base"),
        ("upstream", None, None),
        ("callbacks", [], ()),
        ("outbox", "/abs/out", Path("/abs/out")),
        ("inbox", "in/../in2", BASE / "in2"),
    ],
)
def test_valid_setting(key: str, value: object, parsed: object) -> None:
    alpha = parse({"peers": {"alpha": peer(8081, **{key: value})}}).peer("alpha")
    assert getattr(alpha, key) == parsed


def test_yaml_yes_is_a_bool() -> None:
    text = yaml.safe_dump(pair()).replace("peers:", "defaults:\n  encrypt: yes\npeers:", 1)
    assert parse(text).peer("alpha").encrypt is True


# --- paths ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_roster_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    doc = {
        "keys": "../secrets",
        "state": "/var/lib/mesh",
        "peers": {"alpha": peer(8081, outbox="out", inbox="~/in")},
    }
    roster = load_roster(write(tmp_path, yaml.safe_dump(doc), "etc/roster.yaml"))
    assert roster.path == tmp_path / "etc" / "roster.yaml"
    assert roster.keys == tmp_path / "secrets"
    assert roster.state == Path("/var/lib/mesh")
    assert roster.peer("alpha").outbox == tmp_path / "etc" / "out"
    assert roster.peer("alpha").inbox == home / "in"


def test_load_roster_takes_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, DESIGN_EXAMPLE, "conf/mesh.yaml")
    monkeypatch.chdir(tmp_path)
    roster = load_roster("conf/mesh.yaml")
    assert roster.path == tmp_path / "conf" / "mesh.yaml"
    assert roster.peer("alpha").outbox == tmp_path / "conf" / "pipe"


@pytest.mark.parametrize("key", ["keys", "state"])
@pytest.mark.parametrize(("value", "shown"), [(3, "3"), ("", '""'), (["a"], "a list")])
def test_keys_and_state_must_be_paths(key: str, value: object, shown: str) -> None:
    assert problems({key: value, **pair()}) == [
        f"roster.{key}: {shown} is not a path (write a folder, e.g. ./pipe)"
    ]


def test_peer_settings_without_context_resolve_against_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = PeerSettings.model_validate({"name": "a", **peer(1, outbox="o", inbox="/i")})
    assert settings.outbox == tmp_path / "o"
    assert settings.inbox == Path("/i")


# --- the file and its YAML --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RosterError) as info:
        load_roster(tmp_path / "nope.yaml")
    assert info.value.problems == [
        f"roster: cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RosterError, match=r"roster: cannot read .*: Is a directory"):
        load_roster(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"peers: {caf\xe9: 1}")
    with pytest.raises(RosterError, match="is not UTF-8 text"):
        load_roster(tmp_path / "latin1.yaml")


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = "peers:\n  alpha:\n    listen: 127.0.0.1:8081\n  - bravo\n"
    with pytest.raises(RosterError) as info:
        load_roster(write(tmp_path, text))
    [problem] = info.value.problems
    assert problem.startswith("roster: not valid YAML at line 4, column 3: ")


def test_source_names_the_text() -> None:
    with pytest.raises(RosterError, match=r"^mesh\.yaml: not valid YAML at line 1, column 9: "):
        parse_roster("peers: [", BASE, source="mesh.yaml")
    with pytest.raises(RosterError, match=r"^mesh\.yaml\.foo: unknown key$"):
        parse_roster(yaml.safe_dump({"foo": 1, **pair()}), BASE, source="mesh.yaml")
    assert parse_roster(yaml.safe_dump(pair()), BASE, source="m.yaml").path == BASE / "m.yaml"


def test_unsafe_tags_are_refused() -> None:
    [problem] = problems("peers: !!python/object/apply:os.system ['true']\n")
    assert problem.startswith("roster: not valid YAML at line 1, column 8: could not determine")


def test_duplicate_keys_are_all_reported() -> None:
    text = """\
peers:
  alpha:
    listen: 127.0.0.1:8081
    outbox: ./pipe
    inbox: ./pipe
    heartbeat: 1s
    heartbeat: 2s
  bravo: {listen: "127.0.0.1:8082", outbox: x, outbox: y, inbox: ./pipe}
  alpha:
    listen: 127.0.0.1:8083
    outbox: ./pipe
    inbox: ./pipe
keys: a
keys: b
"""
    assert problems(text) == [
        "alpha.heartbeat: defined twice (lines 6 and 7)",
        "bravo.outbox: defined twice (lines 8 and 8)",
        "peers.alpha: defined twice (lines 2 and 9)",
        "roster.keys: defined twice (lines 13 and 14)",
    ]


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = """\
base: &base {outbox: ./pipe, inbox: ./pipe}
peers:
  alpha: {<<: *base, listen: "127.0.0.1:8081"}
  bravo: {<<: *base, listen: "127.0.0.1:8082"}
"""
    assert problems(text) == ["roster.base: unknown key"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "roster: empty (expected a mapping with peers)"),
        ("# only a comment\n", "roster: empty (expected a mapping with peers)"),
        ("- alpha\n", "roster: must be a mapping with peers, not a list"),
        ("peers\n", 'roster: must be a mapping with peers, not "peers"'),
        ("keys: ./k\n", "roster.peers: missing"),
        ("peers:\n", "roster.peers: must be a mapping of peer names to their settings"),
        ("peers: {}\n", "roster.peers: must be a mapping of peer names to their settings"),
        ("peers: [alpha]\n", "roster.peers: must be a mapping of peer names to their settings"),
    ],
)
def test_document_shape(text: str, problem: str) -> None:
    assert problem in problems(text)


def test_unknown_top_level_key() -> None:
    assert problems({"foo": 1, "Peers": {}, **pair()}) == [
        "roster.foo: unknown key",
        "roster.Peers: unknown key",
    ]


# --- peer names and per-peer settings ---------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "a-b", "9lives", "a" * 63, "a-"])
def test_valid_peer_names(name: str) -> None:
    assert PEER_NAME.fullmatch(name)
    assert list(parse({"peers": {name: peer(8081)}}).peers) == [name]


@pytest.mark.parametrize("name", ["Alpha_1", "-a", "a" * 64, "a_b", "a.b", "", "é"])
def test_invalid_peer_names(name: str) -> None:
    assert not PEER_NAME.fullmatch(name)
    assert problems({"peers": {name: peer(8081)}}) == [
        f"peers.{name}: not a valid peer name (lowercase letters, digits and '-', at most 63, "
        "starting with a letter or digit)"
    ]


def test_invalid_peer_name_settings_are_still_checked() -> None:
    assert problems({"peers": {"Alpha_1": {"listen": "localhost:1"}}})[1:] == [
        "Alpha_1.outbox: missing",
        "Alpha_1.inbox: missing",
    ]


@pytest.mark.parametrize("value", [3, "x", None, ["listen"]])
def test_peer_must_be_a_mapping(value: object) -> None:
    assert problems({"peers": {"alpha": value}}) == ["alpha: must be a mapping of settings"]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("listen", "127.0.0.1", "is not an address (use host:port"),
        ("listen", 8081, "8081 is not an address"),
        ("listen", ":8081", "is not an address"),
        ("listen", "bad host:1", "is not an address"),
        ("listen", "[nope]:1", "is not an address"),
        ("listen", "::1:8081", "put an IPv6 address in brackets"),
        ("listen", "h:0", '"h:0" has no valid port (a port is 1 to 65535)'),
        ("listen", "h:65536", "has no valid port"),
        ("listen", "h:http", "has no valid port"),
        ("outbox", 3, "3 is not a path"),
        ("inbox", "", '"" is not a path'),
        ("outbox", None, "an empty value is not a path"),
        (
            "heartbeat",
            "5 parsecs",
            '"5 parsecs" is not a duration (use a number with ms, s, m or h',
        ),
        ("heartbeat", 0, "must be more than 0, not 0"),
        ("resend_after", "0s", 'must be more than 0, not "0s"'),
        ("settle", -1, "-1 is negative"),
        ("poll_interval", "0ms", "must be more than 0"),
        ("linger", "-5ms", "is negative"),
        ("host_suffix", "-bad.example", "is not a DNS name"),
        ("host_suffix", "a b", "is not a DNS name"),
        ("linger", True, "true is not a duration"),
        ("fragment_size", "32KiB", '"32KiB" is less than the minimum, 64KiB'),
        ("fragment_size", 1.5, "1.5 is not a size"),
        ("collate_below", 0, "must be more than 0, not 0"),
        ("body_limit", "0B", "must be more than 0"),
        ("body_limit", "1.1KiB", "not a whole number of bytes"),
        ("request_deadline", "0s", "must be more than 0"),
        ("upstream_concurrency", 0, "must be a whole number more than 0, not 0"),
        ("upstream_concurrency", True, "must be a whole number more than 0, not true"),
        ("upstream_concurrency", "8", 'must be a whole number more than 0, not "8"'),
        ("encrypt", "true", '"true" is not true or false (write true or false, no quotes)'),
        ("encrypt", 1, "1 is not true or false"),
        ("watch", "inotify", '"inotify" is not one of auto, notify, poll'),
        ("upstream", "ftp://x", '"ftp://x" is not an http:// or https:// URL with a host'),
        ("upstream", "http://", "is not an http:// or https:// URL with a host"),
        ("upstream", "http://x:99999", "is not an http:// or https:// URL with a host"),
        ("upstream", "http://x y", "is not an http:// or https:// URL with a host"),
        ("upstream", "localhost:9000", "is not an http:// or https:// URL with a host"),
        ("upstream", 9000, "9000 is not an http:// or https:// URL with a host"),
        ("upstream", "http://x/#top", '"http://x/#top" has a #fragment'),
        ("callbacks", "http://x/*", 'must be a list of URL patterns, e.g. ["http://127.0.0.1:*"]'),
        ("callbacks", [1], "must be a list of URL patterns"),
        ("callbacks", [""], "must be a list of URL patterns"),
        ("talks_to", "bravo", "must be a list of peer names, e.g. [bravo]"),
        ("talks_to", [1], "must be a list of peer names"),
        ("colour", "blue", "unknown setting"),
        ("name", "alpha", "not a setting (a peer's name is its key under peers)"),
    ],
)
def test_bad_setting(key: str, value: object, problem: str) -> None:
    doc = {"peers": {"alpha": {**peer(8081), key: value}}}
    found = problems(doc)
    assert len(found) == 1, found
    assert found[0].startswith(f"alpha.{key}: ")
    assert problem in found[0]


@pytest.mark.parametrize("key", ["listen", "outbox", "inbox"])
def test_required_settings(key: str) -> None:
    settings = peer(8081)
    del settings[key]
    assert problems({"peers": {"alpha": settings}}) == [f"alpha.{key}: missing"]


def test_collate_below_must_fit_in_a_fragment() -> None:
    doc = {"peers": {"alpha": peer(8081, fragment_size="64KiB", collate_below="1MiB")}}
    assert problems(doc) == ["alpha.collate_below: 1MiB is more than fragment_size 64KiB"]
    doc = {"peers": {"alpha": peer(8081, fragment_size="64KiB", collate_below="64KiB")}}
    assert parse(doc).peer("alpha").collate_below == 65536


def test_non_text_setting_keys_do_not_crash() -> None:
    text = 'peers:\n  alpha: {listen: "localhost:1", outbox: o, inbox: i, 1: x, 2020-01-01: y}\n'
    assert problems(text) == ["alpha.1: unknown setting", "alpha.2020-01-01: unknown setting"]


# --- rules between peers ----------------------------------------------------------------------


def test_same_listen_address() -> None:
    doc = {"peers": {"alpha": peer(8081), "bravo": peer(8081), "carol": peer(8081)}}
    assert problems(doc) == [
        "bravo.listen: 127.0.0.1:8081 is already alpha's",
        "carol.listen: 127.0.0.1:8081 is already alpha's",
    ]


def test_same_ipv6_address_written_differently() -> None:
    doc = {"peers": {"alpha": peer(1, listen="[::1]:8081"), "bravo": peer(2, listen="[0::1]:8081")}}
    assert problems(doc) == ["bravo.listen: [::1]:8081 is already alpha's"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:8081", "0.0.0.0:8081"),
        ("0.0.0.0:8081", "10.0.0.1:8081"),
        ("[::]:8081", "127.0.0.1:8081"),
        ("[::1]:8081", "[::]:8081"),
    ],
)
def test_wildcard_listen_overlaps_every_host(first: str, second: str) -> None:
    doc = {"peers": {"alpha": peer(1, listen=first), "bravo": peer(2, listen=second)}}
    assert problems(doc) == [
        f"bravo.listen: {Address.parse(second)} overlaps alpha's {Address.parse(first)} "
        "(0.0.0.0 and :: take the port on every address)"
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [("0.0.0.0:8081", "0.0.0.0:8082"), ("127.0.0.1:8081", "127.0.0.2:8081")],
)
def test_listen_without_clash(first: str, second: str) -> None:
    doc = {"peers": {"alpha": peer(1, listen=first), "bravo": peer(2, listen=second)}}
    assert list(parse(doc).peers) == ["alpha", "bravo"]


def test_talks_to_unknown_peer() -> None:
    assert problems(pair({"talks_to": ["bravo", "carol"]})) == [
        "alpha.talks_to: carol is not a peer in this roster"
    ]


def test_talks_to_itself() -> None:
    assert problems(pair({"talks_to": ["bravo", "alpha"]})) == [
        "alpha.talks_to: alpha is this peer itself; list only the others"
    ]


def test_talks_to_twice() -> None:
    assert problems(pair({"talks_to": ["bravo", "bravo"]})) == [
        "alpha.talks_to: bravo listed more than once"
    ]


def test_one_sided_link_reported_once_at_the_silent_end() -> None:
    assert problems(pair(bravo={"talks_to": []})) == [
        "bravo.talks_to: alpha talks to bravo, but bravo does not list alpha"
    ]


def test_talks_to_a_peer_with_a_bad_name_or_settings_is_not_unknown() -> None:
    doc = pair({"talks_to": ["bravo", "Carol"]}, {"talks_to": "alpha"})
    doc["peers"]["Carol"] = peer(8083)
    assert [p.split(":")[0] for p in problems(doc)] == ["bravo.talks_to", "peers.Carol"]


def test_encrypt_must_agree_once_per_link() -> None:
    assert problems(pair(bravo={"encrypt": True})) == [
        "alpha.encrypt: false, but bravo (which alpha talks to) has encrypt: true; "
        "a link is encrypted at both ends or not at all"
    ]
    assert parse(pair({"encrypt": True}, {"encrypt": True})).peer("bravo").encrypt is True


def test_encrypt_from_defaults_counts_in_the_link_rule() -> None:
    assert problems({"defaults": {"encrypt": True}, **pair({"encrypt": False})}) == [
        "alpha.encrypt: false, but bravo (which alpha talks to) has encrypt: true; "
        "a link is encrypted at both ends or not at all"
    ]


def test_encrypt_is_checked_only_along_links() -> None:
    doc = {"peers": {"alpha": peer(8081, encrypt=True), "bravo": peer(8082)}}
    assert parse(doc).peer("alpha").encrypt is True


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_apply_and_peers_override() -> None:
    doc = {
        "defaults": {"heartbeat": "1s", "watch": "poll", "outbox": "shared"},
        **pair({"heartbeat": "3s"}),
    }
    del doc["peers"]["bravo"]["outbox"]
    roster = parse(doc)
    assert roster.peer("alpha").heartbeat == 3.0
    assert roster.peer("bravo").heartbeat == 1.0
    assert roster.peer("alpha").watch == roster.peer("bravo").watch == "poll"
    assert roster.peer("bravo").outbox == BASE / "shared"


def test_bad_default_reported_once() -> None:
    doc = {"defaults": {"heartbeat": "5 parsecs"}, **pair()}
    doc["peers"]["carol"] = peer(8083)
    assert problems(doc) == [
        'defaults.heartbeat: "5 parsecs" is not a duration (use a number with ms, s, m or h, '
        "e.g. 5s)"
    ]


def test_bad_default_is_dropped_but_a_peer_may_set_it() -> None:
    doc = {"defaults": {"heartbeat": 0}, **pair({"heartbeat": "bad"})}
    assert problems(doc) == [
        "defaults.heartbeat: must be more than 0, not 0",
        'alpha.heartbeat: "bad" is not a duration (use a number with ms, s, m or h, e.g. 5s)',
    ]


@pytest.mark.parametrize("key", ["listen", "name"])
def test_defaults_cannot_hold_per_peer_settings(key: str) -> None:
    assert problems({"defaults": {key: "127.0.0.1:9"}, **pair()}) == [
        f"defaults.{key}: must be set for each peer, not in defaults"
    ]


def test_defaults_unknown_setting_and_shape() -> None:
    assert problems({"defaults": {"colour": "red"}, **pair()}) == [
        "defaults.colour: unknown setting"
    ]
    assert problems({"defaults": [1], **pair()}) == [
        "roster.defaults: must be a mapping of settings"
    ]
    assert parse({"defaults": None, **pair()}).peer("alpha").heartbeat == 5.0


def test_defaults_cross_setting_rule_reported_once() -> None:
    doc = {"defaults": {"fragment_size": "64KiB", "collate_below": "1MiB"}, **pair()}
    assert problems(doc) == ["defaults.collate_below: 1MiB is more than fragment_size 64KiB"]


def test_valid_default_clashing_with_a_peer_setting_is_the_peer_s_problem() -> None:
    doc = {"defaults": {"collate_below": "1MiB"}, **pair({"fragment_size": "64KiB"})}
    assert problems(doc) == ["alpha.collate_below: 1MiB is more than fragment_size 64KiB"]


# --- all together -----------------------------------------------------------------------------


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = """\
colour: blue
peers:
  alpha:
    listen: 127.0.0.1:8081
    outbox: ./pipe
    inbox: ./pipe
    heartbeat: 5 parsecs
    talks_to: [bravo, carol]
  bravo:
    listen: 127.0.0.1:8081
    outbox: ./pipe
    inbox: ./pipe
    talks_to: [alpha]
"""
    with pytest.raises(RosterError) as info:
        load_roster(write(tmp_path, text))
    assert info.value.problems == [
        "roster.colour: unknown key",
        'alpha.heartbeat: "5 parsecs" is not a duration (use a number with ms, s, m or h, e.g. 5s)',
        "alpha.talks_to: carol is not a peer in this roster",
        "bravo.listen: 127.0.0.1:8081 is already alpha's",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_rules_between_peers_apply_to_peers_with_other_problems() -> None:
    doc = pair({"heartbeat": 0, "encrypt": True}, {"talks_to": [], "watch": "x"})
    doc["peers"]["carol"] = peer(8081, settle="never")
    assert problems(doc) == [
        "alpha.heartbeat: must be more than 0, not 0",
        'bravo.watch: "x" is not one of auto, notify, poll',
        'carol.settle: "never" is not a duration (use a number with ms, s, m or h, e.g. 5s)',
        "bravo.talks_to: alpha talks to bravo, but bravo does not list alpha",
        "alpha.encrypt: true, but bravo (which alpha talks to) has encrypt: false; "
        "a link is encrypted at both ends or not at all",
        "carol.listen: 127.0.0.1:8081 is already alpha's",
    ]


def test_a_wrong_setting_is_not_used_by_rules_between_peers() -> None:
    doc = pair({"listen": "nowhere", "encrypt": "yes"}, peer(2, "alpha", listen="0.0.0.0:8081"))
    assert [p.split(":")[0] for p in problems(doc)] == ["alpha.listen", "alpha.encrypt"]


# --- the API ----------------------------------------------------------------------------------


def test_unknown_peer_is_a_clear_key_error() -> None:
    roster = parse(pair())
    with pytest.raises(
        KeyError, match=r"no peer named 'carol' in this roster \(peers: alpha, bravo\)"
    ):
        roster.peer("carol")
    with pytest.raises(KeyError):
        roster.state_dir("../etc")


@pytest.mark.parametrize(
    ("address", "text"),
    [(Address("127.0.0.1", 8081), "127.0.0.1:8081"), (Address("::1", 8081), "[::1]:8081")],
)
def test_address_str(address: Address, text: str) -> None:
    assert str(address) == text
    assert Address.parse(text) == address


def test_peer_settings_are_frozen_and_strict() -> None:
    alpha = parse(pair()).peer("alpha")
    with pytest.raises(ValueError, match="frozen"):
        alpha.heartbeat = 1.0
    with pytest.raises(ValueError, match="colour"):
        PeerSettings.model_validate({**alpha.model_dump(), "colour": "red"})
    assert PeerSettings.model_validate(alpha.model_dump()) == alpha
    with pytest.raises(TypeError):
        parse(pair()).peers["carol"] = alpha  # type: ignore[index]


def test_roster_error_lists_problems_and_pickles() -> None:
    error = RosterError(["a: one", "b: two"])
    assert str(error) == "a: one\nb: two"
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
