"""Free TCP ports on loopback, as the kernel hands them out, so that two runs of the suite
on one machine never pick the same one. Take them right before use, per test."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from typing import NamedTuple


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on now (each held open until all are picked)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class Ports(NamedTuple):
    """One test's loopback ports: the peers' ingresses, the upstream, the callback receiver
    (the `ports` fixture of conftest.py takes them as the test starts)."""

    alpha: int
    bravo: int
    carol: int
    upstream: int
    receiver: int

    @property
    def callbacks(self) -> str:
        """The receiver's URL (a roster's `callbacks` may allow any URL under it)."""
        return f"http://127.0.0.1:{self.receiver}"
