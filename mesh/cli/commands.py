"""The `mesh` command: `up`, `keygen`, `token`, `mirror`, `status`.

User errors (a wrong roster, missing keys, a peer already running) print what is wrong
and exit 2, never with a traceback. Ctrl-C exits 130 and SIGTERM 143, after a clean stop.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import secrets
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from ..config import keys as keyfiles
from ..config.access import ANY
from ..config.roster import (
    Address,
    PeerSettings,
    Roster,
    RosterError,
    load_roster,
    open_to_strangers,
)
from ..errors import ConfigError, leaves
from ..http.asgi import check_tls, serve_at
from ..http.echo import echo_app
from ..http.listening import connection_limit, raise_open_file_limit
from ..peer import Peer, open_peers, run_peers
from ..wire.names import PEER_NAME, PEER_NAME_RULE
from . import logs
from .mirror import DELAY, INTERVAL, PROBABILITY, SIZE, Faults, prepare_folders, run_until_signal
from .status import collect, console, follow, render

EXIT_CONFIG = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _load(path: str) -> Roster:
    try:
        return load_roster(path)
    except RosterError as exc:
        _problems(path, exc.problems)


def _problems(path: str, problems: list[str]) -> NoReturn:
    """List what is wrong with roster `path`, and exit 2."""
    click.echo(f"mesh: {path} has {len(problems)} problem(s):", err=True)
    for problem in problems:
        click.echo(f"  {problem}", err=True)
    raise SystemExit(EXIT_CONFIG)


def _refuse(message: str) -> NoReturn:
    """Say in one line why the command cannot do what was asked, and exit 2."""
    click.echo(f"mesh: {message}", err=True)
    raise SystemExit(EXIT_CONFIG)


def _fail(exc: ConfigError) -> NoReturn:
    click.echo("mesh: cannot start:", err=True)
    for line in str(exc).splitlines():
        click.echo(f"  {line}", err=True)
    raise SystemExit(EXIT_CONFIG)


@click.group()
@click.version_option(package_name="mesh")
def main() -> None:
    """HTTP API calls across a file-transfer pipe."""


@main.command()
@click.argument("roster", type=click.Path(dir_okay=False))
@click.option("--peer", "peers", multiple=True, help="Run only this peer (repeatable).")
@click.option(
    "--echo",
    metavar="HOST:PORT",
    default=None,
    help="Also serve a small echo service there, to call through the mesh.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object per line (time, level, peer, event, message, ids).",
)
def up(
    roster: str, peers: tuple[str, ...], echo: str | None, log_level: str, log_format: str
) -> None:
    """Run the peers of ROSTER (all, or those named with --peer) in this process."""
    logs.configure(log_level, log_format)
    loaded = _load(roster)
    problems = _start_problems(loaded, [n for n in peers or loaded.peers if n in loaded.peers])
    if problems:
        _problems(roster, problems)
    files = raise_open_file_limit()
    logging.getLogger("mesh").info(
        "mesh: %d open files allowed: up to %d connections at once, more wait in the"
        " kernel's queue",
        files,
        connection_limit(),
    )
    echo_at = _echo_address(echo)
    try:
        code = _up(loaded, list(peers), echo_at)
    except* KeyboardInterrupt:  # Ctrl-C before the signal handler was in place
        raise SystemExit(EXIT_SIGINT) from None
    raise SystemExit(code)


def _start_problems(roster: Roster, names: list[str]) -> list[str]:
    """What keeps peers `names` from starting, found before any state is made: a listen
    beyond loopback without callers, TLS files that cannot be loaded."""
    problems = open_to_strangers(roster, names)
    for name in names:
        tls = roster.peer(name).tls
        try:
            if tls is not None:
                check_tls(tls, f"{name}.tls")
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _echo_address(text: str | None) -> Address | None:
    if text is None:
        return None
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--echo") from None


def _up(roster: Roster, peers: list[str], echo: Address | None = None) -> int:
    try:
        opened = open_peers(roster, peers)
    except ConfigError as exc:
        _fail(exc)
    release_big_blocks()
    try:
        return trio.run(_serve, opened, echo)
    except* ConfigError as group:  # found while starting, e.g. a port already in use
        _fail(ConfigError("\n".join(str(e) for e in leaves(group))))


def release_big_blocks() -> None:
    """Have glibc's malloc hand blocks of 1 MiB or more straight back to the system when
    freed. By default it raises that threshold each time such a block is freed, after which
    the fragment-sized buffers a peer cycles through stay in its heap, and its resident
    memory stays at its peak. A no-op where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


