"""`mesh status`: what each peer of a roster is doing, seen from outside the peers.

A running peer saves a snapshot of itself every second in its database (`Database.save_status`),
and one with ``"running": false`` when it stops cleanly. This module reads those snapshots
read-only, without ever taking the peer's lock (that could make the peer's own start fail),
checks the pid in the lock file to tell a crashed peer from a running one, and counts the
files waiting in the peer's folders and in its quarantine. A peer that never ran, stopped,
crashed, hangs, or whose store cannot be read is reported as such, never as a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..config.roster import Roster
from ..config.units import format_duration, format_size
from ..pipe import folder
from ..pipe.quarantine import Quarantine
from ..wire.names import parse_name

__all__ = ["PeerStatus", "collect", "console", "follow", "peer_status", "render"]

ALIVE_HEARTBEATS = 3  # a snapshot younger than this many heartbeats, plus the grace, is alive
ALIVE_GRACE = 2.0  # seconds
BUSY_TIMEOUT = 0.25  # seconds to wait for a peer that is writing its store
_AGED = ("last_ack_age", "heard_age")  # link ages measured when the snapshot was taken
_SNAPSHOT_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


@dataclass(frozen=True)
class PeerStatus:
    """One peer as `mesh status` shows it; a count is None when its folder is unreadable.

    `state` is one of: ``never started`` (no store), ``starting`` (a store, no snapshot yet,
    the lock's process alive), ``alive``, ``not responding`` (running, but the snapshot is
    older than `ALIVE_HEARTBEATS` heartbeats plus `ALIVE_GRACE`), ``crashed`` (the snapshot
    says running but the process is gone), ``stopped``, or ``unreadable: <reason>`` (the
    store or lock file cannot be read, or the snapshot is malformed).
    """

    state: str
    running: bool = False
    alive: bool = False
    pid: int | None = None
    epoch: str | None = None
    snapshot_age: float | None = None
    heartbeat: float | None = None
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    files_waiting: int | None = 0
    files_unread_by_others: int | None = 0
    quarantined: int | None = 0
    events_dropped: int | None = None
    requests: dict[str, int] = field(default_factory=dict)  # in flight, by state
    pipe_error: str | None = None
    transfers: list[dict[str, Any]] = field(default_factory=list)  # bodies in fragments


def collect(roster: Roster, now: float | None = None) -> dict[str, Any]:
    """``{"roster", "at", "peers": {name: PeerStatus as a dict}}``, peers in roster order.

    `now` is wall-clock time (`time.time()` when None), as in the peers' snapshots.
    """
    now = time.time() if now is None else now
    peers = {name: asdict(peer_status(roster, name, now)) for name in roster.peers}
    return {"roster": str(roster.path), "at": now, "peers": peers}


def peer_status(roster: Roster, name: str, now: float) -> PeerStatus:
    """The status of peer `name`: its store's snapshot and the counts of its folders."""
    settings = roster.peer(name)
    state_dir = roster.state_dir(name)
    found = _from_store(state_dir, settings.heartbeat, now)
    return replace(
        found,
        files_waiting=_count(lambda: len(folder.addressed_to(settings.inbox, name))),
        files_unread_by_others=_count(lambda: _written_by(settings.outbox, name)),
        quarantined=_count(Quarantine(state_dir / "quarantine").count),
    )


# -- the store -----------------------------------------------------------------------------


def _from_store(state_dir: Path, heartbeat: float, now: float) -> PeerStatus:
    db = state_dir / "state.sqlite"
    try:
        if not db.exists():
            return PeerStatus("never started")
        epoch, snapshot = _read(db)
        pid = _lock_pid(state_dir / "peer.lock")
    except (OSError, sqlite3.Error) as exc:
        return PeerStatus(f"unreadable: {exc}")
    try:
        return _from_snapshot(snapshot, epoch, pid, heartbeat, now)
    except _SNAPSHOT_ERRORS as exc:
        return PeerStatus(f"unreadable: bad status snapshot ({exc!r})", pid=pid, epoch=epoch)


def _read(db: Path) -> tuple[str | None, str | None]:
    """The epoch and the status snapshot (JSON text) in table `meta`; None where missing."""
    with contextlib.closing(sqlite3.connect(_uri(db), uri=True, timeout=BUSY_TIMEOUT)) as conn:
        rows = conn.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'status')")
        found = {str(key): str(value) for key, value in rows}
    return found.get("epoch"), found.get("status")


