"""The inbox loop of a peer: woken by the folder watcher (or a timer for files still
settling), it lists the files addressed to the peer, checks them in batches, hands each
valid one to the links (`arrived`) and has it removed, quarantines those refused, and
leaves a file that looks cut short until it has settled (a mirror may still be writing it).

Taken files are removed by a task of their own, in a worker thread: an unlink costs a
few tenths of a millisecond, which would otherwise hold up what the file's messages set
going (a request to the upstream, an answer to a caller). Until removed, a taken file is
left out of the listings: one that cannot be removed (an inbox others own) is kept out and
tried again every `REMOVE_RETRY` seconds, with a line now and then, rather than read again
at every listing.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from ..config.roster import PeerSettings
from ..errors import Complaints, FormatError
from ..proto.inbound import Verdict
from ..proto.link import Arrival
from ..proto.settle import Settling
from ..state.offload import Offload
from ..wire.crypto import Keyring
from ..wire.fileformat import Limits, ScannedFile
from ..wire.names import FileName
from . import folder, inbox
from .quarantine import Quarantine
from .watch import watch

DETAIL_MOST = 500  # characters of why a file was refused, in its line and note
FOLDERS_AT_ONCE = 1024  # folders under message names recorded per listing
REMOVE_RETRY = 5.0  # seconds between two tries to remove taken files that could not be

Arrived = Callable[[Path, ScannedFile, bytes | None], Awaitable[Arrival]]
Heard = Callable[[str, str], None]  # (peer, its epoch): a valid file came from it


class Intake:
    """The inbox of the peer `settings` are of: each valid file goes to `arrived` (the
    links), then its sender to `heard` (who is alive), unless the links found the file
    stale."""

    def __init__(
        self,
        settings: PeerSettings,
        keyring: Keyring,
        limits: Limits,
        quarantine: Quarantine,
        arrived: Arrived,
        heard: Heard,
    ) -> None:
        self.settings, self.name = settings, settings.name
        self.keyring, self.limits, self.quarantine = keyring, limits, quarantine
        self.arrived, self.heard = arrived, heard
        self.log = logging.getLogger(f"mesh.{self.name}")
        self._complaints = Complaints(self.log, self.name)  # a full disk: not a line a try
        self._settling = Settling(settings.settle)
        # listing and checking small files: on the loop while that is quick
        self.reads = Offload(allowed=folder.is_local(settings.inbox))
        self._taken: dict[str, Path] = {}  # taken files not yet removed, by name
        self._to_remove = trio.Event()  # set when `_taken` has files to remove

    async def run(self) -> None:
        """Take files as they come, until cancelled."""
        wake_send, wake_recv = trio.open_memory_channel[None](1)
        settings = self.settings
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._remove_taken)
            nursery.start_soon(
                watch,
                settings.inbox,
                self.name,
                settings.watch,
                settings.poll_interval,
                wake_send,
            )
            while True:
                if await self._take_inbox():
                    await trio.lowlevel.checkpoint()  # more to take: list again at once
                    continue
                with trio.move_on_at(self._settling.next_check()):
                    await wake_recv.receive()

    async def _take_inbox(self) -> bool:
        """Take the files addressed to this peer: listed and the first batch checked in
        one call (on the loop while that is quick), each further batch in a thread;
        whether there is more to do at once (folders to record, `_refuse_folders`)."""
        settings = self.settings
        listed = partial(
            inbox.list_and_check,
            settings.inbox,
            self.name,
            frozenset(settings.talks_to),
            self.keyring,
            self.limits,
            self._settling.marks(trio.current_time()),
            small_only=self.reads.inline,  # a big file is read and hashed in a thread
            skipped=frozenset(self._taken) | self.quarantine.left(),
        )
        try:
            listing = await self.reads.run(listed)
        except OSError as exc:
            self.log.warning("%s: cannot list inbox %s: %s", self.name, settings.inbox, exc)
            return False
        more = await self._refuse_folders(listing.folders)
        for name, path in listing.foreign:
            detail = f"{name.sender} is not in {self.name}'s talks_to; the file was not read"
            try:
                await self._quarantine(path, "not-whitelisted", detail)
            except OSError as exc:  # it stays; the others are still taken
                self._complaints.say("foreign", "cannot quarantine %s: %s", path.name, exc)
        await self._take_checked(listing.checked)
        for start in range(0, len(listing.unchecked), inbox.BATCH):
            batch = listing.unchecked[start : start + inbox.BATCH]
            settling = self._settling.marks(trio.current_time())
            checked = await trio.to_thread.run_sync(
                inbox.check_files, batch, self.keyring, self.limits, settling
            )
            await self._take_checked(checked)
        return more

    async def _refuse_folders(self, folders: list[tuple[FileName, Path]]) -> bool:
        """Record the first `FOLDERS_AT_ONCE` folders under message names (once: then
        they are not listed), in one thread round trip and one line, or, past what the
        quarantine records, say once a minute that some are left; whether some are left
        for the next listing (files are not held up by a flood of them)."""
        if not folders:
            return False
        if not self.quarantine.records_folders():
            what = "%d folders under message names left in %s unrecorded: no more are"
            self._complaints.say("folders", what, len(folders), self.settings.inbox)
            return False
        paths = [path for _, path in folders[:FOLDERS_AT_ONCE]]
        detail = "a folder, not a file: never opened"
        try:
            noted = await trio.to_thread.run_sync(
                self.quarantine.put_all, paths, "not-a-file", detail
            )
        except OSError as exc:
            self._complaints.say("folder", "cannot record %s: %s", paths[0].name, exc)
            return False
        if noted:
            more = f" and {len(noted) - 1} more folders" if len(noted) > 1 else ""
            self.log.warning(
                "%s: quarantined %s%s: not-a-file (%s)", self.name, noted[0], more, detail
            )
        return len(folders) > FOLDERS_AT_ONCE

    async def _take_checked(self, checked: list[inbox.Checked]) -> None:
        """Take checked files in order, each then to be removed (`_remove_taken`);
        refused files go to quarantine."""
        for each in checked:
            try:
                if await self._take(each):
                    self._taken[each.path.name] = each.path
                    self._to_remove.set()
            except (OSError, sqlite3.Error) as exc:  # the file stays; tried again later
                self._complaints.say("take", "cannot take %s yet: %s", each.path.name, exc)

    async def _remove_taken(self) -> None:
        """Remove taken files, all those taken meanwhile in one thread round trip, until
        cancelled (those left are read again at the next start, dropped as repeats).
        Those that cannot be removed stay taken, and are tried again `REMOVE_RETRY`
        seconds later."""
        retry = math.inf
        while True:
            with trio.move_on_after(retry):
                await self._to_remove.wait()
            self._to_remove = trio.Event()
            paths = list(self._taken.values())
            unremoved: list[tuple[Path, OSError]] = []
            try:
                unremoved = await trio.to_thread.run_sync(inbox.remove_all, paths)
            finally:
                kept = {path.name for path, _ in unremoved}
                for path in paths:
                    if path.name not in kept:
                        del self._taken[path.name]
            retry = REMOVE_RETRY if unremoved else math.inf
            if unremoved:
                path, error = unremoved[0]
                self._complaints.say(
                    "remove",
                    "cannot remove %s (%d taken files stay, not read again): %s",
                    path.name,
                    len(unremoved),
                    error,
                )

    async def _take(self, checked: inbox.Checked) -> bool:
        """Take one checked file; whether it was taken (and may now be removed)."""
        scanned = await self._judge(checked)
        if scanned is None:
            return False
        sender = checked.name.sender
        try:
            arrival = await self.arrived(checked.path, scanned, checked.content)
        except FormatError as exc:  # swapped since it was checked (for a FIFO, a link)
            await self._quarantine(checked.path, exc.reason, exc.detail)
            return False
        if arrival.verdict is not Verdict.STALE:  # a stale file (a replay) says nothing
            self.heard(sender, scanned.header.epoch)
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
        self._settling.forget(path.name)  # judged: no longer waited on
        if len(detail) > DETAIL_MOST:  # a line, whatever a stranger's file holds
            detail = f"{detail[:DETAIL_MOST]}..."
        dest = await trio.to_thread.run_sync(self.quarantine.put, path, reason, detail)
        if dest is not None:
            self.log.warning("%s: quarantined %s: %s (%s)", self.name, path.name, reason, detail)
