"""Who may change mesh's secrets and state: a state or keys folder, or a key file, that
another user could change is refused at start, with the command that fixes it."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def others_may_change(path: Path, what: str) -> str | None:
    """Why `path` (``what`` names it, e.g. ``roster.state``) is not safe from other users
    (another owner, or writable by group or others), as a problem line with the fix;
    None when it is safe or does not exist."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    me = os.getuid()
    if info.st_uid != me:
        return (
            f"{what}: {path} belongs to uid {info.st_uid}, not to this user (uid {me}); "
            f"run mesh as its owner, or: chown {me} {path}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if mode & bit)
        return f"{what}: {path} has mode {mode:o}: its {who} may change it; run: chmod go-w {path}"
    return None
