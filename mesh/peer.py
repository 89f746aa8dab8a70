"""One running peer: the trio driver around the pure parts (file format, presence).

`Peer.open` does everything that can fail on a user's setup (lock, state, keys, folders)
before anything runs, so `mesh up` refuses a bad setup up front; `Peer.run` then writes
heartbeats, takes the files addressed to this peer from its inbox, and logs who is alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .config import keys as keyfiles
from .config.roster import PeerSettings, Roster
from .config.units import format_duration
from .errors import ConfigError
from .http.gateway import Forwarder, Poster, Requests
from .http.ingress import Ingress, serve_at
from .pipe import folder as pipe
from .pipe import inbox
from .pipe.bodies import BLOCK, Bodies
from .pipe.links import Links
from .proto import presence
from .proto.link import LinkSettings
from .proto.settle import Settling
from .state.offload import Offload
from .state.store import StateLock, Store
from .wire.crypto import Keyring
from .wire.fileformat import Limits, ScannedFile

# Frames hold a message with an inline body (up to bodies.INLINE), a fragment (up to
# bodies.BLOCK) or a datagram (up to DATAGRAM_LIMIT), plus headers: this bounds them all.
MAX_FRAME = 16 << 20


class Peer:
    """A peer named in a roster. Call `open` (sync, may raise ConfigError), then `run`."""

    def __init__(self, roster: Roster, name: str) -> None:
        self.roster = roster
        self.name = name
        self.settings: PeerSettings = roster.peer(name)
        self.log = logging.getLogger(f"mesh.{name}")
        self.limits = Limits(max_frame=MAX_FRAME, max_message=MAX_FRAME)
        self._lock = StateLock(roster.state_dir(name), name)
        self._settling = Settling(self.settings.settle)
        self.store: Store
        self.bodies: Bodies
        self.keyring: Keyring
        self.quarantine: pipe.Quarantine
        self.inbox_reads: Offload  # listing and checking small files: on the loop if quick
        self.presence: presence.Presence
        self.links: Links
        self.requests: Requests
        self.poster: Poster
        self.forwarder: Forwarder

    # -- setup ---------------------------------------------------------------------------

    def open(self) -> None:
        """Take the state lock, open the store, load keys, check the folders."""
        state_dir = self.roster.state_dir(self.name)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock.acquire()
        try:
            self.store = Store(state_dir)
            self.bodies = Bodies(state_dir / "bodies")
            self.keyring = self._load_keys()
            self.quarantine = pipe.Quarantine(self.store.quarantine)
            self._prepare_folders()
            self.inbox_reads = Offload(allowed=pipe.is_local(self.settings.inbox))
        except BaseException:
            self._lock.release()
            raise
        if self.store.created:
            self.log.info("%s: new state in %s, epoch %s", self.name, state_dir, self.store.epoch)
        swept = self.bodies.sweep(self.store.spools_in_use())
        if swept:
            self.log.info("%s: removed %d body files nothing refers to", self.name, swept)

    def _load_keys(self) -> Keyring:
        folder, talks_to = self.roster.keys, self.settings.talks_to
        problems = keyfiles.missing_keys(folder, [self.name], talks_to)
        if problems:
            raise ConfigError("\n".join(problems))
        identity = keyfiles.load_identity(folder, self.name)
        publics = {peer: keyfiles.load_public(folder, peer) for peer in talks_to}
        encrypted = [p for p in talks_to if self.settings.encrypt]
        return Keyring(identity, publics, encrypted)

    def _prepare_folders(self) -> None:
        for role, folder in (("outbox", self.settings.outbox), ("inbox", self.settings.inbox)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"{self.name}.{role}: cannot create {folder}: {exc}") from None
        if not os.access(self.settings.outbox, os.W_OK | os.X_OK):
            raise ConfigError(f"{self.name}.outbox: {self.settings.outbox} is not writable")
        removed = pipe.remove_stale_temporaries(self.settings.outbox, self.name)
        if removed:
            self.log.info("%s: removed %d half-written files left by a crash", self.name, removed)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.store.close()
        self._lock.release()

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; `open` must have succeeded. Closes the peer on the way out."""
        silent_after = {p: 3 * self.roster.peer(p).heartbeat for p in self.settings.talks_to}
        self.presence = presence.Presence(silent_after, trio.current_time())
        self.links = Links(
            self.name,
            self.store,
            self.keyring,
            {remote: self._link_settings() for remote in self.settings.talks_to},
            self.settings.outbox,
            self.bodies,
            self.limits,
            max_body=self.settings.body_limit,
            block=min(BLOCK, self.settings.fragment_size),
        )
        self.poster = Poster(self.name, self.store, self.bodies, self.links.durable)
        self.requests = Requests(self.store, self.links, self.poster)
        self.forwarder = Forwarder(
            self.name,
            self.store,
            self.links,
            self.settings.upstream,
            self.settings.body_limit,
            concurrency=self.settings.upstream_concurrency,
            upstream_timeout=self.settings.upstream_timeout,
        )
        self.log.info(
            "%s: up, epoch %s, talks to %s",
            self.name,
            self.store.epoch,
            ", ".join(self.settings.talks_to) or "nobody",
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.links.run)
                nursery.start_soon(self.requests.run)
                nursery.start_soon(self.poster.run)
                nursery.start_soon(self.forwarder.run)
                nursery.start_soon(self._inbox)
                nursery.start_soon(self._watch_silence, min(silent_after.values(), default=1.0))
                nursery.start_soon(self._save_status)
                nursery.start_soon(self._checkpoint)
                await self._serve_http(nursery)
                task_status.started()
        finally:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self.store.save_status(self.status(running=False))
            self.close()
            self.log.info("%s: stopped", self.name)

    async def _serve_http(self, nursery: trio.Nursery) -> None:
        """Listen at `listen`; ConfigError if the address cannot be had."""
        app: Any = Ingress(self)  # hypercorn's typing wants its own scope types
        await serve_at(nursery, app, self.settings.listen, f"{self.name}.listen")
        self.log.info("%s: HTTP ingress on http://%s", self.name, self.settings.listen)

    def _link_settings(self) -> LinkSettings:
        return LinkSettings(
            heartbeat=self.settings.heartbeat,
            resend_after=self.settings.resend_after,
            linger=self.settings.linger,
            collate_below=self.settings.collate_below,
            max_bytes=self.settings.fragment_size,
        )

    async def _inbox(self) -> None:
        wake_send, wake_recv = trio.open_memory_channel[None](1)
        settings = self.settings
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                pipe.watch, settings.inbox, settings.watch, settings.poll_interval, wake_send
            )
            while True:
                await self._take_inbox()
                with trio.move_on_at(self._settling.next_check()):
                    await wake_recv.receive()

    async def _take_inbox(self) -> None:
        """Take the files addressed to this peer: listed and the first batch checked in
        one call (on the loop while that is quick), each further batch in a thread."""
        settings = self.settings
        listed = partial(
            inbox.list_and_check,
            settings.inbox,
            self.name,
            frozenset(settings.talks_to),
            self.keyring,
            self.limits,
            self._settling.marks(trio.current_time()),
            small_only=self.inbox_reads.inline,  # a big file is read and hashed in a thread
        )
        try:
            listing = await self.inbox_reads.run(listed)
        except OSError as exc:
            self.log.warning("%s: cannot list inbox %s: %s", self.name, settings.inbox, exc)
            return
        for name, path in listing.foreign:
            detail = f"{name.sender} is not in {self.name}'s talks_to; the file was not read"
            await self._quarantine(path, "not-whitelisted", detail)
        await self._take_checked(listing.checked)
        for start in range(0, len(listing.unchecked), inbox.BATCH):
            batch = listing.unchecked[start : start + inbox.BATCH]
            settling = self._settling.marks(trio.current_time())
            checked = await trio.to_thread.run_sync(
                inbox.check_files, batch, self.keyring, self.limits, settling
            )
            await self._take_checked(checked)

    async def _take_checked(self, checked: list[inbox.Checked]) -> None:
        """Take checked files in order, then remove those taken in one call; refused
        files go to quarantine."""
        taken = []
        for each in checked:
            try:
                if await self._take(each):
                    taken.append(each.path)
            except (OSError, sqlite3.Error) as exc:  # the file stays; tried again later
                self.log.error("%s: cannot take %s yet: %s", self.name, each.path.name, exc)
        unremoved = await self.inbox_reads.run(partial(inbox.remove_all, taken)) if taken else []
        for path, error in unremoved:  # it stays: read again, its messages dropped as repeats
            self.log.error("%s: cannot remove %s: %s", self.name, path.name, error)

    async def _take(self, checked: inbox.Checked) -> bool:
        """Take one checked file; whether it was taken (and may now be removed)."""
        scanned = await self._judge(checked)
        if scanned is None:
            return False
        sender = checked.name.sender
        self._record(self.presence.heard(sender, scanned.header.epoch, trio.current_time()))
        await self.links.arrived(checked.path, scanned, checked.content)
        if scanned.missing:
            self.log.info(
                "%s: %s lost %d of %d frames on the way; asked %s for them again",
                self.name,
                checked.path.name,
                len(scanned.missing),
                len(scanned.intact),
                sender,
            )
        return True

    async def _judge(self, checked: inbox.Checked) -> ScannedFile | None:
        """The valid content of a checked file, or None: gone, unreadable for now, refused
        (quarantined), or cut short and not yet settled (looked at again later)."""
        name, path, mark = checked.name, checked.path, checked.mark
        if mark is None:
            self._settling.forget(path.name)
            return None
        if checked.failure is not None:
            raise checked.failure
        if checked.waiting:
            return None
        if checked.error is not None:
            if checked.error.reason == "truncated" and not self._settled(path, mark):
                return None  # maybe still being written in place
            await self._quarantine(path, checked.error.reason, checked.error.detail)
            return None
        scanned = checked.scanned
        assert scanned is not None
        if scanned.header.sender != name.sender:
            detail = f"named as {name.sender}'s but signed by {scanned.header.sender}"
            await self._quarantine(path, "name-mismatch", detail)
            return None
        if scanned.cut_short and not self._settled(path, mark):
            return None
        self._settling.forget(path.name)
        return scanned

    def _settled(self, path: Path, mark: tuple[int, int]) -> bool:
        """True once `path` has kept `mark` (size, mtime) for `settle` seconds: a mirror
        writing in place may still be growing it. Until then it is looked at again later."""
        return self._settling.settled(path.name, mark, trio.current_time())

    async def _quarantine(self, path: Path, reason: str, detail: str) -> None:
        dest = await trio.to_thread.run_sync(self.quarantine.put, path, reason, detail)
        if dest is not None:
            self.log.warning("%s: quarantined %s: %s (%s)", self.name, path.name, reason, detail)

    async def _watch_silence(self, shortest: float) -> None:
        while True:
            await trio.sleep(shortest / 6)
            self._record(self.presence.check(trio.current_time()))

    async def _checkpoint(self) -> None:
        while True:
            await trio.sleep(1.0)
            try:
                await trio.to_thread.run_sync(self.store.checkpoint)
            except sqlite3.Error as exc:  # busy or full: the log keeps it, tried again
                self.log.warning("%s: state checkpoint failed: %s", self.name, exc)

    async def _save_status(self) -> None:
        while True:
            self.store.save_status(self.status(running=True))
            await trio.sleep(1.0)

    def status(self, running: bool) -> dict[str, Any]:
        """What `mesh status` shows of this peer (JSON-ready)."""
        now = trio.current_time()
        heard = {}
        for remote in self.settings.talks_to:
            contact = self.presence.contacts.get(remote)
            heard[remote] = {
                "alive": self.presence.alive(remote),
                "epoch": contact.epoch if contact else None,
                "heard_age": now - contact.last_heard if contact else None,
            }
        links = self.links.status()
        for remote, link in links.items():
            link.update(heard[remote])
        return {
            "peer": self.name,
            "epoch": self.store.epoch,
            "running": running,
            "pid": os.getpid(),
            "at": time.time(),
            "heartbeat": self.settings.heartbeat,
            "links": links,
            "quarantined": self.quarantine.count(),
            "requests": self.store.requests_in_flight(),
            "transfers": self.links.transfers(),
            "pipe_error": self.links.pipe_error,
            "events_dropped": self.links.events.dropped,
        }

    def _record(self, events: list[presence.PresenceEvent]) -> None:
        for event in events:
            match event:
                case presence.FirstHeard(peer, epoch):
                    self.log.info("%s: first heard from %s (epoch %s)", self.name, peer, epoch)
                case presence.WentSilent(peer, quiet):
                    self.log.warning(
                        "%s: %s went silent (nothing for %s)",
                        self.name,
                        peer,
                        format_duration(quiet),
                    )
                case presence.Back(peer, quiet):
                    self.log.info(
                        "%s: %s is back after %s", self.name, peer, format_duration(quiet)
                    )
                case presence.NewEpoch(peer, old, new):
                    self.log.warning(
                        "%s: %s has a new epoch %s (was %s): its state was created anew",
                        self.name,
                        peer,
                        new,
                        old,
                    )
                case presence.NotHeard(peer, waited):
                    self.log.warning(
                        "%s: nothing heard from %s yet (%s since start)",
                        self.name,
                        peer,
                        format_duration(waited),
                    )


async def run_peers(peers: list[Peer]) -> None:
    """Run opened peers in one nursery until cancelled."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(_run_one, peer)


async def _run_one(peer: Peer, *, task_status: trio.TaskStatus[None]) -> None:
    await peer.run(task_status=task_status)


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
