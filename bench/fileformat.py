"""File format speed: encode and decode MB/s of version 2 beside version 1, and the raw
cost of each step, all in the same run.

    python bench/fileformat.py [--mib 64]

Version 1 differed from version 2 only in its frame digests: one xxh3-128 per frame
(which anyone can make collide), where version 2 lists BLAKE3-256, one per block of
small frames (`mesh.wire.layout.blocks`). The v1 column is this code with that put back;
two more show the other choices (BLAKE3 per frame, BLAKE2b per block). Two files: one
big body (half random, half text-like, as real traffic) and 1,000 messages of 1 KiB.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import blake3
import xxhash

from mesh.wire import bounded, layout, reader, writer
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity, Keyring, seal
from mesh.wire.messages import Envelope, Response, pack


def body(size: int) -> bytes:
    text = b"".join(b'{"order": %d, "item": "widget", "qty": 3}\n' % i for i in range(size // 80))
    return (os.urandom(size // 2) + text)[:size]


def rate(size: int, fn: Callable[[], object], repeat: int = 3) -> float:
    """Best-of-`repeat` MB/s of `fn` over `size` bytes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return size / best / 1e6


class Xxh3:
    """xxh3-128 as a frame digest (v1's, padded to the table's 32 bytes)."""

    def __init__(self, data: bytes | memoryview = b"") -> None:
        self._hash = xxhash.xxh3_128(data)

    def update(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return bytes(self._hash.digest()) + bytes(16)


def blake2b(data: bytes | memoryview = b"") -> Any:
    return hashlib.blake2b(data, digest_size=32)


# name: (frame digest, whether small frames share one)
DIGESTS: dict[str, tuple[Callable[..., Any], bool]] = {
    "v1 xxh3": (Xxh3, False),
    "v2 blake3": (blake3.blake3, True),
    "blake3/frame": (blake3.blake3, False),
    "blake2b": (blake2b, True),
}


@contextlib.contextmanager
def digested_by(name: str) -> Iterator[None]:
    """The format with frame digests as `DIGESTS[name]` says (writer's and reader's)."""
    factory, shared = DIGESTS[name]
    saved = writer.new_digest, reader.new_digest, layout.SMALL_FRAME
    writer.new_digest = reader.new_digest = factory  # type: ignore[assignment]
    layout.SMALL_FRAME = saved[2] if shared else -1  # -1: no frame joins another
    try:
        yield
    finally:
        writer.new_digest, reader.new_digest, layout.SMALL_FRAME = saved


def file_rates(frames: list[bytes], size: int, encrypted: bool) -> dict[str, tuple[float, float]]:
    """Encode and decode MB/s of a file of `frames` under each digest."""
    alpha, bravo = Identity.generate("alpha"), Identity.generate("bravo")
    keys = Keyring(bravo, {"alpha": alpha.public}, ["alpha"] if encrypted else [])
    link = keys.link_key("alpha", "bravo") if encrypted else None

    def encode() -> bytes:
        return wire.encode_file(
            alpha,
            recipient="bravo",
            epoch="0" * 16,
            created=0.0,
            nonce=b"\0" * 8,
            frames=frames,
            seqs=list(range(1, len(frames) + 1)),
            link_key=link,
        )

    found = {}
    for name in DIGESTS:
        with digested_by(name):
            file = encode()
            decode = functools.partial(wire.decode_file, file, keys)
            found[name] = (rate(size, encode), rate(size, decode))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="body size in MiB")
    size = parser.parse_args().mib << 20
    data = body(size)
    key = os.urandom(32)
    print(f"{'baseline (same bytes)':<34}{'MB/s':>10}")
    for label, fn in [
        ("memory copy", lambda: bytearray(data)),
        ("xxh3-128", lambda: xxhash.xxh3_128_digest(data)),
        ("BLAKE3-256", lambda: blake3.blake3(data).digest()),
        ("BLAKE2b-256", lambda: hashlib.blake2b(data, digest_size=32).digest()),
        ("zstd level 3", lambda: bounded.compress(data)),
        ("AES-256-GCM", lambda: seal(key, b"\0" * 12, data, b"")),
    ]:
        print(f"  {label:<32}{rate(size, fn):>10.0f}")
    big = [pack(Envelope(1, Response("ab" * 16, 200, (), data)))]
    small = [pack(Envelope(n, Response("ab" * 16, 200, (), os.urandom(1024)))) for n in range(1000)]
    cases = [(f"{size >> 20} MiB body", big, size), ("1,000 x 1 KiB", small, 1000 * 1024)]
    print(f"\n{'file':<34}" + "".join(f"{name:>14}" for name in DIGESTS) + f"{'v2/v1':>8}")
    for label, frames, bytes_in in cases:
        for encrypted in (False, True):
            rates = file_rates(frames, bytes_in, encrypted)
            for index, step in enumerate(("encode", "decode")):
                row = [rates[name][index] for name in DIGESTS]
                name = f"{label}, {'sealed' if encrypted else 'plain'}, {step}"
                cells = "".join(f"{value:>14.0f}" for value in row)
                print(f"  {name:<32}{cells}{row[1] / row[0]:>8.2f}")


if __name__ == "__main__":
    main()