async def _serve(opened: list[Peer], echo: Address | None = None) -> int:
    """Run until SIGINT or SIGTERM; the exit status that signal calls for."""
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_peers, opened)
            if echo is not None:
                app: Any = echo_app
                await serve_at(nursery, app, echo, "--echo")
                logging.getLogger("mesh").info("echo service on http://%s", echo)
            async for signum in signals:
                code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
                logging.getLogger("mesh").info("stopping (%s)", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return code


@main.command()
@click.argument("roster", type=click.Path(dir_okay=False))
def keygen(roster: str) -> None:
    """Create the missing key pairs of ROSTER's peers (never overwrites a key)."""
    loaded = _load(roster)
    try:
        results = keyfiles.keygen(loaded.keys, list(loaded.peers))
    except (ConfigError, OSError) as exc:
        click.echo(f"mesh: keygen failed: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    words = {
        "created": "created",
        "kept": "already there, kept",
        "public-written": "public key written from the existing private key",
        "public-only": "public key only (a peer run elsewhere), left as is",
    }
    for result in results:
        click.echo(f"{result.name}: {words[result.action]}")
    click.echo(f"keys in {Path(loaded.keys)}")


@main.command()
@click.argument("roster", type=click.Path(dir_okay=False))
@click.argument("peer")
@click.argument("name")
def token(roster: str, peer: str, name: str) -> None:
    """Print a fresh token for caller NAME of PEER, and the lines to add to ROSTER.

    The first line is "token: " and the token, shown this once and stored nowhere (the
    roster keeps only its sha256). The rest says what to paste under PEER's callers: and
    how a client uses the token.
    """
    loaded = _load(roster)
    try:
        settings = loaded.peer(peer)
    except KeyError as exc:
        _refuse(str(exc.args[0]))
    if not PEER_NAME.fullmatch(name):
        _refuse(f"{name!r} is not a valid caller name ({PEER_NAME_RULE})")
    if isinstance(settings.callers, Mapping) and name in settings.callers:
        _refuse(
            f"{name} already is a caller of {peer} in {roster}; to rotate its token, replace "
            f"its lines there by hand: delete them, run this again, paste the new ones"
        )
    fresh = secrets.token_urlsafe(32)
    digest = hashlib.sha256(fresh.encode()).hexdigest()
    click.echo(f"token: {fresh}")
    click.echo(f"(shown only now and stored nowhere: hand it to {name} over a safe channel)")
    click.echo("")
    click.echo(_where_to_paste(roster, settings))
    click.echo("")
    far = settings.talks_to[0] if settings.talks_to else "PEER"
    for line in caller_lines(name, digest, far):
        click.echo(f"      {line}")
    click.echo("")
    click.echo(_how_to_call(name, settings))


def caller_lines(name: str, digest: str, far: str) -> list[str]:
    """The roster lines of a caller with token sha256 `digest`, as YAML at one level
    under ``callers:`` (the first one names the caller, the others are indented by 2);
    `far` is the peer named in the example of a narrower `may_call`."""
    return [
        f"{name}:",
        f"  token_sha256: {digest}",
        f'  may_call: ["*"]   # every peer in talks_to, any method and path; or e.g. '
        f'["{far}/orders/*", "GET {far}/*"]',
        "  # admin: true     # opens mesh's own routes (/mesh/status, /mesh/events, ...)",
    ]


def _where_to_paste(roster: str, settings: PeerSettings) -> str:
    peer = settings.name
    if settings.callers is None:
        return f"Add callers: under {peer} in {roster}, and these lines under it:"
    if settings.callers == ANY:
        return (
            f"Replace callers: {ANY} of {peer} in {roster} with callers: and these lines "
            f"under it (then only callers listed there may use {peer}):"
        )
    return f"Paste these lines under callers: of {peer} in {roster}:"


def _how_to_call(name: str, settings: PeerSettings) -> str:
    """How a client sends the token through `settings`' ingress, TOKEN standing for it."""
    address = settings.listen
    host = "HOST" if address.wildcard else str(address).rpartition(":")[0]
    scheme = "https" if settings.tls is not None else "http"
    proxy = f"{scheme}://{name}:TOKEN@{host}:{address.port}"
    far = settings.talks_to[0] if settings.talks_to else "PEER"
    extra = ""
    if settings.tls is not None and settings.tls.client_ca is not None:
        extra = f" --proxy-cert {name}.crt --proxy-key {name}.key"
    lines = [
        f"{name} calls through {settings.name} with the token in place of TOKEN, e.g.:",
        f"  curl -x {proxy}{extra} http://{far}/path",
        f"  http_proxy={proxy} (lowercase: curl reads no other; or the header"
        " Proxy-Authorization: Bearer TOKEN)",
        f"  with admin: true, also curl -H 'Authorization: Bearer TOKEN' "
        f"{scheme}://{host}:{address.port}/mesh/status",
    ]
    if address.wildcard:
        lines.append(f"  (HOST: this machine's address; {settings.name} listens on {address})")
    return "\n".join(lines)


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(file_okay=False, path_type=Path))
@click.option("--once", is_flag=True, help="Take what is in SRC now, deliver it all, and exit.")
@click.option(
    "--interval", type=INTERVAL, default="50ms", show_default=True, help="How often to scan SRC."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault decisions.")
@click.option(
    "--truncate", type=PROBABILITY, default="0", metavar="P", help="Deliver only a random prefix."
)
@click.option(
    "--truncate-above",
    type=(SIZE, PROBABILITY),
    metavar="SIZE P",
    help="Deliver only a random prefix of files of SIZE or more (e.g. 64MiB 0.9).",
)
@click.option(
    "--corrupt", type=PROBABILITY, default="0", metavar="P", help="Flip 1 to 4 random bytes."
)
@click.option(
    "--drop", type=PROBABILITY, default="0", metavar="P", help="Delete without delivering."
)
@click.option(
    "--duplicate", type=PROBABILITY, default="0", metavar="P", help="Deliver again, later."
)
@click.option("--reorder", is_flag=True, help="Deliver each pass's files in random order.")
@click.option(
    "--delay",
    type=DELAY,
    metavar="MIN..MAX",
    help="Hold each file a random time in this range, e.g. 50ms..2s.",
)
@click.option("--slow-write", is_flag=True, help="Write in place, piece by piece, with pauses.")
def mirror(
    src: Path,
    dst: Path,
    once: bool,
    interval: float,
    seed: int,
    truncate: float,
    truncate_above: tuple[int, float] | None,
    corrupt: float,
    drop: float,
    duplicate: float,
    reorder: bool,
    delay: tuple[float, float] | None,
    slow_write: bool,
) -> None:
    """Move files from SRC to DST as a mirroring service would, with faults if asked.

    Each P is a probability per file, from 0 to 1; a run is repeatable with --seed. Prints a
    line per fault injected and a summary at exit. Ctrl-C exits 130, SIGTERM 143, after
    delivering every file held by --delay at once.
    """
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)-7s %(message)s", stream=sys.stderr
    )
    faults = Faults(
        truncate=truncate,
        truncate_above=truncate_above,
        corrupt=corrupt,
        drop=drop,
        duplicate=duplicate,
        reorder=reorder,
        delay=delay,
        slow_write=slow_write,
        seed=seed,
    )
    try:
        prepare_folders(src, dst)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        stopped_by = trio.run(run_until_signal, src, dst, faults, interval, once, click.echo)
    except* KeyboardInterrupt:  # Ctrl-C before the signal handler was in place
        raise SystemExit(EXIT_SIGINT) from None
    codes = {None: 0, signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
    raise SystemExit(codes[stopped_by])


@main.command()
@click.argument("roster", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Show it again every second, until Ctrl-C.")
def status(roster: str, as_json: bool, watch: bool) -> None:
    """Show each peer of ROSTER: alive, epoch, links, files waiting, quarantined.

    Read from the peers' stores and folders, so it works whether they run or not.
    """
    loaded = _load(roster)
    try:
        if watch:
            follow(loaded, as_json=as_json)
        elif as_json:
            click.echo(json.dumps(collect(loaded), indent=2))
        else:
            console().print(render(collect(loaded)))
    except KeyboardInterrupt:
        raise SystemExit(EXIT_SIGINT) from None
