"""Key files: `<peer>.key` (private, mode 0600) and `<peer>.pub` under the roster's `keys`.

Both are small text files of ``field: value`` lines with base64 keys, so a user can see
which peer a file belongs to. An existing key is never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KeyFileError
from ..wire.crypto import Identity, PublicIdentity

_PRIVATE_HEADER = "# mesh private key: keep it secret, keep it mode 0600"
_PUBLIC_HEADER = "# mesh public key: copy it to every site whose peers talk to this one"


def private_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{name}.key"


def public_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{name}.pub"


def _render(header: str, name: str, sign: bytes, box: bytes) -> bytes:
    lines = [
        header,
        f"peer: {name}",
        f"ed25519: {base64.b64encode(sign).decode()}",
        f"x25519: {base64.b64encode(box).decode()}",
    ]
    return ("\n".join(lines) + "\n").encode()


def _parse(path: Path, name: str) -> tuple[bytes, bytes]:
    """The two keys of a key file; `KeyFileError` saying what is wrong otherwise."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: unreadable ({exc})") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise KeyFileError(f"{path}: not a mesh key file (line {line[:40]!r})")
        fields[key.strip()] = value.strip()
    if fields.get("peer") != name:
        raise KeyFileError(f"{path}: belongs to peer {fields.get('peer')!r}, not {name!r}")
    try:
        sign = base64.b64decode(fields["ed25519"], validate=True)
        box = base64.b64decode(fields["x25519"], validate=True)
    except (KeyError, binascii.Error):
        raise KeyFileError(f"{path}: needs base64 'ed25519' and 'x25519' lines") from None
    if len(sign) != 32 or len(box) != 32:
        raise KeyFileError(f"{path}: keys must be 32 bytes each")
    return sign, box


def load_public(keys_dir: Path, name: str) -> PublicIdentity:
    """The public keys of `name`; `KeyFileError` for a file that does not hold them."""
    path = public_path(keys_dir, name)
    sign, box = _parse(path, name)
    try:
        return PublicIdentity(name, sign, box)
    except ValueError as exc:  # says which key, never its bytes
        raise KeyFileError(f"{path}: {exc}") from None


def load_identity(keys_dir: Path, name: str) -> Identity:
    """The private keys of `name`, refusing a key file that group or others may read."""
    path = private_path(keys_dir, name)
    sign, box = _parse(path, name)
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: mode {mode:o} lets others read it; run: chmod 600 {path}")
    if info.st_uid != os.getuid():
        raise KeyFileError(
            f"{path}: belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}); "
            f"run mesh as its owner, or: chown {os.getuid()} {path}"
        )
    identity = Identity(name, sign, box)
    pub = public_path(keys_dir, name)
    if pub.exists() and load_public(keys_dir, name) != identity.public:
        raise KeyFileError(f"{pub}: does not match {path.name}; remove it and run mesh keygen")
    return identity


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`, failing if it exists; fsync'd so a crash leaves no half key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeygenResult:
    name: str
    action: str  # "created", "kept", "public-written", "public-only"


def keygen(keys_dir: Path, names: Iterable[str]) -> list[KeygenResult]:
    """Create missing key pairs; never overwrite.

    A peer with only a `.pub` is taken to run elsewhere and is left alone; a peer with a
    `.key` but no `.pub` gets its `.pub` written from the key.
    """
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    results = []
    for name in names:
        key, pub = private_path(keys_dir, name), public_path(keys_dir, name)
        if key.exists():
            identity = load_identity(keys_dir, name)
            if not pub.exists():
                _write_public(pub, identity.public)
                results.append(KeygenResult(name, "public-written"))
            else:
                results.append(KeygenResult(name, "kept"))
        elif pub.exists():
            results.append(KeygenResult(name, "public-only"))
        else:
            identity = Identity.generate(name)
            raw = _render(_PRIVATE_HEADER, name, identity.sign_seed, identity.box_seed)
            _write_new(key, raw, 0o600)
            _write_public(pub, identity.public)
            results.append(KeygenResult(name, "created"))
    return results


def _write_public(path: Path, public: PublicIdentity) -> None:
    _write_new(path, _render(_PUBLIC_HEADER, public.name, public.sign_key, public.box_key), 0o644)


def missing_keys(keys_dir: Path, own: Iterable[str], remote: Iterable[str]) -> list[str]:
    """One line per key file `mesh up` needs and lacks: `own` peers run here, `remote` elsewhere."""
    problems = []
    for name in own:
        key, pub = private_path(keys_dir, name), public_path(keys_dir, name)
        if not key.exists():
            problems.append(f"{name}: private key {key} is missing")
        elif not pub.exists():
            problems.append(f"{name}: public key {pub} is missing")
    for name in remote:
        if not public_path(keys_dir, name).exists():
            problems.append(f"{name}: public key {public_path(keys_dir, name)} is missing")
    return problems
