"""The roster: which peers exist, where they listen, which folders they use, whom they talk to.

`load_roster` reads the YAML file of the design brief's "Roster (YAML) — the contract"
(README: "The roster") and returns a `Roster`, or raises `RosterError` listing every
problem in the file at once, each as ``where: what is wrong`` (``alpha.heartbeat: ...``,
``roster.foo: unknown key``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ..errors import ConfigError
from ..wire.names import PEER_NAME, PEER_NAME_RULE
from .access import ANY, Caller, callback_patterns, callers, is_loopback, serves_map
from .units import describe, format_size, parse_duration, parse_size

__all__ = [
    "PEER_NAME",
    "Address",
    "PeerSettings",
    "Roster",
    "RosterError",
    "load_roster",
    "parse_roster",
]


KiB = 1024
MiB = 1024 * KiB
MIN_FRAGMENT_SIZE = 64 * KiB

_HOST = re.compile(r"[A-Za-z0-9._-]+")
_ADDRESS_HINT = "use host:port, e.g. 127.0.0.1:8081, or [::1]:8081 for IPv6"
_WILDCARDS = ("0.0.0.0", "::")


class RosterError(ConfigError):
    """A roster that cannot be used; `problems` lists each as ``where: what is wrong``."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True)
class Address:
    """A TCP address to listen on; an IPv6 `host` is stored without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """True for localhost and loopback addresses, which only this machine reaches."""
        return is_loopback(self.host)

    @property
    def wildcard(self) -> bool:
        """True for 0.0.0.0 and ::, which take the port on every address."""
        return self.host in _WILDCARDS

    def clashes(self, other: Address) -> bool:
        """True when both cannot be listened on at once: same port, same host or a wildcard."""
        same_host = self.host == other.host or self.wildcard or other.wildcard
        return self.port == other.port and same_host

    @classmethod
    def parse(cls, value: object) -> Address:
        """``"host:port"`` or ``"[v6]:port"`` with port 1..65535, else `ValueError`.

        Host names are lower-cased and IPv6 addresses compressed, so equal addresses compare
        equal. An `Address` is returned as it is.
        """
        if isinstance(value, Address):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{describe(value)} is not an address ({_ADDRESS_HINT})")
        text = value.strip()
        if text.startswith("["):
            host, bracket, port = text[1:].partition("]:")
            try:
                host = ipaddress.IPv6Address(host).compressed
            except ValueError:
                bracket = ""
        else:
            host, bracket, port = text.rpartition(":")
            if ":" in host:
                raise ValueError(
                    f"{describe(value)}: put an IPv6 address in brackets, e.g. [::1]:8081"
                )
            if not _HOST.fullmatch(host):
                bracket = ""
            host = host.lower()
        if not bracket:
            raise ValueError(f"{describe(value)} is not an address ({_ADDRESS_HINT})")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"{describe(value)} has no valid port (a port is 1 to 65535)")
        return cls(host, int(port))


def _resolve(value: object, base_dir: Path, example: str = "a folder, e.g. ./pipe") -> Path:
    """`value` as an absolute, normalised path: ``~`` expanded, relative taken from `base_dir`;
    `example` says what to write instead of a value that is no path."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{describe(value)} is not a path (write {example})")
    return Path(os.path.abspath(base_dir / Path(value).expanduser()))


def _context_path(value: object, info: ValidationInfo) -> Path:
    """`_resolve` against ``context["base_dir"]``, or the current folder without a context."""
    context = info.context if isinstance(info.context, dict) else {}
    return _resolve(value, Path(context.get("base_dir", Path.cwd())))


def _context_file(value: object, info: ValidationInfo) -> Path:
    """`_context_path` for a file (a PEM certificate or key)."""
    context = info.context if isinstance(info.context, dict) else {}
    base_dir = Path(context.get("base_dir", Path.cwd()))
    return _resolve(value, base_dir, "a file, e.g. ./tls/alpha.crt")


