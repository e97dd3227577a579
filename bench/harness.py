"""The shared workload driver: every system runs the same workloads the same way.

Each figure is measured on a fresh database cloned from a template the system
installed its schema into, so no figure sees another's rows or bloat.
Workloads:

- enqueue: ``enqueue_n`` no-op jobs one per call, then in batches of ``batch``;
- drain: worker processes (1, then 2) wait idle; ``drain_n`` jobs arrive in one
  committed transaction; the clock runs from that commit until the system's
  own tables say no job is left unfinished (polled every 5 ms);
- pickup: one idle worker, ``pickup_n`` single enqueues ``pickup_gap`` apart,
  latency = job start (wall clock, same host) - enqueue commit.

Durable commits for everyone: each bench database has ``synchronous_commit = on``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from bench.system import System, SystemUnavailable

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; ``FULL`` is the issue's, ``QUICK`` keeps ``--quick`` under 5 minutes."""

    label: str
    enqueue_n: int
    batch: int
    drain_n: int
    pickup_n: int
    pickup_gap: float
    repeats: int
    http_n: int
    http_clients: int
    e2e_n: int
    sse_streams: int
    settle: float = 1.0  # seconds idle workers get after saying ready, before any timing
    ceiling_clients: tuple[int, ...] = (1, 2, 4)  # pgbench connections tried; the best counts


FULL = Sizes("full", 20_000, 1_000, 20_000, 200, 0.02, 3, 20_000, 16, 5_000, 1_000)
QUICK = Sizes("quick", 5_000, 1_000, 10_000, 100, 0.02, 1, 5_000, 16, 2_000, 200)
# For the smoke test only: every code path, figures meaningless. No SSE streams.
TINY = Sizes("tiny", 50, 10, 100, 5, 0.01, 1, 100, 4, 50, 0, settle=0.2, ceiling_clients=(2,))
SIZES = {s.label: s for s in (FULL, QUICK, TINY)}


