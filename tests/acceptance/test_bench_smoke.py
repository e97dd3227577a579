"""``taskq bench`` end to end with tiny workloads: every system, every figure, the JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.harness import METRIC_ORDER

TASKQ_ONLY = {
    "http_create_rps",
    "http_create_p99_ms",
    "e2e_tasks_per_s",
    "worker_rss_mb",
    "api_rss_mb",
    "ceiling_jobs_per_s",
    "drain_2proc_concurrency_10000_jobs_per_s",  # bench.queue_limits (--tiny: its first row)
    "drain_2proc_unique_jobs_per_s",  # bench.taskq_system.unique_metrics
    "resume_to_start_p50_ms",  # bench.queue_limits: a resume reaches the worker
    "resume_to_start_p99_ms",
}


@pytest.mark.slow
@pytest.mark.timeout(900)  # a bound, not a speed check: on the shared machine this took 165 s
def test_bench_tiny_run_writes_every_metric(pg_server_url, tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskq.cli", "bench", "--tiny", "--json", str(out)]
    command += ["--database-url", pg_server_url, "--system", "taskq", "--system", "pgqueuer"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| metric | unit | taskq | pgqueuer |" in done.stdout

    rows = json.loads(out.read_text())["results"]
    for row in rows:
        assert {"system", "metric", "value", "unit"} <= row.keys()
        assert isinstance(row["value"], float) and row["value"] > 0, row
    metrics = {(row["system"], row["metric"]) for row in rows}
    for system in ("taskq", "pgqueuer"):
        assert {(system, m) for m in METRIC_ORDER} <= metrics
    assert {("taskq", m) for m in TASKQ_ONLY} <= metrics


@pytest.mark.slow
@pytest.mark.timeout(300)  # a bound, not a speed check
def test_bench_runs_only_the_selected_workload_for_the_rounds_asked(pg_server_url, tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskq.cli", "bench", "--tiny", "--json", str(out)]
    command += ["--database-url", pg_server_url, "--system", "taskq"]
    command += ["--workload", "pickup", "--repeats", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert {row["metric"] for row in rows} == {"pickup_p50_ms", "pickup_p95_ms", "pickup_p99_ms"}
    assert all(len(row["runs"]) == 2 for row in rows)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run builds each peer's venv (pip install)
def test_bench_tiny_run_of_the_isolated_peers(pg_server_url, tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskq.cli", "bench", "--tiny", "--json", str(out)]
    command += ["--database-url", pg_server_url, "--system", "oban", "--system", "chancy"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stderr[-3000:]

    metrics = {(row["system"], row["metric"]) for row in json.loads(out.read_text())["results"]}
    for system in ("oban", "chancy"):
        # Each peer ran every shared workload, or was skipped with its one line.
        skipped = f"{system} skipped: " in done.stderr
        assert skipped or {(system, m) for m in METRIC_ORDER} <= metrics, done.stderr[-3000:]
        assert not (skipped and any(s == system for s, _ in metrics))
