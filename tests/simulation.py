"""A deterministic simulation of protocol cores over a hostile network, in memory.

Each node is a `Protocol` with a mini driver that encodes real files (signed, with frame
digests), so the network's faults act on real bytes: files are dropped, duplicated,
delayed (which reorders them), truncated at a random offset and corrupted. Time is a
number advanced from event to event; nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

from mesh.errors import FormatError
from mesh.proto.link import LinkSettings, Protocol
from mesh.wire import fileformat as wire
from mesh.wire.crypto import Identity, Keyring
from mesh.wire.messages import Control, Envelope, pack, unpack_envelope

SETTINGS = LinkSettings(heartbeat=1.0, resend_after=2.0, max_frames=256)


@dataclass(frozen=True)
class Faults:
    drop: float = 0.1
    duplicate: float = 0.1
    truncate: float = 0.1
    corrupt: float = 0.05
    max_delay: float = 0.5
    spare_headers: bool = False  # truncate only among the frames, never the header


@dataclass
class Node:
    name: str
    protocol: Protocol
    identity: Identity
    keyring: Keyring
    payloads: dict[tuple[str, int], bytes] = field(default_factory=dict)
    delivered: list[tuple[str, int]] = field(default_factory=list)  # (sender, n)
    rejected: Counter[str] = field(default_factory=Counter)

    def submit(self, remote: str, n: int, now: float) -> None:
        seq = self.protocol.assign(remote)
        payload = pack(Envelope(seq, Control("probe", {"n": n, "from": self.name})))
        self.payloads[(remote, seq)] = payload
        self.protocol.queued(remote, seq, len(payload), now)

    def write(self, now: float) -> list[tuple[str, bytes]]:
        files = []
        for out in self.protocol.outgoing(now):
            frames = [self.payloads[(out.remote, seq)] for seq in out.seqs]
            data = wire.encode_file(
                self.identity,
                recipient=out.remote,
                epoch=self.protocol.epoch,
                created=now,
                nonce=random.randbytes(8),
                frames=frames,
                seqs=out.seqs,
                link_key=self.keyring.sending_key(out.remote),
                link=out.link,
            )
            self.protocol.written(out, now)
            files.append((out.remote, data))
        return files

    def receive(self, data: bytes, now: float) -> None:
        try:
            decoded = wire.decode_file(data, self.keyring)
        except FormatError as exc:
            self.rejected[exc.reason] += 1
            return
        infos = decoded.header.frames
        whole = {infos[i].seq: f for i, f in enumerate(decoded.frames) if f is not None}
        cut = [infos[i].seq for i in decoded.missing]
        arrival = self.protocol.arrived(decoded.header, whole, cut, now)
        for seq in arrival.deliver:
            envelope = unpack_envelope(whole[seq], 1 << 20)
            assert envelope.seq == seq
            assert isinstance(envelope.message, Control)
            self.delivered.append((arrival.remote, envelope.message.args["n"]))
        self.protocol.stored(arrival.remote, arrival.deliver)
        # Acked payloads are never needed again.
        for seq in arrival.acked:
            del self.payloads[(arrival.remote, seq)]


class Network:
    """Files in flight, each with a fate decided by a seeded random generator."""

    def __init__(self, seed: int, faults: Faults, faults_to: dict[str, Faults]) -> None:
        self.rng = random.Random(seed)
        self.faults = faults
        self.faults_to = faults_to  # per recipient, instead of `faults`
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.counter = itertools.count()
        self.injected: Counter[str] = Counter()

    def send(self, recipient: str, data: bytes, now: float) -> None:
        rng, f = self.rng, self.faults_to.get(recipient, self.faults)
        if rng.random() < f.drop:
            self.injected["drop"] += 1
            return
        copies = 2 if rng.random() < f.duplicate else 1
        self.injected["duplicate"] += copies - 1
        for _ in range(copies):
            damaged = data
            start = wire.header_size(damaged) if f.spare_headers else 0
            if rng.random() < f.truncate and start < len(damaged):
                self.injected["truncate"] += 1
                damaged = damaged[: rng.randrange(start, len(damaged))]
            if damaged and rng.random() < f.corrupt:
                self.injected["corrupt"] += 1
                flipped = bytearray(damaged)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                damaged = bytes(flipped)
            at = now + rng.uniform(0, f.max_delay)
            heapq.heappush(self.queue, (at, next(self.counter), recipient, damaged))


class Simulation:
    def __init__(
        self,
        names: list[str],
        seed: int,
        faults: Faults = Faults(),
        faults_to: dict[str, Faults] | None = None,
    ) -> None:
        identities = {n: Identity.generate(n) for n in names}
        self.nodes: dict[str, Node] = {}
        for n in names:
            others = [o for o in names if o != n]
            epoch = random.Random(f"{seed}-{n}").randbytes(8).hex()
            protocol = Protocol(n, epoch, {o: SETTINGS for o in others})
            keyring = Keyring(identities[n], {o: identities[o].public for o in others})
            self.nodes[n] = Node(n, protocol, identities[n], keyring)
        self.network = Network(seed, faults, faults_to or {})
        self.now = 0.0
        self.idle_steps = 0
        self.submissions: list[tuple[float, int, str, str, int]] = []

    def schedule(
        self, sender: str, recipient: str, count: int, over: float, batch: int, start: float = 0.0
    ) -> None:
        """`count` messages, `batch` at a time, spread evenly over `over` seconds from
        `start`."""
        steps = max(count // batch, 1)
        for step in range(steps):
            at = start + over * step / steps
            for n in range(step * batch, min((step + 1) * batch, count)):
                self.submissions.append((at, len(self.submissions), sender, recipient, n))
        heapq.heapify(self.submissions)

    def step(self) -> bool:
        """Advance to the next event; False when nothing can ever happen again."""
        times = [node.protocol.next_wakeup() for node in self.nodes.values()]
        if self.network.queue:
            times.append(self.network.queue[0][0])
        if self.submissions:
            times.append(self.submissions[0][0])
        candidates = [t for t in times if t is not None]
        if not candidates:
            return False
        at = max(self.now, min(candidates))
        self.idle_steps = self.idle_steps + 1 if at == self.now else 0
        assert self.idle_steps < 1000, f"spinning at {at}s: a wake-up that does nothing"
        self.now = at
        while self.submissions and self.submissions[0][0] <= self.now:
            _, _, sender, recipient, n = heapq.heappop(self.submissions)
            self.nodes[sender].submit(recipient, n, self.now)
        while self.network.queue and self.network.queue[0][0] <= self.now:
            _, _, recipient, data = heapq.heappop(self.network.queue)
            self.nodes[recipient].receive(data, self.now)
        for node in self.nodes.values():
            for recipient, data in node.write(self.now):
                self.network.send(recipient, data, self.now)
        return True

    def settled(self) -> bool:
        """Everything submitted, delivered, acknowledged, and clocks agree."""
        if self.submissions:
            return False
        for node in self.nodes.values():
            for remote in node.protocol.remotes:
                outbound = node.protocol.outbound(remote)
                if outbound.unacked:
                    return False
                theirs = self.nodes[remote].protocol.clock()[node.name]
                if theirs != outbound.next_seq - 1:
                    return False
        return True

    def run_until_settled(self, limit: float) -> None:
        while not self.settled():
            assert self.step(), "the simulation stalled"
            assert self.now <= limit, f"not settled after {limit}s of simulated time"

    def run_until(self, at: float) -> None:
        """Advance until simulated time reaches `at` (or nothing can happen any more)."""
        while self.now < at and self.step():
            pass

    def resends(self) -> dict[str, int]:
        return {
            f"{n}>{r}": node.protocol.outbound(r).stats.resends
            for n, node in self.nodes.items()
            for r in node.protocol.remotes
        }
