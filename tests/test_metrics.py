"""`mesh.http.metrics`: what a peer's ``GET /metrics`` says, from made-up sources, parsed
back with prometheus_client's own parser; and the quarantine's count by reason."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mesh.http.metrics import IN_FLIGHT, Metrics, Sources
from mesh.pipe.links import Traffic
from mesh.pipe.quarantine import Quarantine
from mesh.pipe.space import FreeSpace

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parsed(text: str) -> Samples:
    """Each sample's value by its name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def sources(tmp_path: Path, quarantined: Mapping[str, int] | None = None) -> Sources:
    links = {
        "bravo": {"sent": 7, "acked": 5, "unacked": 2, "resends": 1, "files": 9},
        "carol": {"sent": 0, "acked": 0, "unacked": 0, "resends": 0, "files": 3},
    }
    traffic = Traffic()
    traffic.bytes_written["bravo"] += 1000
    traffic.files_read["bravo"] += 4
    traffic.bytes_read["bravo"] += 800
    heard: dict[str, dict[str, Any]] = {
        "bravo": {"alive": True, "heard_age": 0.5},
        "carol": {"alive": False, "heard_age": None},
    }
    transfers = [{"direction": "sending"}, {"direction": "sending"}, {"direction": "?"}]
    return Sources(
        links=lambda: links,
        traffic=traffic,
        heard=heard.__getitem__,
        quarantined=lambda: quarantined or {},
        in_flight=lambda: {"sent": 2, "forwarded": 1},
        transfers=lambda: transfers,
        free=FreeSpace({"state": tmp_path, "outbox": tmp_path / "gone"}).free.copy,
    )


def test_scraped_from_the_sources(tmp_path: Path) -> None:
    reasons = {"bad-magic": 2, "not-whitelisted": 1, "Weird Reason /etc/passwd": 5}
    got = parsed(Metrics(sources(tmp_path, reasons)).exposition().decode())
    assert value(got, "mesh_link_messages_sent_total", remote="bravo") == 7
    assert value(got, "mesh_link_messages_acked_total", remote="bravo") == 5
    assert value(got, "mesh_link_messages_resent_total", remote="bravo") == 1
    assert value(got, "mesh_link_messages_waiting", remote="bravo") == 2
    assert value(got, "mesh_pipe_files_written_total", remote="carol") == 3
    assert value(got, "mesh_pipe_bytes_written_total", remote="bravo") == 1000
    assert value(got, "mesh_pipe_files_read_total", remote="bravo") == 4
    assert value(got, "mesh_pipe_bytes_read_total", remote="bravo") == 800
    assert value(got, "mesh_pipe_files_read_total", remote="carol") == 0  # every link, always
    assert value(got, "mesh_pipe_files_quarantined_total", reason="bad-magic") == 2
    assert value(got, "mesh_pipe_files_quarantined_total", reason="other") == 5  # bounded
    assert value(got, "mesh_remote_alive", remote="bravo") == 1
    assert value(got, "mesh_remote_alive", remote="carol") == 0
    assert value(got, "mesh_remote_last_heard_age_seconds", remote="bravo") == 0.5
    assert value(got, "mesh_remote_last_heard_age_seconds", remote="carol") is None  # never
    assert value(got, "mesh_requests_in_flight", state="sent") == 2
    assert value(got, "mesh_requests_in_flight", state="stored") == 0
    assert {labels for name, labels in got if name == "mesh_requests_in_flight"} == {
        (("state", state),) for state in IN_FLIGHT
    }
    assert value(got, "mesh_transfers", direction="sending") == 2
    assert value(got, "mesh_transfers", direction="receiving") == 0
    assert (value(got, "mesh_free_bytes", place="state") or 0) > 0
    assert value(got, "mesh_free_bytes", place="outbox") is None  # cannot be reached
    assert value(got, "mesh_retention_removed_total", what="requests") == 0


def test_observed_as_it_happens(tmp_path: Path) -> None:
    metrics = Metrics(sources(tmp_path))
    other = Metrics(sources(tmp_path))  # another peer in the same process: its own registry
    metrics.ended(200)
    metrics.ended(200)
    metrics.ended(504)
    metrics.round_tripped("bravo", 0.3)
    metrics.waited(0.4, call=True)
    metrics.waited(25.0, call=False)  # mesh's own route: not a call
    metrics.commit.observe(0.001)
    metrics.fsync.observe(0.002)
    metrics.sweep.observe(0.004)
    got = parsed(metrics.exposition().decode())
    assert value(got, "mesh_retention_batch_seconds_count") == 1
    assert value(got, "mesh_requests_total", status="200") == 2
    assert value(got, "mesh_requests_total", status="504") == 1
    assert value(got, "mesh_round_trip_seconds_count", remote="bravo") == 1
    assert value(got, "mesh_round_trip_seconds_bucket", remote="bravo", le="0.25") == 0
    assert value(got, "mesh_round_trip_seconds_bucket", remote="bravo", le="0.5") == 1
    assert value(got, "mesh_call_wait_seconds_count") == 1
    assert value(got, "mesh_call_wait_seconds_sum") == 0.4
    assert value(got, "mesh_store_commit_seconds_count") == 1
    assert value(got, "mesh_store_fsync_seconds_count") == 1
    untouched = parsed(other.exposition().decode())
    assert value(untouched, "mesh_requests_total", status="200") is None
    assert value(untouched, "mesh_call_wait_seconds_count") == 0


def test_quarantine_counts_by_reason(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "quarantine")
    for n, reason in enumerate(["bad-magic", "bad-magic", "truncated"]):
        refused = tmp_path / f"alpha.bravo.{n:016x}-0000000{n}.msg.mesh"
        refused.write_bytes(b"junk")
        quarantine.put(refused, reason, "made up")
    quarantine.put(tmp_path / "gone.msg.mesh", "bad-magic", "never there")  # not counted
    assert quarantine.reasons() == {"bad-magic": 2, "truncated": 1}
