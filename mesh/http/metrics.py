"""A peer's metrics for Prometheus (``GET /metrics``, in the text exposition format), in a
registry of its own: several peers may run in one process.

Most are read when scraped from what the peer counts anyway (`Scraped`: the links, the
pipe's traffic, the quarantine, the requests in flight, who was heard, free space); the
histograms and the count of requests ended are told each observation as it happens
(`Metrics`, its hooks set by the composition root). Label values are bounded: remote
peers of the roster, states, HTTP statuses, and quarantine reasons (short slugs; any
other word is counted as ``other``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..pipe.links import Traffic
from ..pipe.retention import Swept
from ..proto.lifecycle import FINAL, RequestState
from .asgi import Send

# Seconds: a call or a round trip crosses a pipe (a mirror may take minutes) ...
PIPE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# ... a commit or an fsync of the store should take milliseconds
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
IN_FLIGHT = tuple(state.value for state in RequestState if state not in FINAL)
DIRECTIONS = ("sending", "receiving")  # of a body crossing in fragments
_SLUG = re.compile(r"[a-z][a-z0-9-]{0,39}")
CONTENT_TYPE = CONTENT_TYPE_LATEST

Family = type[CounterMetricFamily] | type[GaugeMetricFamily]
COUNTER, GAUGE = CounterMetricFamily, GaugeMetricFamily
# Per link: (family, name, key of `Links.status`, what it counts)
LINKS: tuple[tuple[Family, str, str, str], ...] = (
    (COUNTER, "mesh_link_messages_sent", "sent", "Messages sent"),
    (COUNTER, "mesh_link_messages_acked", "acked", "Messages acknowledged"),
    (COUNTER, "mesh_link_messages_resent", "resends", "Messages resent"),
    (GAUGE, "mesh_link_messages_waiting", "unacked", "Messages not yet acknowledged"),
    (COUNTER, "mesh_pipe_files_written", "files", "Files written to the outbox"),
)


@dataclass(frozen=True)
class Sources:
    """What the metrics read of a running peer when scraped."""

    links: Callable[[], Mapping[str, Mapping[str, Any]]]  # `Links.status`, per remote
    traffic: Traffic  # files and bytes in and out, per remote
    heard: Callable[[str], Mapping[str, Any]]  # `Liveness.status` of a remote
    quarantined: Callable[[], Mapping[str, int]]  # files refused since start, by reason
    in_flight: Callable[[], Mapping[str, int]]  # requests short of an end, by state
    transfers: Callable[[], Iterable[Mapping[str, Any]]]  # `Links.transfers`
    free: Callable[[], Mapping[str, int | None]]  # bytes free where state and outbox are
    swept: Callable[[], Swept] = Swept  # what retention removed since start


class Metrics:
    """The metrics of one peer: `exposition` is what ``GET /metrics`` answers."""

    def __init__(self, sources: Sources) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "mesh_requests",
            "Requests of this peer's callers that ended, by their answer's HTTP status",
            ["status"],
            registry=registry,
        )
        self.call_wait = Histogram(
            "mesh_call_wait_seconds",
            "Seconds a call through this peer took at its ingress, to the answer's end",
            buckets=PIPE_BUCKETS,
            registry=registry,
        )
        self.round_trip = Histogram(
            "mesh_round_trip_seconds",
            "Seconds from a request leaving to its answer arriving, per remote peer",
            ["remote"],
            buckets=PIPE_BUCKETS,
            registry=registry,
        )
        self.commit = Histogram(
            "mesh_store_commit_seconds",
            "Seconds each commit of the state store took",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.fsync = Histogram(
            "mesh_store_fsync_seconds",
            "Seconds each fsync of the state store took",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.sweep = Histogram(
            "mesh_retention_batch_seconds",
            "Seconds each batch of the retention sweep held the event loop",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        registry.register(Scraped(sources))

    def ended(self, status: int) -> None:
        """A request ended with an answer of HTTP `status`."""
        self.requests.labels(status=str(status)).inc()

    def waited(self, seconds: float, call: bool) -> None:
        """An HTTP request at the ingress took `seconds`: a `call` to a peer's upstream
        counts (not mesh's own routes, whose long polls would say nothing of the pipe)."""
        if call:
            self.call_wait.observe(seconds)

    def round_tripped(self, remote: str, seconds: float) -> None:
        """A request to `remote` was answered `seconds` after it left."""
        self.round_trip.labels(remote=remote).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric, in Prometheus's text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    async def respond(self, send: Send) -> None:
        """Answer an ASGI request with `exposition`."""
        body = self.exposition()
        headers = [
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Scraped(Collector):
    """The metrics read from `sources` at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        links = self.sources.links()
        yield from self._links(links)
        yield from self._pipe(sorted(links))
        yield from self._remotes(sorted(links))
        yield from self._requests()
        yield from self._places()
        yield from self._swept()

    def _links(self, links: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
        """Messages per link (sent, acknowledged, resent, waiting) and files written."""
        for family, name, key, doc in LINKS:
            values = {remote: float(link[key]) for remote, link in links.items()}
            yield _labelled(family, name, f"{doc}, per remote peer", "remote", values)

    def _pipe(self, remotes: list[str]) -> Iterator[Metric]:
        """Bytes written, files and bytes read, per remote; files refused, by reason."""
        traffic = self.sources.traffic
        counted = (
            ("mesh_pipe_bytes_written", traffic.bytes_written, "Bytes of files written"),
            ("mesh_pipe_files_read", traffic.files_read, "Valid files taken from the inbox"),
            ("mesh_pipe_bytes_read", traffic.bytes_read, "Bytes of valid files taken"),
        )
        for name, counts, doc in counted:
            values = {remote: float(counts.get(remote, 0)) for remote in remotes}
            yield _labelled(COUNTER, name, f"{doc}, per remote peer", "remote", values)
        reasons: dict[str, float] = {}
        for reason, count in self.sources.quarantined().items():
            word = reason if _SLUG.fullmatch(reason) else "other"
            reasons[word] = reasons.get(word, 0) + count
        doc = "Files from the inbox refused and quarantined, by reason"
        yield _labelled(COUNTER, "mesh_pipe_files_quarantined", doc, "reason", reasons)

    def _remotes(self, remotes: list[str]) -> Iterator[Metric]:
        """Whether each remote peer is heard, and since when it has not been."""
        doc = "1 while a remote peer is heard, 0 while it is silent"
        alive = GaugeMetricFamily("mesh_remote_alive", doc, labels=["remote"])
        doc = "Seconds since a valid file last came from a remote peer (none: never yet)"
        age = GaugeMetricFamily("mesh_remote_last_heard_age_seconds", doc, labels=["remote"])
        for remote in remotes:
            heard = self.sources.heard(remote)
            alive.add_metric([remote], 1.0 if heard["alive"] else 0.0)
            if heard["heard_age"] is not None:
                age.add_metric([remote], float(heard["heard_age"]))
        yield alive
        yield age

    def _requests(self) -> Iterator[Metric]:
        """Requests in flight by state; bodies crossing in fragments by direction."""
        in_flight = self.sources.in_flight()
        states = {state: float(in_flight.get(state, 0)) for state in IN_FLIGHT}
        doc = "Requests of this peer's callers not yet ended, by state"
        yield _labelled(GAUGE, "mesh_requests_in_flight", doc, "state", states)
        directions = dict.fromkeys(DIRECTIONS, 0.0)
        for transfer in self.sources.transfers():
            direction = str(transfer.get("direction"))
            if direction in directions:
                directions[direction] += 1
        doc = "Bodies crossing the pipe in fragments now, by direction"
        yield _labelled(GAUGE, "mesh_transfers", doc, "direction", directions)

    def _places(self) -> Iterator[Metric]:
        """Free space where the state and the outbox are (none for a place unreachable)."""
        free = GaugeMetricFamily(
            "mesh_free_bytes", "Bytes free where the state and the outbox are", labels=["place"]
        )
        for place, left in self.sources.free().items():
            if left is not None:
                free.add_metric([place], float(left))
        yield free

    def _swept(self) -> Iterator[Metric]:
        """What retention removed since start, by what it was."""
        swept = self.sources.swept()
        doc = "Rows, body files and free pages (handed back) retention removed, by what"
        values = {what: float(count) for what, count in vars(swept).items()}
        yield _labelled(COUNTER, "mesh_retention_removed", doc, "what", values)


def _labelled(
    family: Family, name: str, doc: str, label: str, values: Mapping[str, float]
) -> Metric:
    """A metric of `family` with one sample per entry of `values`, labelled `label`."""
    metric: CounterMetricFamily | GaugeMetricFamily = family(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric
