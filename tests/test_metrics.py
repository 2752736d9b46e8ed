"""/metrics: the names DESIGN.md lists, fed by what happens, bounded labels,
and the same from a real daemon (journal fsyncs, auth failures)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cmdd.jobs import Created, Ended, Outcome, Started, State
from cmdd.metrics import DaemonMetrics
from cmdd.spec import JobSpec
from cmdd.store import JobStore

DESIGN_NAMES = {
    "cmdd_jobs_submitted", "cmdd_jobs_finished", "cmdd_jobs_running", "cmdd_jobs_queued",
    "cmdd_job_queue_seconds", "cmdd_job_duration_seconds", "cmdd_spawn_failures",
    "cmdd_journal_fsync_seconds", "cmdd_auth_failures", "cmdd_webhook_deliveries",
}  # fmt: skip


class Queue:
    running_count = 2
    queued_count = 5


class Deliveries:
    delivered_total, failed_total, retried_total, lag_total, in_flight = 7, 1, 2, 3.5, 1


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_job_events_feed_the_metrics() -> None:
    store = JobStore()
    spec = JobSpec(command="true")
    store.record(Created(1, 100.0, spec))  # replayed before watch(): not counted
    metrics = DaemonMetrics(store, Queue(), auth_failures=lambda: 3, deliveries=Deliveries)
    metrics.watch()
    store.record(Created(2, 200.0, spec))
    store.record(Started(2, 200.25))
    store.record(Ended(2, 202.25, Outcome(State.SUCCEEDED, exit_code=0)))
    store.record(Created(3, 300.0, spec))
    store.record(Started(3, 300.5))
    store.record(Ended(3, 300.5, Outcome(State.NOT_EXECUTED, reason="no such program")))
    text = metrics.exposition().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert DESIGN_NAMES <= names
    got = samples(text)
    assert got[("cmdd_jobs_submitted_total", ())] == 2
    assert got[("cmdd_jobs_finished_total", (("state", "succeeded"),))] == 1
    assert got[("cmdd_jobs_finished_total", (("state", "not_executed"),))] == 1
    assert got[("cmdd_jobs_finished_total", (("state", "lost"),))] == 0
    assert got[("cmdd_spawn_failures_total", ())] == 1
    assert got[("cmdd_job_queue_seconds_count", ())] == 2
    assert got[("cmdd_job_queue_seconds_sum", ())] == pytest.approx(0.75)
    assert got[("cmdd_job_duration_seconds_sum", ())] == pytest.approx(2.0)
    assert got[("cmdd_jobs_running", ())] == 2 and got[("cmdd_jobs_queued", ())] == 5
    assert got[("cmdd_auth_failures_total", ())] == 3
    assert got[("cmdd_jobs", (("state", "queued"),))] == 1
    assert got[("cmdd_webhook_deliveries_total", (("outcome", "delivered"),))] == 7
    assert got[("cmdd_webhook_deliveries_total", (("outcome", "retried"),))] == 2
    assert got[("cmdd_webhook_in_flight", ())] == 1


def test_labels_are_bounded() -> None:
    """Only state names and histogram buckets label series: never a job id,
    owner or command, whatever the history holds."""
    store = JobStore()
    metrics = DaemonMetrics(store, Queue())
    metrics.watch()
    for job_id in range(1, 200):
        store.record(Created(job_id, 1.0, JobSpec(command=f"echo {job_id}"), owner=f"u{job_id}"))
    keys = {k for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples for k in s.labels}  # fmt: skip
    assert keys <= {"state", "le", "outcome"}
    values = {s.labels.get("state") for family in
              text_string_to_metric_families(metrics.exposition().decode())
              for s in family.samples} - {None}  # fmt: skip
    assert values <= {state.value for state in State}


@pytest.mark.integration
def test_a_real_daemon_counts_fsyncs_and_auth_failures(tmp_path: Path) -> None:
    from test_client_cli import BIN, TlsDaemon

    daemon = TlsDaemon(tmp_path)
    try:
        env = daemon.env()
        assert subprocess.run([str(BIN / "cmdd"), "run", "--", "true"], env=env).returncode == 0
        bad = daemon.env(CMDD_TOKEN="cmdd_0000_nope")
        assert subprocess.run([str(BIN / "cmdd"), "jobs"], env=bad, capture_output=True).returncode
        scrape = subprocess.run(
            ["curl", "-sf", "--cacert", str(daemon.data_dir / "tls" / "cert.pem"),
             "-H", f"Authorization: Bearer {daemon.token}",
             f"https://localhost:{daemon.port}/metrics"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        got = samples(scrape.stdout)
        assert got[("cmdd_journal_fsync_seconds_count", ())] >= 2  # created+started, ended
        assert got[("cmdd_auth_failures_total", ())] >= 1
        assert got[("cmdd_jobs_finished_total", (("state", "succeeded"),))] == 1
        assert got[("cmdd_job_duration_seconds_count", ())] == 1
    finally:
        daemon.stop()


@pytest.mark.integration
def test_json_lines_log_for_machines(tmp_path: Path) -> None:
    """`twistd --logger cmdd.joblog.json_to_stdout` logs one JSON object per
    event; job transitions carry job_id, owner and state as fields."""
    import json

    from test_client_cli import BIN, TlsDaemon

    daemon = TlsDaemon(tmp_path, twistd_args=("--logger", "cmdd.joblog.json_to_stdout"))
    try:
        run = subprocess.run([str(BIN / "cmdd"), "run", "--", "true"], env=daemon.env())
        assert run.returncode == 0
    finally:
        daemon.stop()
    events = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]
    transitions = [(e["job_id"], e["state"], e["owner"]) for e in events
                   if e.get("log_namespace") == "cmdd.jobs"]  # fmt: skip
    assert transitions == [(1, "queued", "admin"), (1, "running", "admin"),
                           (1, "succeeded", "admin")]  # fmt: skip
