"""File format speed: encode and decode MB/s beside the raw cost of each step, same run.

    python bench/fileformat.py [--mib 64]

Baselines, measured here on the same bytes: a memory copy, xxh3-128 alone, zstd alone,
AES-GCM alone. The format's cost should be close to the sum of the steps it performs.
Bodies are half random (incompressible), half text-like (compressible), as real traffic.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import xxhash

from mesh.wire import bounded
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64, help="body size in MiB")
    size = parser.parse_args().mib << 20
    data = body(size)
    alpha, bravo = Identity.generate("alpha"), Identity.generate("bravo")
    frames = [pack(Envelope(1, Response("ab" * 16, 200, (), data)))]
    key = os.urandom(32)

    print(f"body: {size >> 20} MiB, half random, half text")
    print(f"{'step':<28}{'MB/s':>10}")
    rows = [
        ("baseline: memory copy", lambda: bytearray(data)),
        ("baseline: xxh3-128", lambda: xxhash.xxh3_128_digest(data)),
        ("baseline: zstd level 3", lambda: bounded.compress(data)),
        ("baseline: AES-256-GCM", lambda: seal(key, b"\0" * 12, data, b"")),
    ]
    for encrypted in (False, True):
        keys = Keyring(bravo, {"alpha": alpha.public}, ["alpha"] if encrypted else [])
        link = keys.link_key("alpha", "bravo") if encrypted else None
        file = wire.encode_file(
            alpha,
            recipient="bravo",
            epoch="0" * 16,
            created=time.time(),
            nonce=os.urandom(8),
            frames=frames,
            link_key=link,
        )
        label = "sealed" if encrypted else "plain"

        def encode(link: bytes | None = link) -> bytes:
            return wire.encode_file(
                alpha,
                recipient="bravo",
                epoch="0" * 16,
                created=0.0,
                nonce=b"\0" * 8,
                frames=frames,
                link_key=link,
            )

        rows.append((f"mesh encode ({label})", encode))
        rows.append((f"mesh decode ({label})", lambda f=file, k=keys: wire.decode_file(f, k)))
        print(f"  {label} file: {len(file) / size:.2f} of the body's size")
    for label, fn in rows:
        print(f"{label:<28}{rate(size, fn):>10.0f}")


if __name__ == "__main__":
    main()