def _uri(db: Path) -> str:
    """A read-only URI for `db` that creates no file.

    While a peer runs (or after it crashed) the ``-wal`` and ``-shm`` files are there and
    are read with SQLite's locking. Without them a read-only open would create both and
    leave them behind (owned by whoever ran `mesh status`), so the database is then opened
    immutable: a peer that closed its store checkpointed everything into the main file.
    (A peer starting in between is read as of its last checkpoint: a moment old.)
    """
    wal, shm = (db.with_name(db.name + suffix) for suffix in ("-wal", "-shm"))
    mode = "ro" if wal.exists() and shm.exists() else "ro&immutable=1"
    return f"{db.as_uri()}?mode={mode}"


def _lock_pid(lock: Path) -> int | None:
    """The pid written in the lock file; None if there is none. The lock is never taken."""
    try:
        text = lock.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def _live(pid: int | None) -> bool:
    """True when process `pid` exists (owned by another user counts); never signals it."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _from_snapshot(
    text: str | None, epoch: str | None, pid: int | None, heartbeat: float, now: float
) -> PeerStatus:
    """The status a snapshot tells, aged to `now`; running needs the lock's pid alive too
    (and equal to the snapshot's), so a peer killed with -9 shows as crashed."""
    if text is None:
        return PeerStatus("starting" if _live(pid) else "stopped", pid=pid, epoch=epoch)
    snapshot = json.loads(text)
    age = max(0.0, now - float(snapshot["at"]))  # a clock set back never makes it younger
    beat = float(snapshot.get("heartbeat") or heartbeat)
    said_running = snapshot["running"] is True
    running = said_running and _live(pid) and snapshot.get("pid") in (None, pid)
    alive = running and age < ALIVE_HEARTBEATS * beat + ALIVE_GRACE
    return PeerStatus(
        state=_state(said_running, running, alive),
        running=running,
        alive=alive,
        pid=pid,
        epoch=epoch or snapshot.get("epoch"),
        snapshot_age=age,
        heartbeat=beat,
        links={str(remote): _aged(link, age) for remote, link in snapshot["links"].items()},
        events_dropped=snapshot.get("events_dropped"),
        requests=dict(snapshot.get("requests") or {}),
        pipe_error=snapshot.get("pipe_error"),
        transfers=list(snapshot.get("transfers") or []),
    )


def _state(said_running: bool, running: bool, alive: bool) -> str:
    if alive:
        return "alive"
    if running:
        return "not responding"
    return "crashed" if said_running else "stopped"


def _aged(link: dict[str, Any], age: float) -> dict[str, Any]:
    """A copy of `link` whose ages (measured at snapshot time) are `age` seconds older."""
    if not isinstance(link, dict):
        raise TypeError(f"a link is {type(link).__name__}, not a mapping")
    aged = dict(link)
    for key in _AGED:
        if aged.get(key) is not None:
            aged[key] = float(aged[key]) + age
    return aged


# -- the folders ---------------------------------------------------------------------------


def _count(count: Callable[[], int]) -> int | None:
    """`count()`, or None when its folder cannot be read (a missing folder counts 0)."""
    try:
        return count()
    except OSError:
        return None


def _written_by(folder: Path, me: str) -> int:
    """Finished mesh files `me` wrote in `folder` that no reader has taken yet."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if (name := parse_name(n)) is not None and name.sender == me)


# -- showing it ----------------------------------------------------------------------------

_COLUMNS = (
    "peer",
    "state",
    "epoch",
    "age",
    "sent",
    "acked",
    "unacked",
    "resends",
    "last ack",
    "file size",
    "waiting",
    "unread",
    "quarantined",
    "in flight",
    "refused",
)
_AGE_STEPS = ((10.0, 0.1), (60.0, 1.0), (3600.0, 6.0), (36000.0, 360.0))
_PIPE_WIDTH = 160  # columns when stdout is no terminal: the table is about 120 wide
_STYLES = {"alive": "green", "not responding": "yellow", "crashed": "red", "starting": "cyan"}
_CAPTION = (
    "age: of the peer's snapshot, or since it last heard the remote (→); "
    "waiting: files for it in its inbox; unread: files it wrote, not yet taken; "
    "refused: the remote's requests its serves kept from the upstream; "
    "file size: the payload a file to the remote carries at most (learned from files cut)"
)


def render(report: dict[str, Any]) -> RenderableType:
    """The peers' table, then a progress bar per body crossing in fragments."""
    bars = _transfers(report)
    return _table(report) if bars is None else Group(_table(report), bars)


def _transfers(report: dict[str, Any]) -> Table | None:
    """A row per body crossing in fragments: who, which way, and a bar of how far."""
    rows = [(name, t) for name, peer in report["peers"].items() for t in peer["transfers"]]
    if not rows:
        return None
    table = Table(title="bodies crossing in fragments", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("peer", "way", "id", "progress", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for name, transfer in rows:
        arrow = "→" if transfer["direction"] == "sending" else "←"
        done, total = int(transfer["done"]), transfer["total"]
        if total is None:  # a body that streams: its size not known yet
            bar, amount = ProgressBar(total=None, width=30), f"{format_size(done)} so far"
        else:
            total = max(int(total), 1)
            bar = ProgressBar(total=total, completed=done, width=30)
            amount = f"{format_size(done)} / {format_size(total)} ({done / total:.0%})"
        table.add_row(name, f"{arrow} {transfer['peer']}", str(transfer["id"])[:8], bar, amount)
    return table


def _table(report: dict[str, Any]) -> Table:
    """A table of `collect`'s report: a row per peer, then a row per link (``→ remote``).

    On a link row, state, epoch and age are the remote's as this peer last heard it.
    It needs about 120 columns; on a narrower console headers and states wrap first.
    """
    table = Table(
        title=f"mesh status: {report['roster']}",
        caption=_CAPTION,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in _COLUMNS:
        numeric = column not in ("peer", "state", "epoch")
        table.add_column(
            column,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=column in ("peer", "epoch"),
        )
    for name, peer in report["peers"].items():
        table.add_row(*_peer_row(name, peer))
        for remote, link in peer["links"].items():
            table.add_row(*_link_row(remote, link, peer["alive"]))
    return table


def _peer_row(name: str, peer: dict[str, Any]) -> list[str | Text]:
    state = str(peer["state"])
    style = "red" if state.startswith("unreadable") else _STYLES.get(state, "dim")
    return [
        Text(name, style="bold"),
        Text(state, style=style),
        _short(peer["epoch"]),
        _age(peer["snapshot_age"]),
        *[""] * 6,
        _number(peer["files_waiting"]),
        _number(peer["files_unread_by_others"]),
        _number(peer["quarantined"]),
        _number(sum(peer.get("requests", {}).values())),
        _number(sum(link.get("refused", 0) for link in peer["links"].values())),
    ]


def _link_row(remote: str, link: dict[str, Any], peer_alive: bool) -> list[str | Text]:
    """The remote's state as this peer last saw it; ``-`` when this peer is not alive."""
    seen = ("alive" if link.get("alive") else "silent") if peer_alive else "-"
    return [
        f"  → {remote}",
        Text(seen, style="green" if seen == "alive" else "dim"),
        _short(link.get("epoch") or link.get("remote_epoch")),
        _age(link.get("heard_age")),
        *(_number(link.get(key)) for key in ("sent", "acked", "unacked", "resends")),
        _age(link.get("last_ack_age")),
        _size(link.get("file_size")),
        *[""] * 4,
        _number(link.get("refused")),
    ]


def _short(epoch: object) -> str:
    return str(epoch)[:8] if epoch else "-"


def _age(seconds: object) -> str:
    """`seconds` with two digits or so: 0.1s under 10s, 1s under 1m, 0.1m under 1h, 0.1h
    under 10h, then hours (``3.1s``, ``42s``, ``1.3m``, ``2.5h``, ``27h``)."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    step = next((s for limit, s in _AGE_STEPS if abs(seconds) < limit), 3600.0)
    return format_duration(round(seconds / step) * step)


def _size(value: object) -> str:
    return format_size(value) if isinstance(value, int) else "-"


def _number(value: object) -> str:
    return "?" if value is None else str(value)


def console() -> Console:
    """A console on stdout; one wide enough for the whole table when stdout is no terminal
    (a pipe or a file has no width to respect)."""
    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, _PIPE_WIDTH))


def follow(
    roster: Roster, *, as_json: bool, interval: float = 1.0, out: Console | None = None
) -> None:
    """Show the status again every `interval` seconds until interrupted (KeyboardInterrupt
    is the caller's to catch): a live table on `out`, or one JSON document per line on
    stdout, flushed."""
    if as_json:
        _follow_json(roster, interval)
    else:
        _follow_table(roster, interval, out or console())


def _follow_json(roster: Roster, interval: float) -> None:
    """Until interrupted, or until the reader goes away (``| head -1``): then quietly."""
    try:
        while True:
            print(json.dumps(collect(roster)), flush=True)
            time.sleep(interval)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit


def _follow_table(roster: Roster, interval: float, out: Console) -> None:
    with Live(render(collect(roster)), console=out, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(collect(roster)), refresh=True)
