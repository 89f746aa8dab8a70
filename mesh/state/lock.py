"""The lock that makes sure only one process runs a peer on a given state folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import PeerLockedError


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