@dataclass
class Result:
    """One figure: the median of its runs, with min and max."""

    system: str
    metric: str
    value: float
    unit: str
    runs: list[float] = field(default_factory=list)

    def as_json(self) -> dict:
        """The JSON row: system, metric, value, unit (+ min, max, runs)."""
        row = asdict(self)
        if self.runs:
            row["min"], row["max"] = min(self.runs), max(self.runs)
        return row


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname``."""
    return urlsplit(url)._replace(path="/" + dbname).geturl()


def admin(url: str, statement: sql.Composable) -> None:
    """Run one statement on the server's maintenance database."""
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def create_database(url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (durable commits on) and return its URL."""
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
    admin(url, stmt)
    admin(
        url,
        sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(name)),
    )
    return with_database(url, name)


def drop_database(url: str, name: str) -> None:
    """Drop database ``name``, closing its connections."""
    admin(url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def system_template(url: str, system: System) -> Iterator[str]:
    """A template database with ``system``'s schema installed; its name."""
    name = f"bench_tpl_{system.name}_{uuid.uuid4().hex[:6]}"
    try:
        system.install(create_database(url, name))
        yield name
    finally:
        drop_database(url, name)


@contextmanager
def fresh_database(url: str, template: str) -> Iterator[str]:
    """A database cloned from ``template`` for one figure; its URL."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        yield create_database(url, name, template)
    finally:
        drop_database(url, name)


def keys(prefix: str, n: int) -> list[str]:
    """Job keys ``prefix0 … prefix{n-1}``."""
    return [f"{prefix}{i}" for i in range(n)]


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (inclusive method) of ``values``."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


class Workers:
    """Worker processes of one system, started idle and stopped with SIGTERM."""

    def __init__(self, system: System, url: str, procs: int, record: Path) -> None:
        self.system, self.url, self.procs = system, url, procs
        self.ready_lines = 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **system.worker_env(url, record)}
        self.popens = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=env)
            for cmd in system.worker_commands(url, procs, record)
        ]
        for popen in self.popens:
            threading.Thread(target=self._read, args=(popen,), daemon=True).start()

    def _read(self, popen: subprocess.Popen) -> None:
        for line in popen.stdout:
            if line.strip() == "ready":
                self.ready_lines += 1

    def wait_ready(self, settle: float, timeout: float = 60) -> None:
        """Wait until the workers listen, then ``settle`` seconds more."""
        self.system.wait_ready(self.url, self.procs, lambda: self.ready_lines, timeout)
        time.sleep(settle)

    def stop(self) -> None:
        """SIGTERM every process; kill what is still alive after 30 s."""
        for popen in self.popens:
            if popen.poll() is None:
                popen.terminate()
        for popen in self.popens:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


@contextmanager
def running_workers(
    system: System, url: str, procs: int, settle: float = 1.0
) -> Iterator[tuple[Workers, Path]]:
    """Started, ready workers and the prefix of their record files; stopped after."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        record = Path(tmp) / "started"
        workers = Workers(system, url, procs, record)
        try:
            workers.wait_ready(settle)
            yield workers, record
        finally:
            workers.stop()


def unfinished(system: System, url: str) -> Callable[[], int]:
    """A function that counts the system's unfinished jobs on one open connection."""
    conn = psycopg.connect(url, autocommit=True)
    query = system.unfinished_sql

    def count() -> int:
        return conn.execute(query).fetchone()[0]

    count.close = conn.close  # type: ignore[attr-defined]
    return count


def wait_until_done(count: Callable[[], int], timeout: float, interval: float = 0.005) -> float:
    """Poll until ``count()`` is 0; the wall-clock time it was first seen 0."""
    deadline = time.monotonic() + timeout
    while count() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("jobs still unfinished")
        time.sleep(interval)
    return time.time()


def measure_enqueue_single(system: System, url: str, sizes: Sizes) -> float:
    """Jobs/s enqueueing one job per call."""
    with system.client(url) as client:
        t0 = time.perf_counter()
        client.enqueue_single(keys("s", sizes.enqueue_n))
        return sizes.enqueue_n / (time.perf_counter() - t0)


def measure_enqueue_batch(system: System, url: str, sizes: Sizes) -> float:
    """Jobs/s enqueueing ``sizes.batch`` jobs per call."""
    with system.client(url) as client:
        t0 = time.perf_counter()
        client.enqueue_batch(keys("b", sizes.enqueue_n), sizes.batch)
        return sizes.enqueue_n / (time.perf_counter() - t0)


def warm_up(system: System, url: str, client, count: Callable[[], int], procs: int) -> None:
    """Run a few jobs through idle workers so every process has connected and listens."""
    client.enqueue_batch(keys("w", 4 * procs), 4 * procs)
    wait_until_done(count, 60)


def measure_drain(system: System, url: str, sizes: Sizes, procs: int) -> float:
    """Jobs/s: ``drain_n`` jobs committed at once, idle workers, until none is unfinished."""
    count = unfinished(system, url)
    try:
        with running_workers(system, url, procs, sizes.settle), system.client(url) as client:
            warm_up(system, url, client, count, procs)
            client.enqueue_batch(keys("d", sizes.drain_n), sizes.drain_n)
            committed = time.time()
            done = wait_until_done(count, 600)
            return sizes.drain_n / (done - committed)
    finally:
        count.close()


def measure_drain_procs(procs: int, system: System, url: str, sizes: Sizes) -> float:
    """``measure_drain`` on ``procs`` worker processes (argument order for ``partial``)."""
    return measure_drain(system, url, sizes, procs)


def measure_pickup(system: System, url: str, sizes: Sizes) -> list[float]:
    """Milliseconds from each enqueue commit to its job's start, one idle worker."""
    pickup_keys = keys("p", sizes.pickup_n)
    return start_delays(
        system,
        url,
        sizes,
        pickup_keys,
        lambda client, _count: client.enqueue_paced(pickup_keys, sizes.pickup_gap),
    )


def start_delays(
    system: System, url: str, sizes: Sizes, job_keys: list[str],
    commits: Callable[[Any, Callable[[], int]], list[float]],
) -> list[float]:  # fmt: skip
    """Milliseconds from each of the times ``commits(client, count)`` returns (one per key
    of ``job_keys``, as it enqueues them) to that job's start: one idle, warmed worker."""
    count = unfinished(system, url)
    try:
        with (
            running_workers(system, url, 1, sizes.settle) as (workers, record),
            system.client(url) as client,
        ):
            warm_up(system, url, client, count, 1)
            committed = commits(client, count)
            wait_until_done(count, 60)
            workers.stop()  # the workers write their start records as they exit
            started = system.start_times(url, record)
    finally:
        count.close()
    return [(started[k] - c) * 1000 for k, c in zip(job_keys, committed, strict=True)]


def summarize(system: str, metric: str, unit: str, runs: list[float]) -> Result:
    """The median of ``runs`` as one Result."""
    return Result(system, metric, statistics.median(runs), unit, runs)


def bench_enqueue(url: str, sizes: Sizes, log: Callable[[str], None]) -> list[Result]:
    """taskq's enqueue workloads alone, without and with unique keys (``taskq bench
    --enqueue-only``): what uniqueness costs a create and a batch."""
    from bench.taskq_system import TaskqSystem, unique_metrics

    system = TaskqSystem()
    runs: dict[str, list[float]] = {}
    with system_template(url, system) as template:
        for _ in range(sizes.repeats):
            figures = []
            for metric, measure in (
                ("enqueue_single_jobs_per_s", measure_enqueue_single),
                ("enqueue_batch_jobs_per_s", measure_enqueue_batch),
            ):
                with fresh_database(url, template) as db:
                    figures.append((metric, measure(system, db, sizes), "jobs/s"))
            figures += unique_metrics(system, lambda: fresh_database(url, template), sizes)
            for metric, value, _ in figures:
                runs.setdefault(metric, []).append(value)
                log(f"  taskq {metric} = {value:,.1f}")
    return [summarize(system.name, m, "jobs/s", values) for m, values in runs.items()]


# ``taskq bench --workload`` (default: all); extra: a system's own figures (taskq: HTTP, end to
# end, SSE, the pgbench ceiling, queue limits).
WORKLOADS = ("enqueue_single", "enqueue_batch", "drain_1proc", "drain_2proc", "pickup", "extra")


def measure_round(
    url: str, template: str, system: System, sizes: Sizes, workloads: Collection[str],
    record: Callable[[str, float], None], log: Callable[[str], None],
) -> None:  # fmt: skip
    """One run of the selected shared workloads on ``system``, each on a fresh database."""
    measures: list[tuple[str, Callable[[System, str, Sizes], float]]] = []
    if "enqueue_single" in workloads:
        measures.append(("enqueue_single_jobs_per_s", measure_enqueue_single))
    if "enqueue_batch" in workloads:
        measures.append(("enqueue_batch_jobs_per_s", measure_enqueue_batch))
    for procs in (1, 2):
        if f"drain_{procs}proc" in workloads:
            drain = partial(measure_drain_procs, procs)
            measures.append((f"drain_{procs}proc_jobs_per_s", drain))
    figures = {}
    for metric, measure in measures:
        log(f"  {system.name} {metric} …")  # a drain can take a minute: say what runs
        with fresh_database(url, template) as db:
            figures[metric] = measure(system, db, sizes)
        record(metric, figures[metric])
    drains = [v for m, v in figures.items() if m.startswith("drain_")]
    if drains:
        record("drain_jobs_per_s", max(drains))
    if "pickup" in workloads:
        with fresh_database(url, template) as db:
            latencies = measure_pickup(system, db, sizes)
        for pct in (50, 95, 99):
            record(f"pickup_p{pct}_ms", percentile(latencies, pct))


def bench_systems(
    url: str,
    systems: list[System],
    sizes: Sizes,
    log: Callable[[str], None],
    workloads: Collection[str] = WORKLOADS,
) -> list[Result]:
    """The selected workloads on every system, ``sizes.repeats`` rounds.

    Each round runs every system once, in turn, so the drift of a shared,
    loaded machine falls on all of them alike (A/B in one session).
    """
    runs: dict[tuple[str, str], list[float]] = {}
    extra: dict[tuple[str, str], tuple[list[float], str]] = {}
    with ExitStack() as stack:
        templates = [stack.enter_context(system_template(url, system)) for system in systems]
        for repeat in range(sizes.repeats):
            for system, template in zip(systems, templates, strict=True):
                log(f"  {system.name}: run {repeat + 1} of {sizes.repeats}")

                def record(metric: str, value: float, name: str = system.name) -> None:
                    runs.setdefault((name, metric), []).append(value)
                    log(f"  {name} {metric} = {value:,.1f}")

                measure_round(url, template, system, sizes, workloads, record, log)
        for system, template in zip(systems, templates, strict=True):
            for _ in range(sizes.repeats if "extra" in workloads else 0):
                for metric, value, unit in system.extra_metrics(
                    lambda t=template: fresh_database(url, t), sizes
                ):
                    extra.setdefault((system.name, metric), ([], unit))[0].append(value)
                    log(f"  {system.name} {metric} = {value:,.1f}")
    results = [
        summarize(name, metric, "ms" if metric.endswith("_ms") else "jobs/s", values)
        for (name, metric), values in runs.items()
    ]
    results += [summarize(n, m, unit, values) for (n, m), (values, unit) in extra.items()]
    return results


def available_systems() -> list[System]:
    """taskq (when its engine is installed) and the peers."""
    from bench.peers_chancy import ChancySystem
    from bench.peers_oban import ObanSystem
    from bench.peers_pgqueuer import PgQueuerSystem
    from bench.peers_procrastinate import ProcrastinateSystem

    systems: list[System] = []
    try:
        from bench.taskq_system import TaskqSystem
        from bench.taskq_topology import (
            TaskqDirectSystem,
            TaskqPgbouncerSystem,
            TaskqUnpreparedSystem,
        )

        systems.append(TaskqSystem())
        # The deploy guide's variants, benchmarked only when named.
        systems += [TaskqDirectSystem(), TaskqUnpreparedSystem(), TaskqPgbouncerSystem()]
    except ImportError as exc:
        print(f"taskq left out: {exc}", file=sys.stderr)
    return [*systems, PgQueuerSystem(), ProcrastinateSystem(), ObanSystem(), ChancySystem()]


METRIC_ORDER = [
    "enqueue_single_jobs_per_s",
    "enqueue_batch_jobs_per_s",
    "drain_jobs_per_s",
    "drain_1proc_jobs_per_s",
    "drain_2proc_jobs_per_s",
    "pickup_p50_ms",
    "pickup_p95_ms",
    "pickup_p99_ms",
]


def format_table(results: list[Result], sizes: Sizes) -> str:
    """A markdown table: one row per metric, one column per system (median [min-max])."""
    systems = list(dict.fromkeys(r.system for r in results))
    by_key = {(r.system, r.metric): r for r in results}
    present = list(dict.fromkeys(r.metric for r in results))
    metrics = [m for m in METRIC_ORDER if m in present]
    metrics += [m for m in present if m not in METRIC_ORDER]

    def cell(r: Result | None) -> str:
        if r is None:
            return "-"
        if len(r.runs) > 1:
            return f"{r.value:,.1f} [{min(r.runs):,.1f}-{max(r.runs):,.1f}]"
        return f"{r.value:,.1f}"

    lines = [
        f"sizes: {sizes.label} (enqueue {sizes.enqueue_n:,}, batch {sizes.batch:,}, "
        f"drain {sizes.drain_n:,}, pickup {sizes.pickup_n} x {sizes.pickup_gap * 1000:.0f} ms, "
        f"repeats {sizes.repeats}; median [min-max])",
        "",
        "| metric | unit | " + " | ".join(systems) + " |",
        "|---|---|" + "---|" * len(systems),
    ]
    for metric in metrics:
        unit = next((r.unit for r in results if r.metric == metric), "")
        row = [cell(by_key.get((s, metric))) for s in systems]
        lines.append(f"| {metric} | {unit} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_bench(
    url: str,
    sizes: Sizes,
    json_path: Path | None,
    only: list[str] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    enqueue_only: bool = False,
    systems: list[System] | None = None,
    workloads: Collection[str] = WORKLOADS,
) -> list[Result]:
    """Benchmark every system (default: ``available_systems()``; ``enqueue_only``: taskq's
    enqueue workloads, without and with unique keys; ``workloads``: only these of
    ``WORKLOADS``); print the table; write JSON (and, full runs of everything,
    results/). A system that cannot run here is skipped with one line."""
    results: list[Result] = []
    started = time.monotonic()
    if systems is None:
        systems = [] if enqueue_only else available_systems()
    ready = []
    for system in systems:
        if (system.name not in only) if only else system.on_request:
            continue
        try:
            system.prepare()
        except SystemUnavailable as exc:
            log(f"{system.name} skipped: {exc}")
            continue
        ready.append(system)
    if ready:
        log(f"{', '.join(s.name for s in ready)}: {sizes.label} sizes, {', '.join(workloads)}")
        results += bench_systems(url, ready, sizes, log, workloads)
    if enqueue_only:
        log(f"taskq enqueue, without and with unique keys: {sizes.label} sizes")
        results += bench_enqueue(url, sizes, log)
    table = format_table(results, sizes)
    print(table)
    payload = {
        "sizes": asdict(sizes),
        "seconds": round(time.monotonic() - started, 1),
        "results": [r.as_json() for r in results],
    }
    if json_path:
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
    everything = set(workloads) == set(WORKLOADS)
    if sizes is FULL and not only and not enqueue_only and everything:
        from bench.plot import plot_results

        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS_DIR / "results.md").write_text(table + "\n")
        plot_results(payload["results"], RESULTS_DIR / "results.png")
    return results
