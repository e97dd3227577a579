"""The benchmark harness's parts that need no database: statistics, table, JSON rows, the
pgbench script, and the isolated peers' plumbing (interpreter, piped client, skipping)."""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import replace

import pytest

from bench.ceiling import PLACEHOLDER, fill, script
from bench.harness import TINY, Result, format_table, percentile, run_bench, summarize
from bench.isolated import IsolatedSystem, find_python, python_version
from bench.scale import label, parse_count, parse_sizes
from sql import queries
from tests.helpers import ROOT


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


class FileClient:
    """A peer client that notes each call in a file (with its process id)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def note(self, kind: str, keys) -> None:
        with open(self.path, "a") as out:
            out.write(f"{os.getpid()} {kind} {' '.join(keys)}\n")

    def enqueue_single(self, keys) -> None:
        for key in keys:
            self.note("single", [key])

    def enqueue_batch(self, keys, batch: int) -> None:
        for start in range(0, len(keys), batch):  # batch 0: ValueError, in the peer
            self.note("batch", keys[start : start + batch])

    def enqueue_paced(self, keys, gap: float) -> list[float]:
        committed = []
        for key in keys:
            self.note("paced", [key])
            committed.append(time.time())
        return committed


class FileSystem(IsolatedSystem):
    """An isolated peer whose 'database' is a file, run in this very interpreter."""

    name = "file"
    python = sys.executable

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(ROOT)}  # this test module is importable

    def local_client(self, url: str):
        return nullcontext(FileClient(url))


def test_an_isolated_peers_client_runs_every_workload_in_its_own_process(tmp_path):
    notes = tmp_path / "calls"
    before = time.time()
    with FileSystem().client(str(notes)) as client:
        client.enqueue_single(["a", "b"])
        client.enqueue_batch(["c", "d", "e"], 2)
        committed = client.enqueue_paced(["f"], 0.01)
        with pytest.raises(RuntimeError, match="peer client batch: ValueError"):
            client.enqueue_batch(["g"], 0)
        client.enqueue_single(["h"])  # an error leaves the client usable
    lines = [line.split(" ", 1) for line in notes.read_text().splitlines()]
    assert {pid for pid, _ in lines} != {str(os.getpid())} and len({pid for pid, _ in lines}) == 1
    assert [call for _, call in lines] == [
        "single a", "single b", "batch c d", "batch e", "paced f", "single h"
    ]  # fmt: skip
    assert len(committed) == 1 and before <= committed[0] <= time.time()


class BrokenFileSystem(FileSystem):
    """An isolated peer whose client cannot connect."""

    def local_client(self, url: str):
        raise ConnectionError(f"no server at {url}")


def test_an_isolated_client_that_cannot_open_says_why_and_leaves_no_process():
    import psutil

    before = {child.pid for child in psutil.Process().children()}
    opening = BrokenFileSystem().client("x")
    with pytest.raises(RuntimeError, match="peer client open: ConnectionError: no server at x"):
        opening.__enter__()
    assert {child.pid for child in psutil.Process().children()} <= before


def test_find_python_takes_an_interpreter_that_is_new_enough(monkeypatch):
    monkeypatch.delenv("TASKQ_BENCH_PYTHON", raising=False)
    python, version = find_python(sys.version_info[:2])
    assert version >= sys.version_info[:2] and python_version(python) == version
    assert python_version("/nonexistent/python3") is None


def test_a_peer_that_cannot_run_here_is_skipped_with_one_line(monkeypatch, capsys):
    class FuturePeer(IsolatedSystem):
        name = "future"
        requirement = "future-peer==1.0"
        min_python = (99, 0)

    monkeypatch.delenv("TASKQ_BENCH_PYTHON", raising=False)
    lines: list[str] = []
    results = run_bench("postgresql://unused", TINY, None, log=lines.append, systems=[FuturePeer()])
    assert results == []
    assert lines == ["future skipped: no Python >= 99.0 found (set TASKQ_BENCH_PYTHON)"]
    assert "| metric | unit |" in capsys.readouterr().out


def test_rounds_alternate_systems_and_run_only_the_selected_workloads(monkeypatch):
    import bench.harness as harness

    class Peer(IsolatedSystem):
        def __init__(self, name: str) -> None:
            self.name = name

    order: list[tuple[str, tuple[str, ...]]] = []

    def measure_round(url, template, system, sizes, workloads, record, log):
        order.append((system.name, tuple(workloads)))
        record("pickup_p50_ms", float(len(order)))

    monkeypatch.setattr(harness, "system_template", lambda url, system: nullcontext(system.name))
    monkeypatch.setattr(harness, "measure_round", measure_round)
    sizes = replace(TINY, repeats=2)
    results = harness.bench_systems("unused", [Peer("a"), Peer("b")], sizes, print, ("pickup",))
    assert order == [("a", ("pickup",)), ("b", ("pickup",))] * 2  # a b a b, never a a b b
    assert {(r.system, r.metric, tuple(r.runs)) for r in results} == {
        ("a", "pickup_p50_ms", (1.0, 3.0)), ("b", "pickup_p50_ms", (2.0, 4.0))}  # fmt: skip


def test_a_taskq_tree_system_runs_its_workers_from_that_tree(tmp_path):
    import subprocess

    from bench.taskq_system import TaskqTreeSystem

    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("")
    marker = "import sys; print('tree worker', *sys.argv[1:])"
    (tmp_path / "worker" / "__main__.py").write_text(marker)
    system = TaskqTreeSystem("main", str(tmp_path))
    (command,) = system.worker_commands("postgresql://unused", 2, tmp_path / "started")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert system.name == "taskq_main"
    # ahead of the working directory's own worker package, with the same arguments
    assert done.stdout.strip() == "tree worker --queues bench --log-level warning --concurrency 2"


def test_every_taskq_variant_installs_the_schema_at_head():
    from bench.taskq_system import TaskqSystem, TaskqTreeSystem
    from bench.taskq_topology import (
        TaskqDirectSystem,
        TaskqPgbouncerSystem,
        TaskqUnpreparedSystem,
    )

    variants = [TaskqSystem(), TaskqTreeSystem("main", str(ROOT)), TaskqDirectSystem(),
                TaskqUnpreparedSystem(), TaskqPgbouncerSystem()]  # fmt: skip
    assert [system.revision for system in variants] == ["head"] * len(variants)
    assert TaskqSystem("0013").revision == "0013"
