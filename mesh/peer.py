"""One running peer: the composition root, where every part is made and handed the
narrow services it uses.

`Peer.open` does everything that can fail on a user's setup (lock, state, keys, folders)
before anything runs, so `mesh up` refuses a bad setup up front; `Peer.run` then starts
the links (writing files, heartbeats), the inbox loop, the requests, the forwarder, the
poster and the HTTP ingress, and saves a status snapshot every second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

import trio

from .config import keys as keyfiles
from .config.access import ANY
from .config.modes import others_may_change
from .config.roster import PeerSettings, Roster
from .errors import Complaints, ConfigError, leaves
from .http.asgi import serve_at
from .http.forwarder import Forwarder, Upstream
from .http.health import health
from .http.ingress import Ingress, Services
from .http.mailbox import Mailbox
from .http.metrics import Metrics, Sources
from .http.poster import Poster
from .http.requests import ANSWER_GRACE, Requests
from .pipe import folder
from .pipe.bodies import BLOCK, Bodies
from .pipe.intake import Intake
from .pipe.links import Links
from .pipe.liveness import Liveness
from .pipe.quarantine import Quarantine
from .pipe.retention import Retention
from .pipe.sending import Sending
from .pipe.space import FreeSpace
from .proto.link import LinkSettings
from .state.durable import Durability
from .state.lock import StateLock
from .state.offload import Offload
from .state.store import Store
from .wire.crypto import Keyring
from .wire.fileformat import Limits

# Frames hold a message with an inline body (up to bodies.INLINE), a fragment (up to
# bodies.BLOCK) or a datagram (up to DATAGRAM_LIMIT), plus headers: this bounds them all.
MAX_FRAME = 16 << 20
RESTART_AFTER = 1.0  # seconds before a part that failed on an OSError starts again
SNAPSHOT_EVERY = 1.0  # seconds between two status snapshots
# A busy peer logs megabytes a second: checkpoints come often, so each has little to copy
# and its end (the frames committed meanwhile) is quick enough to copy on the loop.
CHECKPOINT_EVERY = 0.1  # seconds between two checkpoints (when anything was committed)
CHECKPOINT_TAIL = 512  # frames (pages) a checkpoint's end may copy on the loop: 2 MiB


class Running(Protocol):
    """A part of a running peer: it runs until cancelled."""

    async def run(self) -> None: ...


async def keep_running(part: Running, complaints: Complaints) -> None:
    """Run `part` until it returns or is cancelled; an OSError or SQLite's operational
    error out of it (no file descriptor left, a share gone away, a full disk) is logged
    now and then, and `part` starts again
    after `RESTART_AFTER` seconds: it never ends the peer. Other errors do."""
    while True:
        try:
            await part.run()
            return
        except* (OSError, sqlite3.OperationalError) as group:  # a full disk, too
            first = next(iter(leaves(group)))
            name = type(part).__name__
            complaints.say(name, "%s stopped (%s); starting it again", name, first)
        await trio.sleep(RESTART_AFTER)


class Peer:
    """A peer named in a roster. Call `open` (sync, may raise ConfigError), then `run`."""

    def __init__(self, roster: Roster, name: str) -> None:
        self.roster = roster
        self.name = name
        self.settings: PeerSettings = roster.peer(name)
        self.log = logging.getLogger(f"mesh.{name}")
        self._complaints = Complaints(self.log, name)
        self.limits = Limits(max_frame=MAX_FRAME, max_message=MAX_FRAME)
        self._lock = StateLock(roster.state_dir(name), name)
        self.store: Store
        self.bodies: Bodies
        self.keyring: Keyring
        self.quarantine: Quarantine
        self.durable: Durability
        self.liveness: Liveness
        self.links: Links
        self.requests: Requests
        self.retention: Retention
        self.space: FreeSpace

    # -- setup ---------------------------------------------------------------------------

    def open(self) -> None:
        """Take the state lock, open the store, load keys, check the folders."""
        state_dir = self.roster.state_dir(self.name)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._check_modes(state_dir)
        self._lock.acquire()
        try:
            self.store = Store(state_dir)
            self.bodies = Bodies(state_dir / "bodies")
            self.keyring = self._load_keys()
            self.quarantine = Quarantine(state_dir / "quarantine", self.settings.quarantine_limit)
            self._prepare_folders()
        except BaseException:
            self._lock.release()
            raise
        fsyncs = Offload(allowed=folder.is_local(state_dir))  # never on the loop on a share
        self.durable = Durability(self.store.database, self.log, fsyncs=fsyncs)
        if self.store.database.created:
            self.log.info("%s: new state in %s, epoch %s", self.name, state_dir, self.store.epoch)
        swept = self.bodies.sweep(self.store.links.spools_in_use())
        if swept:
            self.log.info("%s: removed %d body files nothing refers to", self.name, swept)

    def _check_modes(self, state_dir: Path) -> None:
        """ConfigError listing the state and keys folders that another user could change
        (the key file is checked as it is loaded)."""
        roster = self.roster
        found = [
            others_may_change(roster.state, "roster.state"),
            others_may_change(state_dir, f"{self.name} state"),
            others_may_change(roster.keys, "roster.keys"),
        ]
        problems = [problem for problem in found if problem is not None]
        if problems:
            raise ConfigError("\n".join(problems))

    def _load_keys(self) -> Keyring:
        folder_, talks_to = self.roster.keys, self.settings.talks_to
        problems = keyfiles.missing_keys(folder_, [self.name], talks_to)
        if problems:
            raise ConfigError("\n".join(problems))
        identity = keyfiles.load_identity(folder_, self.name)
        publics = {peer: keyfiles.load_public(folder_, peer) for peer in talks_to}
        encrypted = list(talks_to) if self.settings.encrypt else []
        return Keyring(identity, publics, encrypted)

    def _prepare_folders(self) -> None:
        prepare_folders(self.settings, self.log)
        removed = folder.remove_stale_temporaries(self.settings.outbox, self.name)
        if removed:
            self.log.info("%s: removed %d half-written files left by a crash", self.name, removed)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.store.close()
        self._lock.release()

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; `open` must have succeeded. Closes the peer on the way out."""
        parts = self._assemble()
        talks_to = ", ".join(self.settings.talks_to) or "nobody"
        self.log.info("%s: up, epoch %s, talks to %s", self.name, self.store.epoch, talks_to)
        try:
            async with trio.open_nursery() as nursery:
                for part in parts:
                    nursery.start_soon(keep_running, part, self._complaints)
                nursery.start_soon(self._save_status)
                nursery.start_soon(self._checkpoint)
                await self._serve_http(nursery)
                task_status.started()
        finally:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self.store.database.save_status(self.status(running=False))
            self.close()
            self.log.info("%s: stopped", self.name)

    def _assemble(self) -> list[Running]:
        """Make the parts that run, each handed what it uses."""
        settings, store, durable = self.settings, self.store, self.durable
        silent_after = {p: 3 * self.roster.peer(p).heartbeat for p in settings.talks_to}
        self.liveness = Liveness(self.name, silent_after)
        link_settings = {remote: self._link_settings() for remote in settings.talks_to}
        block = min(BLOCK, settings.fragment_size)
        self.links = links = Links(
            store.database,
            store.links,
            self.keyring,
            link_settings,
            settings.outbox,
            self.bodies,
            durable,
            self.limits,
            max_body=settings.body_limit,
            block=block,
            file_mode=settings.file_mode,
        )
        sending, receiving = links.sending, links.receiving
        poster = Poster(self.name, store.posts, self.bodies, durable)
        self.requests = Requests(
            self.name,
            store.database,
            store.requests,
            sending,
            receiving,
            links.events,
            links.progress,
            durable,
            poster.kick,
            settings.body_limit,
        )
        upstream = Upstream(
            settings.upstream,
            settings.upstream_timeout,
            settings.upstream_concurrency,
            settings.preserve_host,
        )
        forwarder = Forwarder(
            self.name,
            store.database,
            store.executions,
            sending,
            receiving,
            self.bodies,
            durable,
            upstream,
            settings.body_limit,
            settings.serves,
        )
        intake = Intake(
            settings, self.keyring, self.limits, self.quarantine, links.arrived, self.liveness.heard
        )
        parts: list[Running] = [links, self.requests, poster, forwarder, intake, self.liveness]
        return [*parts, *self._housekeeping(sending)]

    def _housekeeping(self, sending: Sending) -> list[Running]:
        """The parts that keep the peer within bounds: retention, and free space watched."""
        settings = self.settings
        self.retention = Retention(
            self.store.retention,
            sending.remove_once_synced,
            settings.retention,
            self._complaints,
            idle=settings.request_deadline + ANSWER_GRACE,  # a request under way waits no longer
        )
        places = {"state": self.roster.state_dir(self.name), "outbox": settings.outbox}
        self.space = FreeSpace(places)
        return [self.retention, self.space]

    async def _serve_http(self, nursery: trio.Nursery) -> None:
        """Listen at `listen`; ConfigError if the address cannot be had."""
        links = self.links
        mailbox = Mailbox(
            self.store.epoch, self.store.links, links.sending, links.receiving, self.durable
        )
        space = self.space
        services = Services(
            settings=self.settings,
            peers=frozenset(self.roster.peers),
            requests=self.requests,
            mailbox=mailbox,
            sending=links.sending,
            bodies=self.bodies,
            durable=self.durable,
            pipe_error=lambda: links.pipe_error,
            status=lambda: self.status(running=True),
            health=lambda: health(
                (links.pipe_error, self.durable.failing),
                space.free,
                {r: self.liveness.presence.alive(r) for r in self.settings.talks_to},
            ),
            metrics=self._metrics(space),
        )
        app: Any = Ingress(services)  # hypercorn's typing wants its own scope types
        await serve_at(
            nursery, app, self.settings.listen, f"{self.name}.listen", tls=self.settings.tls
        )
        scheme = "http" if self.settings.tls is None else "https"
        self.log.info("%s: HTTP ingress on %s://%s", self.name, scheme, self.settings.listen)
        if self.settings.callers == ANY and not self.settings.listen.loopback:
            self.log.warning(
                "%s: callers: any: everyone who reaches %s may call through it",
                self.name,
                self.settings.listen,
            )

    def _metrics(self, space: FreeSpace) -> Metrics:
        """The peer's metrics (`space`: where free space counts), and the parts that time
        things told to feed them."""
        links = self.links
        sources = Sources(
            links=links.status,
            traffic=links.traffic,
            heard=self.liveness.status,
            quarantined=self.quarantine.reasons,
            in_flight=self.store.requests.in_flight,
            transfers=links.transfers,
            free=lambda: space.free,
            swept=lambda: self.retention.swept,
        )
        metrics = Metrics(sources)
        self.retention.batch_timed = metrics.sweep.observe
        self.store.database.commit_timed = metrics.commit.observe
        self.durable.sync_timed = metrics.fsync.observe
        self.requests.ended = metrics.ended
        self.requests.round_trips.timed = metrics.round_tripped
        return metrics

    def _link_settings(self) -> LinkSettings:
        return LinkSettings(
            heartbeat=self.settings.heartbeat,
            resend_after=self.settings.resend_after,
            linger=self.settings.linger,
            collate_below=self.settings.collate_below,
            max_bytes=self.settings.fragment_size,
        )

    async def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database every `CHECKPOINT_EVERY` seconds
        when anything was committed, from a thread, then the few frames committed
        meanwhile on the loop (so the log starts over instead of growing); a failure
        (busy, full, out of file descriptors) is logged now and then, and tried again."""
        database = self.store.database
        copied_upto = -1  # commits counted when the last checkpoint began
        while True:
            await trio.sleep(CHECKPOINT_EVERY)
            if database.commits == copied_upto:
                continue
            copied_upto = database.commits
            try:
                logged, copied = await trio.to_thread.run_sync(database.checkpoint)
                if 0 < logged - copied <= CHECKPOINT_TAIL:
                    database.finish_checkpoint()
            except (sqlite3.Error, OSError) as exc:  # the log keeps it meanwhile
                self._complaints.say("checkpoint", "state checkpoint failed: %s", exc)

    async def _save_status(self) -> None:
        """Save the status snapshot each second; a failure is logged now and then, and
        tried again (never the end of the peer)."""
        while True:
            try:
                self.store.database.save_status(self.status(running=True))
            except (sqlite3.Error, OSError) as exc:
                self._complaints.say("status", "cannot save the status snapshot: %s", exc)
            await trio.sleep(SNAPSHOT_EVERY)

    def status(self, running: bool) -> dict[str, Any]:
        """What `mesh status` shows of this peer (JSON-ready)."""
        links = self.links.status()
        refusals = self.store.executions.refusals()
        for remote, link in links.items():
            link.update(self.liveness.status(remote))
            link["refused"] = refusals.get(remote, 0)
        return {
            "peer": self.name,
            "epoch": self.store.epoch,
            "running": running,
            "pid": os.getpid(),
            "at": time.time(),
            "heartbeat": self.settings.heartbeat,
            "links": links,
            "quarantined": self.quarantine.count(),
            "requests": self.store.requests.in_flight(),
            "transfers": self.links.transfers(),
            "pipe_error": self.links.pipe_error,
            "events_dropped": self.links.events.dropped,
        }


async def run_peers(peers: list[Peer]) -> None:
    """Run opened peers in one nursery until cancelled."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(_run_one, peer)


