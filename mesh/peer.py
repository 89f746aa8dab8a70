"""One running peer: the trio driver around the pure parts (file format, presence).

`Peer.open` does everything that can fail on a user's setup (lock, state, keys, folders)
before anything runs, so `mesh up` refuses a bad setup up front; `Peer.run` then writes
heartbeats, takes the files addressed to this peer from its inbox, and logs who is alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import trio

from . import keys as keyfiles
from . import pipe, presence
from .crypto import Keyring
from .errors import ConfigError, FormatError
from .names import FileKind, FileName
from .roster import PeerSettings, Roster
from .store import StateLock, Store
from .units import format_duration
from .wire import DecodedFile, Limits, decode_file, encode_file

_NONCE_SIZE = 8
_DECODE_IN_THREAD_FROM = 1 << 20  # bytes; smaller files decode inline, faster than a hop


class Peer:
    """A peer named in a roster. Call `open` (sync, may raise ConfigError), then `run`."""

    def __init__(self, roster: Roster, name: str) -> None:
        self.roster = roster
        self.name = name
        self.settings: PeerSettings = roster.peer(name)
        self.log = logging.getLogger(f"mesh.{name}")
        self.limits = Limits(
            max_frame=self.settings.body_limit + (1 << 20),
            max_message=self.settings.body_limit + (1 << 20),
        )
        self.max_file = 2 * self.limits.max_frame + (16 << 20)
        self._lock = StateLock(roster.state_dir(name), name)
        self._last_heartbeat: dict[str, Path] = {}
        self.store: Store
        self.keyring: Keyring
        self.quarantine: pipe.Quarantine
        self.presence: presence.Presence

    # -- setup ---------------------------------------------------------------------------

    def open(self) -> None:
        """Take the state lock, open the store, load keys, check the folders."""
        state_dir = self.roster.state_dir(self.name)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock.acquire()
        try:
            self.store = Store(state_dir)
            self.keyring = self._load_keys()
            self.quarantine = pipe.Quarantine(self.store.quarantine)
            self._prepare_folders()
        except BaseException:
            self._lock.release()
            raise
        if self.store.created:
            self.log.info("%s: new state in %s, epoch %s", self.name, state_dir, self.store.epoch)

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
        self.log.info(
            "%s: up, epoch %s, talks to %s",
            self.name,
            self.store.epoch,
            ", ".join(self.settings.talks_to) or "nobody",
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._inbox)
                nursery.start_soon(self._watch_silence, min(silent_after.values(), default=1.0))
                task_status.started()
        finally:
            self.close()
            self.log.info("%s: stopped", self.name)

    async def _heartbeats(self) -> None:
        while True:
            for peer in self.settings.talks_to:
                await self._send_heartbeat(peer)
            await trio.sleep(self.settings.heartbeat)

    async def _send_heartbeat(self, peer: str) -> None:
        """Drop a heartbeat for `peer` and remove our previous one if nobody took it."""
        name = FileName(time.time_ns(), self.name, peer, os.urandom(4).hex(), FileKind.HEARTBEAT)
        data = encode_file(
            self.keyring.identity,
            recipient=peer,
            epoch=self.store.epoch,
            created=time.time(),
            nonce=os.urandom(_NONCE_SIZE),
            frames=[],
            link_key=self.keyring.sending_key(peer),
        )
        try:
            path = await trio.to_thread.run_sync(
                pipe.write_atomically, self.settings.outbox, name, data
            )
        except OSError as exc:
            self.log.warning("%s: cannot write heartbeat for %s: %s", self.name, peer, exc)
            return
        previous, self._last_heartbeat[peer] = self._last_heartbeat.get(peer), path
        if previous is not None:
            await trio.to_thread.run_sync(pipe.remove, previous)

    async def _inbox(self) -> None:
        wake_send, wake_recv = trio.open_memory_channel[None](1)
        settings = self.settings
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                pipe.watch, settings.inbox, settings.watch, settings.poll_interval, wake_send
            )
            while True:
                await self._take_inbox()
                await wake_recv.receive()

    async def _take_inbox(self) -> None:
        try:
            found = await trio.to_thread.run_sync(pipe.addressed_to, self.settings.inbox, self.name)
        except OSError as exc:
            self.log.warning("%s: cannot list inbox %s: %s", self.name, self.settings.inbox, exc)
            return
        for name, path in found:
            try:
                await self._take(name, path)
            except OSError as exc:  # the file stays; the next scan tries it again
                self.log.warning("%s: cannot take %s yet: %s", self.name, path.name, exc)

    async def _take(self, name: FileName, path: Path) -> None:
        """Read, check and consume one file addressed to us; refused files go to quarantine."""
        if name.sender not in self.settings.talks_to:
            detail = f"{name.sender} is not in {self.name}'s talks_to; the file was not read"
            await self._quarantine(path, "not-whitelisted", detail)
            return
        try:
            data = await trio.to_thread.run_sync(pipe.read_file, path, self.max_file)
        except ValueError as exc:
            await self._quarantine(path, "too-large", str(exc))
            return
        if data is None:
            return
        try:
            decoded = await self._decode(data)
        except FormatError as exc:
            await self._quarantine(path, exc.reason, exc.detail)
            return
        if decoded.header.sender != name.sender:
            detail = f"named as {name.sender}'s but signed by {decoded.header.sender}"
            await self._quarantine(path, "name-mismatch", detail)
            return
        self._record(self.presence.heard(name.sender, decoded.header.epoch, trio.current_time()))
        if decoded.frames:
            # Message delivery arrives with the reliable link layer; keep the file, visibly.
            await self._quarantine(path, "no-handler", "messages are not handled yet")
            return
        await trio.to_thread.run_sync(pipe.remove, path)

    async def _decode(self, data: bytes) -> DecodedFile:
        if len(data) < _DECODE_IN_THREAD_FROM:
            return decode_file(data, self.keyring, self.limits)
        return await trio.to_thread.run_sync(decode_file, data, self.keyring, self.limits)

    async def _quarantine(self, path: Path, reason: str, detail: str) -> None:
        dest = await trio.to_thread.run_sync(self.quarantine.put, path, reason, detail)
        if dest is not None:
            self.log.warning("%s: quarantined %s: %s (%s)", self.name, path.name, reason, detail)

    async def _watch_silence(self, shortest: float) -> None:
        while True:
            await trio.sleep(shortest / 6)
            self._record(self.presence.check(trio.current_time()))

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
