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
}


@pytest.mark.slow
def test_bench_tiny_run_writes_every_metric(pg_server_url, tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskq.cli", "bench", "--tiny", "--json", str(out)]
    command += ["--database-url", pg_server_url, "--system", "taskq", "--system", "pgqueuer"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)  # a busy machine
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
