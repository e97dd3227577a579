"""The benchmark harness's pure parts: statistics, table, JSON rows, the pgbench script."""

from __future__ import annotations

import re

import pytest

from bench.ceiling import PLACEHOLDER, fill, script
from bench.harness import TINY, Result, format_table, percentile, summarize
from bench.scale import label, parse_count, parse_sizes
from sql import queries


def test_percentile_inclusive_interpolates():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_summarize_takes_the_median_and_keeps_min_max():
    result = summarize("taskq", "drain_jobs_per_s", "jobs/s", [3.0, 1.0, 2.0])
    row = result.as_json()
    assert (row["value"], row["min"], row["max"]) == (2.0, 1.0, 3.0)
    assert {"system", "metric", "value", "unit"} <= row.keys()


def test_table_has_a_column_per_system_and_a_dash_for_missing_figures():
    results = [
        Result("taskq", "drain_jobs_per_s", 1000.0, "jobs/s", [900.0, 1000.0, 1100.0]),
        Result("pgqueuer", "drain_jobs_per_s", 500.0, "jobs/s", [500.0]),
        Result("taskq", "http_create_rps", 1500.0, "req/s", [1500.0]),
    ]
    lines = format_table(results, TINY).splitlines()
    assert lines[0].startswith("sizes: tiny")
    assert lines[2] == "| metric | unit | taskq | pgqueuer |"
    drain = next(line for line in lines if line.startswith("| drain_jobs_per_s "))
    assert drain == "| drain_jobs_per_s | jobs/s | 1,000.0 [900.0-1,100.0] | 500.0 |"
    http = next(line for line in lines if line.startswith("| http_create_rps "))
    assert http.endswith("| 1,500.0 | - |")


def test_ceiling_script_uses_the_workers_own_queries_with_every_parameter_filled():
    text = script(200)
    assert not PLACEHOLDER.search(text)
    assert "\\set batch 200" in text
    # The claim and completion are the engine's, word for word apart from parameters.
    for name in ("claim_tasks", "complete_tasks"):
        words = re.sub(r"\s+", " ", PLACEHOLDER.sub("", queries[name])).split(" ")
        assert any(w in fill(queries[name]) for w in words if len(w) > 8)
    assert text.count("BEGIN;") == 1 and text.rstrip().endswith("COMMIT;")


def test_scale_sizes_parse_counts_with_suffixes_in_ascending_order():
    assert parse_sizes("1m, 10k,100k,10k") == (10_000, 100_000, 1_000_000)
    assert parse_count("2.5k") == 2_500 and parse_count("10M") == 10_000_000
    assert [label(n) for n in (10_000, 1_000_000, 2_500)] == ["10k", "1m", "2,500"]
    for bad in ("", "ten", "-5", "0"):
        with pytest.raises(ValueError):
            parse_sizes(bad)
