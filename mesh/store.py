"""A peer's durable state: one folder per peer under the roster's `state`, holding a lock
file, a SQLite database (WAL) and the quarantine folder.

The lock makes sure only one process runs a peer on a given state; the database holds
the peer's epoch (a random id made when the state is created, so a peer whose state was
lost or restored is noticed by the others).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from .errors import PeerLockedError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StateLock:
    """An exclusive `flock` on ``<state>/peer.lock``, held for the life of the peer.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    """

    def __init__(self, state_dir: Path, peer: str) -> None:
        self.path = state_dir / "peer.lock"
        self.peer = peer
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `PeerLockedError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PeerLockedError(
                f"peer {self.peer} is already running on state {self.path.parent} "
                f"(pid {holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Store:
    """The SQLite state of one peer. Opening it creates the folder and epoch when new."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = state_dir
        self.db = sqlite3.connect(state_dir / "state.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.epoch = self._epoch()
        self.created = self._created

    def _epoch(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._created = row is None
        if row is not None:
            return str(row[0])
        epoch = os.urandom(8).hex()
        self.db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return epoch

    @property
    def quarantine(self) -> Path:
        return self.folder / "quarantine"

    def close(self) -> None:
        self.db.close()