def _peer_name(value: object) -> str:
    if isinstance(value, str) and PEER_NAME.fullmatch(value):
        return value
    raise ValueError(f"not a valid peer name ({PEER_NAME_RULE})")


def _peer_names(value: object) -> tuple[str, ...]:
    """A list of distinct text names (whether they are peers is the roster's question)."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of peer names, e.g. [bravo]")
    twice = sorted({name for name in value if value.count(name) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} listed more than once")
    return tuple(value)


def _upstream(value: object) -> str | None:
    """None, or an http(s) URL with a host and no fragment."""
    if value is None:
        return None
    if isinstance(value, str) and not any(c.isspace() for c in value):
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            valid = False
        if valid and parts.fragment:
            raise ValueError(f"{describe(value)} has a #fragment, which never reaches a server")
        if valid:
            return value
    raise ValueError(f"{describe(value)} is not an http:// or https:// URL with a host")


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0, not {describe(value)}")
    return seconds


def _positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"must be more than 0, not {describe(value)}")
    return size


def _positive_count(value: object) -> int:
    """A whole number above 0 (YAML's bools are not numbers here)."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"must be a whole number more than 0, not {describe(value)}")
    return value


def _fragment_size(value: object) -> int:
    size = parse_size(value)
    if size < MIN_FRAGMENT_SIZE:
        raise ValueError(
            f"{describe(value)} is less than the minimum, {format_size(MIN_FRAGMENT_SIZE)}"
        )
    return size


def _flag(value: object) -> bool:
    """A real YAML bool; the text ``"true"`` is not one."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{describe(value)} is not true or false (write true or false, no quotes)")


def _file_mode(value: object) -> int:
    """A mode for pipe files: read and write for the owner, at most read for others;
    YAML's ``0640`` (an octal number) or the text ``"0640"``."""
    mode = value
    if isinstance(value, str) and re.fullmatch(r"0o?[0-7]{3}", value.strip()):
        mode = int(value.strip().replace("o", ""), 8)
    if type(mode) is not int or mode & ~0o644 or mode & 0o600 != 0o600:
        raise ValueError(
            f"{describe(value)} is not a file mode of 0600 to 0644 (the owner reads and "
            "writes, others may only read), e.g. 0640"
        )
    return mode


_DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _host_suffix(value: object) -> str:
    """A DNS name (``localhost``, ``mesh.example.org``) under which ``{peer}.{suffix}``
    names a peer (the host form)."""
    if isinstance(value, str) and _DNS_NAME.fullmatch(value.lower().strip(".")):
        return value.lower().strip(".")
    raise ValueError(f"{describe(value)} is not a DNS name such as localhost")


def _watch(value: object) -> str:
    if value in ("auto", "notify", "poll"):
        return str(value)
    raise ValueError(f"{describe(value)} is not one of auto, notify, poll")


PeerName = Annotated[str, BeforeValidator(_peer_name)]
ListenAddress = Annotated[
    Address, BeforeValidator(Address.parse), PlainSerializer(str, return_type=str)
]
Folder = Annotated[Path, BeforeValidator(_context_path)]
File = Annotated[Path, BeforeValidator(_context_file)]
PeerNames = Annotated[tuple[str, ...], BeforeValidator(_peer_names)]
UrlPatterns = Annotated[tuple[str, ...], BeforeValidator(callback_patterns)]
Callers = Annotated[Literal["any"] | Mapping[str, Caller] | None, BeforeValidator(callers)]
Serves = Annotated[Mapping[str, tuple[str, ...]] | None, BeforeValidator(serves_map)]
Upstream = Annotated[str | None, BeforeValidator(_upstream)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_duration)]
PositiveSize = Annotated[int, BeforeValidator(_positive_size)]
FragmentSize = Annotated[int, BeforeValidator(_fragment_size)]
PositiveCount = Annotated[int, BeforeValidator(_positive_count)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Watch = Annotated[Literal["auto", "notify", "poll"], BeforeValidator(_watch)]
FileMode = Annotated[int, BeforeValidator(_file_mode)]
HostSuffix = Annotated[str, BeforeValidator(_host_suffix)]


class TLSFiles(BaseModel):
    """The ingress's certificate and key (PEM), and the CA that must have signed its
    callers' certificates (mTLS), if any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: File
    key: File
    client_ca: File | None = None


class PeerSettings(BaseModel):
    """One peer's validated settings: absolute paths, seconds, bytes.

    Relative `outbox`/`inbox` are taken from ``context={"base_dir": ...}`` given to
    `model_validate` (the current folder without one). `talks_to` names are not checked
    against a roster here; `parse_roster` does that.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: PeerName
    listen: ListenAddress
    outbox: Folder
    inbox: Folder
    talks_to: PeerNames = ()
    callbacks: UrlPatterns = ()
    upstream: Upstream = None
    heartbeat: PositiveDuration = 5.0
    resend_after: PositiveDuration = 10.0
    settle: PositiveDuration = 2.0
    fragment_size: FragmentSize = 256 * MiB
    collate_below: PositiveSize = 64 * KiB
    linger: Duration = 0.005
    encrypt: Flag = False
    watch: Watch = "auto"
    poll_interval: PositiveDuration = 1.0
    body_limit: PositiveSize = 64 * MiB
    request_deadline: PositiveDuration = 3600.0  # to be forwarded; callbacks retried as long
    upstream_timeout: PositiveDuration = 60.0  # silence from the upstream before giving up
    upstream_concurrency: PositiveCount = 64  # requests with the upstream at once
    quarantine_limit: PositiveSize = 1 << 30  # bytes the quarantine folder holds at most
    # How long finished requests, executions, stored responses and unconsumed messages
    # are kept before the sweep removes them
    retention: PositiveDuration = 7 * 86400.0
    file_mode: FileMode = 0o600  # of the files this peer writes in the pipe
    # Who may use the ingress: None (loopback only) and "any" leave it open to all.
    callers: Callers = None
    serves: Serves = None  # per remote peer, what its requests may ask of the upstream
    tls: TLSFiles | None = None
    host_suffix: HostSuffix = "localhost"  # Host: {peer}.{host_suffix} addresses {peer}
    preserve_host: Flag = False  # the upstream gets the caller's Host, not its own

    @field_validator("serves")
    @classmethod
    def _served_peers_are_talked_to(
        cls, value: Mapping[str, tuple[str, ...]] | None, info: ValidationInfo
    ) -> Mapping[str, tuple[str, ...]] | None:
        if "talks_to" not in info.data:  # itself wrong, and reported
            return value
        strangers = sorted(set(value or ()) - set(info.data["talks_to"]))
        if strangers:
            raise ValueError(f"{', '.join(strangers)} not in talks_to")
        return value

    @field_validator("talks_to")
    @classmethod
    def _not_itself(cls, talks_to: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        name = info.data.get("name")
        if name in talks_to:
            raise ValueError(f"{name} is this peer itself; list only the others")
        return talks_to

    @field_validator("collate_below")
    @classmethod
    def _within_fragment(cls, collate_below: int, info: ValidationInfo) -> int:
        fragment_size = info.data.get("fragment_size")
        if fragment_size is not None and collate_below > fragment_size:
            too_big, limit = format_size(collate_below), format_size(fragment_size)
            raise ValueError(f"{too_big} is more than fragment_size {limit}")
        return collate_below


@dataclass(frozen=True)
class Roster:
    """A valid roster: absolute paths, and the peers in file order."""

    path: Path
    keys: Path
    state: Path
    peers: Mapping[str, PeerSettings]

    def peer(self, name: str) -> PeerSettings:
        """The settings of peer `name`; `KeyError` naming the known peers if there is none."""
        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(self.peers)
            raise KeyError(f"no peer named {name!r} in this roster (peers: {known})") from None

    def state_dir(self, name: str) -> Path:
        """The durable state folder of peer `name` (``state/name``); `KeyError` if unknown."""
        return self.state / self.peer(name).name


# --- YAML -------------------------------------------------------------------------------------

_Path = tuple[str, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that notes each duplicated mapping key in `duplicates` (path, first line,
    repeated line) instead of silently keeping the last value; the roster refuses them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[_Path, int, int]] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self._note_duplicates(node, (), set())
        return super().construct_document(node)

    def _note_duplicates(self, node: yaml.Node, path: _Path, seen: set[int]) -> None:
        if id(node) in seen:  # an alias met again
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._note_duplicates(item, (*path, str(index)), seen)
        if not isinstance(node, yaml.MappingNode):
            return
        first_line: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            where = path
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                where = (*path, str(key.value))
                line = key.start_mark.line + 1
                first = first_line.get((key.tag, key.value))
                if first is None:
                    first_line[key.tag, key.value] = line
                else:
                    self.duplicates.append((where, first, line))
            self._note_duplicates(value, where, seen)


def _load_yaml(text: str, source: str) -> tuple[object, list[tuple[_Path, int, int]]]:
    """The document and its duplicate keys; `RosterError` on a syntax error (nothing else can
    be known then)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "unreadable"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RosterError([f"{source}: not valid YAML{where}: {what}"]) from error
    except yaml.YAMLError as error:
        raise RosterError([f"{source}: not valid YAML: {error}"]) from error
    finally:
        loader.dispose()


def _where(path: _Path, source: str) -> str:
    """How a YAML path is named in problems: ``roster.peers``, ``peers.alpha``, ``alpha.linger``."""
    if len(path) == 1:
        return f"{source}.{path[0]}"
    if path[0] == "peers" and len(path) > 2:
        return ".".join(path[1:])
    return ".".join(path)


# --- checks -----------------------------------------------------------------------------------

_TOP_KEYS = ("defaults", "keys", "state", "peers")
_PER_PEER_ONLY = ("name", "listen")
_STAND_IN = {"name": "", "listen": "127.0.0.1:1", "outbox": "/", "inbox": "/"}


def _explain(error: ValidationError) -> list[tuple[str, str]]:
    """(setting, plain words) for each pydantic error."""
    found = []
    for detail in error.errors():
        kind = detail["type"]
        loc = (detail["input"],) if kind == "invalid_key" else detail["loc"]  # loc is a repr
        where = ".".join(str(part) for part in loc)
        if kind == "missing":
            what = "missing"
        elif kind in ("extra_forbidden", "invalid_key"):
            what = "unknown setting"
        elif kind == "value_error":
            what = str(detail.get("ctx", {}).get("error", detail["msg"]))
        else:
            what = detail["msg"][:1].lower() + detail["msg"][1:]
        found.append((where, what))
    return found


def _validate(settings: dict[Any, Any], context: dict[str, Any]) -> PeerSettings:
    """`settings` validated with `context` (``base_dir`` for relative paths)."""
    return PeerSettings.model_validate(settings, context=context)


def _check_defaults(
    raw: object, context: dict[str, Any], source: str, problems: list[str]
) -> dict[Any, Any]:
    """The valid defaults; each bad one is reported once as ``defaults.KEY`` and dropped.

    They are validated as the settings of a stand-in peer, so every rule (collate_below
    within fragment_size too) applies exactly as it will to real peers.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{source}.defaults: must be a mapping of settings")
        return {}
    bad = {key for key in _PER_PEER_ONLY if key in raw}
    problems.extend(f"defaults.{key}: must be set for each peer, not in defaults" for key in bad)
    settings = {key: value for key, value in raw.items() if key not in bad}
    try:
        _validate({**_STAND_IN, **settings}, context)
    except ValidationError as error:
        keys = {str(key) for key in settings}
        for where, what in _explain(error):
            if where.split(".")[0] in keys:
                bad.add(where.split(".")[0])
                problems.append(f"defaults.{where}: {what}")
    return {key: value for key, value in settings.items() if str(key) not in bad}


def _check_peer(
    name: object,
    raw: object,
    defaults: dict[Any, Any],
    context: dict[str, Any],
    problems: list[str],
) -> PeerSettings | None:
    """One peer's settings over the defaults, or None after reporting what is wrong."""
    label = str(name)
    good_name = isinstance(name, str) and PEER_NAME.fullmatch(name) is not None
    if not good_name:
        problems.append(f"peers.{label}: not a valid peer name ({PEER_NAME_RULE})")
    if not isinstance(raw, dict):
        problems.append(f"{label}: must be a mapping of settings")
        return None
    if "name" in raw:
        problems.append(f"{label}.name: not a setting (a peer's name is its key under peers)")
    settings = {**defaults, **raw, "name": label}
    try:
        peer = _validate(settings, context)
    except ValidationError as error:
        problems.extend(
            f"{label}.{where}: {what}" for where, what in _explain(error) if where != "name"
        )
        return None
    return peer


_T = TypeVar("_T")


@dataclass(frozen=True)
class _Ends:
    """What the rules between peers need of one peer; None where that setting is itself wrong
    (already reported), so a peer with other problems still takes part in these rules."""

    name: str
    listen: Address | None
    talks_to: tuple[str, ...] | None
    encrypt: bool | None

    @classmethod
    def of(cls, name: str, settings: Mapping[Any, Any]) -> _Ends:
        return cls(
            name,
            _or_none(Address.parse, settings.get("listen")),
            _or_none(_peer_names, settings.get("talks_to", ())),
            _or_none(_flag, settings.get("encrypt", False)),
        )


def _or_none(parse: Callable[[object], _T], value: object) -> _T | None:
    try:
        return parse(value)
    except ValueError:
        return None


def _check_talks_to(ends: Mapping[str, _Ends], declared: set[str]) -> list[str]:
    """Names that are no peer, and links declared at one end only (reported once, at the
    end that is silent)."""
    problems = []
    for name, end in ends.items():
        for other in end.talks_to or ():
            listed = ends[other].talks_to if other in ends else None
            if other not in declared:
                problems.append(f"{name}.talks_to: {other} is not a peer in this roster")
            elif listed is not None and name not in listed:
                problems.append(
                    f"{other}.talks_to: {name} talks to {other}, but {other} does not list {name}"
                )
    return problems


def _check_encrypt(ends: Mapping[str, _Ends]) -> list[str]:
    """Links whose ends disagree on encrypt, once per pair."""
    problems = []
    reported: set[frozenset[str]] = set()
    for name, end in ends.items():
        for other in end.talks_to or ():
            theirs = ends[other].encrypt if other in ends else None
            pair = frozenset((name, other))
            if None not in (end.encrypt, theirs) and end.encrypt != theirs and pair not in reported:
                reported.add(pair)
                problems.append(
                    f"{name}.encrypt: {describe(end.encrypt)}, but {other} (which {name} talks "
                    f"to) has encrypt: {describe(theirs)}; a link is encrypted at both ends or "
                    "not at all"
                )
    return problems


def _check_listen(ends: Mapping[str, _Ends]) -> list[str]:
    """Peers that cannot listen where an earlier one does (same address, or a wildcard host
    on the same port)."""
    problems = []
    taken: list[tuple[str, Address]] = []
    for name, end in ends.items():
        if end.listen is None:
            continue
        mine = end.listen
        owner, theirs = next(((o, a) for o, a in taken if a.clashes(mine)), ("", None))
        if theirs == mine:
            problems.append(f"{name}.listen: {mine} is already {owner}'s")
        elif theirs is not None:
            problems.append(
                f"{name}.listen: {mine} overlaps {owner}'s {theirs} "
                "(0.0.0.0 and :: take the port on every address)"
            )
        taken.append((name, mine))
    return problems


def _check_peers(
    doc: dict[Any, Any],
    defaults: dict[Any, Any],
    context: dict[str, Any],
    source: str,
    problems: list[str],
) -> dict[str, PeerSettings]:
    """The valid peers in file order, after each peer's own rules and the rules between them."""
    raw = doc.get("peers")
    if "peers" not in doc:
        problems.append(f"{source}.peers: missing")
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{source}.peers: must be a mapping of peer names to their settings")
        return {}
    peers: dict[str, PeerSettings] = {}
    ends: dict[str, _Ends] = {}
    for name, settings in raw.items():
        peer = _check_peer(name, settings, defaults, context, problems)
        if peer is not None:
            peers[peer.name] = peer
        if isinstance(name, str) and PEER_NAME.fullmatch(name) and isinstance(settings, dict):
            ends[name] = _Ends.of(name, {**defaults, **settings})
    problems.extend(_check_talks_to(ends, {str(name) for name in raw}))
    problems.extend(_check_encrypt(ends))
    problems.extend(_check_listen(ends))
    return peers


def _top_path(
    doc: dict[Any, Any], key: str, base_dir: Path, source: str, problems: list[str]
) -> Path:
    try:
        return _resolve(doc.get(key, f"./{key}"), base_dir)
    except ValueError as error:
        problems.append(f"{source}.{key}: {error}")
        return base_dir / key


def parse_roster(text: str, base_dir: Path, source: str = "roster") -> Roster:
    """The roster in YAML `text`, relative paths taken from `base_dir`.

    `source` names the text in problems about the whole document (``roster: not valid YAML
    at line 4, column 3: ...``, ``roster.foo: unknown key``); `Roster.path` is `base_dir` /
    `source`. Every problem found is raised together in one `RosterError`.
    """
    base_dir = Path(os.path.abspath(Path(base_dir).expanduser()))
    doc, duplicates = _load_yaml(text, source)
    problems = [
        f"{_where(path, source)}: defined twice (lines {first} and {line})"
        for path, first, line in duplicates
    ]
    if doc is None:
        raise RosterError([*problems, f"{source}: empty (expected a mapping with peers)"])
    if not isinstance(doc, dict):
        raise RosterError(
            [*problems, f"{source}: must be a mapping with peers, not {describe(doc)}"]
        )
    problems.extend(f"{source}.{key}: unknown key" for key in doc if key not in _TOP_KEYS)
    keys = _top_path(doc, "keys", base_dir, source, problems)
    state = _top_path(doc, "state", base_dir, source, problems)
    context = {"base_dir": base_dir}
    defaults = _check_defaults(doc.get("defaults"), context, source, problems)
    peers = _check_peers(doc, defaults, context, source, problems)
    if problems:
        raise RosterError(problems)
    path = Path(os.path.abspath(base_dir / source))
    return Roster(path=path, keys=keys, state=state, peers=MappingProxyType(peers))


def load_roster(path: str | Path) -> Roster:
    """The roster in file `path`; a missing, unreadable or non-UTF-8 file is a `RosterError`."""
    file = Path(os.path.abspath(Path(path).expanduser()))
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise RosterError([f"roster: cannot read {file}: {error.strerror or error}"]) from error
    except UnicodeDecodeError as error:
        raise RosterError([f"roster: {file} is not UTF-8 text ({error.reason})"]) from error
    return replace(parse_roster(text, file.parent), path=file)


def open_to_strangers(roster: Roster, names: Iterable[str]) -> list[str]:
    """A problem line for each of the peers `names` that listens where other machines
    reach it, without callers: `mesh up` refuses to start such a peer (other commands,
    `mesh token` first, take the roster as it is)."""
    problems = []
    for name in names:
        settings = roster.peer(name)
        if settings.callers is None and not settings.listen.loopback:
            problems.append(
                f"{name}.callers: missing: {name} listens on {settings.listen}, which other "
                f"machines can reach, so it needs callers (mesh token ROSTER {name} NAME "
                f"prints the lines to add), or write callers: {ANY} to leave it open to "
                "everyone on purpose"
            )
    return problems
