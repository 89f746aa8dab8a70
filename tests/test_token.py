"""`mesh token ROSTER PEER NAME`, run as the real command: a fresh token printed once, the
roster lines that make NAME a caller of PEER, and a one-line refusal for what cannot be."""

from __future__ import annotations

import hashlib
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.config.roster import load_roster
from mesh.wire.names import PEER_NAME_RULE
from tests.helpers.processes import peer, run_mesh, write_roster

TOKEN_LINE = re.compile(r"token: ([A-Za-z0-9_-]{43})")  # secrets.token_urlsafe(32)
DIGEST_LINE = re.compile(r"\s+token_sha256: ([0-9a-f]{64})")
PASTE_INDENT = " " * 6  # the caller's name, as under `callers:` in the design's roster


def pair(**alpha: Any) -> dict[str, dict[str, object]]:
    """alpha and bravo talking to each other, with `alpha`'s extra settings (its ports
    are never listened on)."""
    return {"alpha": peer(8081, ["bravo"], **alpha), "bravo": peer(8082, ["alpha"])}


@pytest.fixture
def roster(tmp_path: Path) -> Path:
    return write_roster(tmp_path, pair())


def token(roster: Path, peer: str = "alpha", name: str = "billing") -> str:
    """The output of a `mesh token` that must succeed, saying nothing on stderr."""
    result = run_mesh("token", str(roster), peer, name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def refused(roster: Path, peer: str, name: str) -> list[str]:
    """The stderr lines of a `mesh token` that must be refused: exit 2, nothing on stdout."""
    result = run_mesh("token", str(roster), peer, name)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()


def printed_token(output: str) -> str:
    first = output.splitlines()[0]
    found = TOKEN_LINE.fullmatch(first)
    assert found, first
    return found[1]


def pasted(output: str) -> dict[str, Any]:
    """The lines to paste under `callers:`, read as YAML: {name: settings}."""
    lines = [line for line in output.splitlines() if line.startswith(PASTE_INDENT)]
    loaded = yaml.safe_load(textwrap.dedent("\n".join(lines)))
    assert isinstance(loaded, dict)
    return loaded


def add_callers(roster: Path, peer: str, callers: dict[str, Any]) -> None:
    """Paste `callers` under `peer`'s ``callers:`` in the roster file, as an operator would."""
    doc = yaml.safe_load(roster.read_text())
    settings = doc["peers"][peer]
    if not isinstance(settings.get("callers"), dict):
        settings["callers"] = {}
    settings["callers"].update(callers)
    roster.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- what it prints ---------------------------------------------------------------------------


def test_token_is_the_first_line_and_its_sha256_the_roster_line(roster: Path) -> None:
    output = token(roster)
    secret = printed_token(output)
    digests = [found[1] for line in output.splitlines() if (found := DIGEST_LINE.fullmatch(line))]
    assert digests == [hashlib.sha256(secret.encode()).hexdigest()]
    assert output.count(secret) == 1  # shown once: the usage says TOKEN, not the token


def test_two_runs_give_different_tokens(roster: Path) -> None:
    first, second = printed_token(token(roster)), printed_token(token(roster))
    assert first != second


def test_the_token_is_written_nowhere(roster: Path) -> None:
    before = {path: path.read_bytes() for path in roster.parent.rglob("*") if path.is_file()}
    token(roster)
    after = {path: path.read_bytes() for path in roster.parent.rglob("*") if path.is_file()}
    assert after == before  # no key, state or roster written, nothing changed


def test_pasted_lines_make_a_caller_with_that_digest(roster: Path) -> None:
    output = token(roster)
    lines = pasted(output)
    assert list(lines) == ["billing"]
    add_callers(roster, "alpha", lines)
    caller = load_roster(roster).peer("alpha").callers["billing"]  # type: ignore[index]
    assert caller.token_sha256 == hashlib.sha256(printed_token(output).encode()).hexdigest()
    assert caller.may_call == ("*",)
    assert caller.admin is False


def test_the_admin_line_is_a_comment_that_opens_mesh_routes(roster: Path) -> None:
    output = token(roster, name="ops")
    [admin] = [line for line in output.splitlines() if line.startswith(PASTE_INDENT + "  # admin")]
    assert admin.lstrip().startswith("# admin: true")
    assert "mesh's own routes" in admin
    add_callers(roster, "alpha", pasted(output.replace("# admin: true", "admin: true")))
    assert load_roster(roster).peer("alpha").callers["ops"].admin is True  # type: ignore[index]


def test_how_to_call_names_the_listen_address_and_a_peer_talked_to(roster: Path) -> None:
    output = token(roster, name="billing")
    assert "curl -x http://billing:TOKEN@127.0.0.1:8081 http://bravo/path" in output
    assert "http_proxy=http://billing:TOKEN@127.0.0.1:8081" in output
    assert "Add callers: under alpha in" in output  # it has none yet


def test_a_second_caller_is_pasted_under_the_existing_callers(roster: Path) -> None:
    add_callers(roster, "alpha", pasted(token(roster, name="billing")))
    output = token(roster, name="ops")
    assert "Paste these lines under callers: of alpha in" in output
    add_callers(roster, "alpha", pasted(output))
    assert list(load_roster(roster).peer("alpha").callers or ()) == ["billing", "ops"]


def test_a_peer_open_to_any_is_told_what_replacing_any_means(tmp_path: Path) -> None:
    roster = write_roster(tmp_path, pair(callers="any"))
    assert "Replace callers: any of alpha in" in token(roster)


def test_a_peer_beyond_loopback_without_callers_gets_its_lines(tmp_path: Path) -> None:
    """The refusal of `mesh up` sends the operator here: this roster is not refused."""
    roster = write_roster(tmp_path, pair(listen="0.0.0.0:8081"))
    strict = run_mesh("up", str(roster))
    assert strict.returncode == 2 and "mesh token ROSTER alpha NAME" in strict.stderr
    assert run_mesh("keygen", str(roster)).returncode == 0  # only starting it is refused
    output = token(roster)
    assert "curl -x http://billing:TOKEN@HOST:8081 http://bravo/path" in output
    assert "alpha listens on 0.0.0.0:8081" in output
    add_callers(roster, "alpha", pasted(output))
    assert set(load_roster(roster).peer("alpha").callers or ()) == {"billing"}


def test_ipv6_and_tls_in_the_proxy_url(tmp_path: Path) -> None:
    roster = write_roster(
        tmp_path, pair(listen="[::1]:8443", tls={"cert": "a.crt", "key": "a.key"})
    )
    assert "curl -x https://billing:TOKEN@[::1]:8443 http://bravo/path" in token(roster)


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_peer_lists_the_peers(roster: Path) -> None:
    assert refused(roster, "carol", "billing") == [
        "mesh: no peer named 'carol' in this roster (peers: alpha, bravo)"
    ]


@pytest.mark.parametrize("name", ["Billing", "bill_ing", "a" * 64, "", "b.c"])
def test_invalid_caller_name(roster: Path, name: str) -> None:
    assert refused(roster, "alpha", name) == [
        f"mesh: {name!r} is not a valid caller name ({PEER_NAME_RULE})"
    ]


def test_a_name_like_an_option_is_refused_after_double_dash(roster: Path) -> None:
    result = run_mesh("token", str(roster), "alpha", "--", "-billing")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"mesh: '-billing' is not a valid caller name ({PEER_NAME_RULE})\n"


def test_existing_caller_is_refused_and_rotation_explained(roster: Path) -> None:
    add_callers(roster, "alpha", pasted(token(roster)))
    before = roster.read_text()
    [line] = refused(roster, "alpha", "billing")
    assert line.startswith(f"mesh: billing already is a caller of alpha in {roster}; ")
    assert "to rotate its token, replace its lines there by hand" in line
    assert roster.read_text() == before
    token(roster, "bravo", "billing")  # a caller of alpha only: bravo may have one too


def test_invalid_roster_lists_its_problems(tmp_path: Path) -> None:
    roster = write_roster(tmp_path, pair(heartbeat="5 parsecs", colour="blue"))
    assert refused(roster, "alpha", "billing") == [
        f"mesh: {roster} has 2 problem(s):",
        '  alpha.heartbeat: "5 parsecs" is not a duration (use a number with ms, s, m or h, '
        "e.g. 5s)",
        "  alpha.colour: unknown setting",
    ]


def test_missing_roster(tmp_path: Path) -> None:
    assert refused(tmp_path / "nope.yaml", "alpha", "billing")[1:] == [
        f"  roster: cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    ]


def test_wrong_arguments_are_a_usage_error(roster: Path) -> None:
    result = run_mesh("token", str(roster), "alpha")
    assert result.returncode == 2
    assert "Missing argument 'NAME'" in result.stderr