async def _run_one(peer: Peer, *, task_status: trio.TaskStatus[None]) -> None:
    await peer.run(task_status=task_status)


def prepare_folders(settings: PeerSettings, log: logging.Logger) -> None:
    """Create a peer's outbox and inbox where missing (saying so: a mistyped folder would
    otherwise take files nothing reads); ConfigError naming every problem found."""
    name, mode, problems = settings.name, folder.folder_mode(settings.file_mode), []
    for role, path in (("outbox", settings.outbox), ("inbox", settings.inbox)):
        if path.is_dir():
            continue
        try:
            path.mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as exc:
            problems.append(f"{name}.{role}: cannot create {path}: {exc}")
        else:
            log.info("%s: created its %s %s (it did not exist)", name, role, path)
    if settings.outbox.is_dir() and not os.access(settings.outbox, os.W_OK | os.X_OK):
        problems.append(f"{name}.outbox: {settings.outbox} is not writable")
    if problems:
        raise ConfigError("\n".join(problems))


def open_peers(roster: Roster, names: list[str]) -> list[Peer]:
    """Open the named peers (all when empty); ConfigError listing every problem otherwise.

    Missing keys are reported for all peers at once, with the command that makes them.
    """
    unknown = [n for n in names if n not in roster.peers]
    if unknown:
        raise ConfigError("\n".join(f"{n}: no such peer in {roster.path}" for n in unknown))
    chosen = list(dict.fromkeys(names)) or list(roster.peers)
    remote = sorted({p for n in chosen for p in roster.peer(n).talks_to} - set(chosen))
    missing = keyfiles.missing_keys(roster.keys, chosen, remote)
    if missing:
        hint = f"make them with: mesh keygen {roster.path}"
        if remote:
            hint += f" (or copy the .pub of {', '.join(remote)} from the site that runs it)"
        raise ConfigError("\n".join([*missing, hint]))
    opened: list[Peer] = []
    try:
        for name in chosen:
            peer = Peer(roster, name)
            peer.open()
            opened.append(peer)
    except BaseException:
        for peer in opened:
            peer.close()
        raise
    return opened
