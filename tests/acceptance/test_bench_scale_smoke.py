"""``taskq bench --scale`` end to end at a tiny size: every read, drain, pickup, clean-up, soak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.scale import READ_NAMES


@pytest.mark.slow
def test_scale_bench_tiny_run_measures_every_read_and_writes_its_results(pg_server_url, tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "taskq.cli", "bench", "--tiny", "--scale", "300"]
    command += ["--soak", "400", "--json", str(out), "--results-dir", str(tmp_path / "results")]
    done = subprocess.run(
        [*command, "--database-url", pg_server_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| read | 300 |" in done.stdout
    assert "fill 300: 300/300 finished" in done.stderr  # progress while filling

    run = json.loads(out.read_text())
    assert [size["n"] for size in run["sizes"]] == [300]
    for size in run["sizes"]:
        assert set(size["reads"]) == set(READ_NAMES)
        for figure in size["reads"].values():
            assert len(figure["runs"]) == 3 and 0 < figure["p50"] <= figure["p95"]
        assert size["drain_tasks_per_s"] > 0
        assert 0 < size["pickup_ms"]["p50"] <= size["pickup_ms"]["p99"]
        assert size["tables"]["task_history"]["table_bytes"] > 0
    assert run["sizes"][0]["cleanup"]["deleted"] == 30  # the oldest 10%, aged past the horizon
    soak = run["soak"]
    assert soak["tasks"] == 400 and len(soak["samples"]) >= 2
    assert soak["samples"][-1]["drained"] == 400
    for name in ("scale.json", "scale.md", "scale.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0
