"""``taskq bench --scale``: what each read costs as finished work piles up; and a soak.

One database grows through the sizes, smallest first. At each size N it is
filled through the product's own write paths until one user owns N finished
tasks with 3 history rows each (created by the batch path, the binary COPY of
``taskq.enqueue.insert_tasks``; claimed and completed set-wise by the worker's
own ``claim_tasks`` query and ``worker.completer.write_outcomes``, triggers and
all) beside a backlog of ``backlog`` tasks waiting in a queue nobody serves.
Then ``VACUUM (ANALYZE)`` (the steady state autovacuum keeps) and:

- every read of issue 10, p50/p95 over ``repeats`` calls after two warm-ups:
  through a real API process (``taskq api``, 2 gunicorn processes) by HTTP
  path, ``SELECT * FROM queue_stats`` over SQL, and what ``taskq stats``
  runs. Reads are named by what a client asks, not by the queries behind
  them, so the same bench measures any implementation of them;
- drain: ``drain_n`` tasks committed at once, 2 ``taskq worker`` processes
  (``bench.harness.measure_drain``), tasks/s; pickup: ``pickup_n`` single
  enqueues to one idle worker, commit -> start, p50/p95/p99 (``measure_pickup``);
- clean-up: every task up to the oldest 10% of the owner's finished tasks aged
  past the horizon (the drain's finished tasks among them), then
  ``cleanup_old_tasks``'s ``delete_finished_tasks``: how many, seconds, tasks/s.

The soak (``--soak N``) runs N tasks through the worker's SQL on one
connection, 1,000 a round (enqueue, claim, complete), holding ``backlog``
tasks waiting; every claim is timed, and table and index sizes and dead tuples
are sampled every few seconds (the ``table_health`` view, ``ix_tasks_claim``).

Results: ``scale.json``, ``scale.md`` and ``scale.png`` in the results folder.
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.harness import (
    QUICK,
    RESULTS_DIR,
    create_database,
    drop_database,
    measure_drain,
    measure_pickup,
    percentile,
)
from bench.taskq_system import TASK_DEFAULTS, TaskqSystem

Log = Callable[[str], None]
OWNER, ADMIN, PASSWORD = "scale-owner", "scale-admin", "Scale-Bench-4242"
FILL_QUEUE, BACKLOG_QUEUE, SOAK_QUEUE = "scale-fill", "scale-backlog", "scale-soak"
SEARCH_WORD = "quarterly"  # in every 100th title: a search that matches 1% of the tasks
WORDS = ("report", "invoice", "resize", "email", "backup", "sync", "export", "thumbnail")
# Each read: (name, who asks, path); the names are the rows of issue 10's table.
HTTP_READS = (
    ("GET /tasks (first page, count)", "owner", "/api/v1/tasks"),
    (f"GET /tasks?search={SEARCH_WORD}", "owner", f"/api/v1/tasks?search={SEARCH_WORD}"),
    ("GET /tasks/stats", "owner", "/api/v1/tasks/stats"),
    ("GET /admin/tasks", "admin", "/api/v1/admin/tasks"),
    ("GET /admin/queues", "admin", "/api/v1/admin/queues"),
    ("GET /metrics", None, "/metrics"),
)
QUEUE_STATS, TASKQ_STATS = "SELECT * FROM queue_stats", "taskq stats"
READ_NAMES = [name for name, _, _ in HTTP_READS] + [QUEUE_STATS, TASKQ_STATS]


@dataclass(frozen=True)
class ScaleSettings:
    """The sizes and workloads of a scale run."""

    sizes: tuple[int, ...]
    soak: int = 0
    backlog: int = 10_000
    repeats: int = 20
    drain_n: int = 10_000
    pickup_n: int = 100
    pickup_gap: float = 0.02
    fill_batch: int = 10_000
    soak_batch: int = 1_000
    sample_every: float = 5.0
    settle: float = 1.0


def tiny(settings: ScaleSettings) -> ScaleSettings:
    """Smoke-test workloads (every code path, figures meaningless)."""
    return replace(settings, backlog=100, repeats=3, drain_n=100, pickup_n=5, fill_batch=500,
                   soak_batch=200, sample_every=0.5, settle=0.2)  # fmt: skip


def parse_count(text: str) -> int:
    """``"10k"`` -> 10000, ``"1m"`` -> 1000000, ``"2500"`` -> 2500."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise ValueError(f"not a count: {text!r} (e.g. 10k, 1m, 2500)")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"10k,100k,1m"`` -> (10000, 100000, 1000000), ascending, each positive."""
    sizes = tuple(sorted({parse_count(part) for part in text.split(",") if part.strip()}))
    if not sizes or sizes[0] <= 0:
        raise ValueError(f"no positive sizes in {text!r}")
    return sizes


def label(n: int) -> str:
    """10000 -> ``10k``, 1000000 -> ``1m``."""
    for factor, suffix in ((1_000_000, "m"), (1_000, "k")):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return f"{n:,}"


class ScaleSystem(TaskqSystem):
    """taskq as the harness drives it, counting only the bench queue as unfinished work
    (the backlog waits in a queue of its own)."""

    unfinished_sql = (
        "SELECT (EXISTS (SELECT 1 FROM tasks WHERE queue = 'bench'"
        " AND status IN ('PENDING', 'RETRYING'))"
        " OR EXISTS (SELECT 1 FROM tasks WHERE status = 'PROCESSING' AND queue = 'bench'))::int"
    )


def task_rows(start: int, n: int, queue: str) -> list[dict[str, Any]]:
    """``n`` no-op tasks numbered from ``start``; every 100th title has the search word."""
    rows = []
    for i in range(start, start + n):
        title = f"{WORDS[i % len(WORDS)]} {i}" + (f" {SEARCH_WORD}" if i % 100 == 0 else "")
        rows.append({**TASK_DEFAULTS, "title": title, "queue": queue, "payload": {"n": i}})
    return rows


def finish_claimed(conn: psycopg.Connection, queue: str, limit: int) -> tuple[int, float]:
    """Claim up to ``limit`` tasks of ``queue`` and complete them, as a worker does
    (claim_tasks, then write_outcomes); how many, and the claim's milliseconds."""
    from sql import queries
    from worker.completer import Outcomes, write_outcomes

    params = {"queues": [queue], "limit": limit, "worker_id": "bench-scale", "lease_seconds": 600}
    t0 = time.perf_counter()
    with conn.transaction():
        claimed = conn.execute(queries["claim_tasks"], params, prepare=False).fetchall()
    claim_ms = (time.perf_counter() - t0) * 1000
    outcomes = Outcomes()
    for row in claimed:
        outcomes.complete(row["id"], row["lease_token"], None)
    with conn.transaction():
        write_outcomes(conn, outcomes, 0.0)
    return len(claimed), claim_ms


@dataclass
class Grown:
    """The database grown so far: its URL, the owner, how many finished tasks it holds."""

    url: str
    owner_id: int
    finished: int = 0
    numbered: int = 0  # tasks made by the fill so far (their numbers)
    fill_seconds: float = 0.0
    filled: int = 0


def fill_to(
    grown: Grown, target: int, batch: int, log: Log, connections: int = 2
) -> dict[str, float]:
    """Enqueue and finish tasks of the owner until ``target`` are finished; the fill rate.

    ``connections`` fill side by side (one per core): each takes the next ``batch`` of
    numbers, inserts them and finishes as many tasks of the fill queue as it inserted.
    A claim takes at most what its connection still owes, so every claim finds work.
    """
    from taskq.enqueue import insert_tasks

    need = target - grown.finished
    started = time.monotonic()
    lock = threading.Lock()
    progress = {"given": 0, "done": 0}

    def next_batch() -> tuple[int, int] | None:
        with lock:
            n = min(batch, need - progress["given"])
            if n <= 0:
                return None
            first = grown.numbered + progress["given"]
            progress["given"] += n
            return first, n

    def fill() -> None:
        with psycopg.connect(grown.url, autocommit=True, row_factory=dict_row) as conn:
            while (job := next_batch()) is not None:
                first, n = job
                insert_tasks(conn, grown.owner_id, task_rows(first, n, FILL_QUEUE))
                finished = 0
                while finished < n:
                    finished += finish_claimed(conn, FILL_QUEUE, n - finished)[0]
                with lock:
                    progress["done"] += n

    with ThreadPoolExecutor(connections) as pool:
        futures = [pool.submit(fill) for _ in range(connections)]
        finished = False
        while not finished:
            finished = not wait(futures, timeout=5).not_done
            done, now = progress["done"], time.monotonic()
            rate = done / (now - started)
            eta = (need - done) / rate if rate else 0
            log(f"  fill {label(target)}: {grown.finished + done:,}/{target:,} finished "
                f"({rate:,.0f} tasks/s, {eta:,.0f} s to go)")  # fmt: skip
        for future in futures:
            future.result()
    seconds = time.monotonic() - started
    grown.numbered += need
    grown.finished += need
    grown.filled += need
    grown.fill_seconds += seconds
    return {"filled": need, "seconds": round(seconds, 1),
            "tasks_per_s": round(need / seconds, 1) if seconds else 0.0}  # fmt: skip


def vacuum_analyze(url: str) -> float:
    """VACUUM (ANALYZE) the two big tables; seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tasks")
        conn.execute("VACUUM (ANALYZE) task_history")
    return time.perf_counter() - t0


def login(host: str, port: int, username: str) -> str:
    """An access token of ``username`` (the API's login)."""
    from bench.taskq_http import request

    conn = http.client.HTTPConnection(host, port, timeout=60)
    status, reply = request(conn, "POST", "/api/v1/auth/login",
                            {"username": username, "password": PASSWORD})  # fmt: skip
    conn.close()
    if status != 200:
        raise RuntimeError(f"login of {username} failed: {status} {reply}")
    return reply["tokens"]["access"]


def timed(call: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """p50/p95 (ms) of ``repeats`` calls after two warm-ups."""
    for _ in range(2):
        call()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        runs.append((time.perf_counter() - t0) * 1000)
    p95 = percentile(runs, 95) if len(runs) > 1 else runs[0]
    return {"p50": round(statistics.median(runs), 2), "p95": round(p95, 2),
            "runs": [round(r, 2) for r in runs]}  # fmt: skip


def measure_reads(url: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Every read of issue 10 at the current size."""
    from bench.taskq_http import running_api
    from worker.stats import view_report

    figures: dict[str, dict[str, Any]] = {}
    with running_api(url) as (host, port, _):
        tokens = {"owner": login(host, port, OWNER), "admin": login(host, port, ADMIN), None: None}
        conn = http.client.HTTPConnection(host, port, timeout=120)
        for name, who, path in HTTP_READS:
            headers = {"Authorization": f"Bearer {tokens[who]}"} if tokens[who] else {}

            def get(path: str = path, headers: dict = headers) -> None:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")

            figures[name] = timed(get, repeats)
        conn.close()
    with psycopg.connect(url, autocommit=True) as sql_conn:
        figures[QUEUE_STATS] = timed(lambda: sql_conn.execute(QUEUE_STATS).fetchall(), repeats)
    figures[TASKQ_STATS] = timed(lambda: view_report(url), repeats)
    return figures


def measure_cleanup(grown: Grown, fraction: float = 0.1) -> dict[str, float]:
    """Age the oldest ``fraction`` of the finished tasks past the horizon; time the clean-up."""
    from worker.cleanup import delete_finished_tasks

    n = int(grown.finished * fraction)
    with psycopg.connect(grown.url, autocommit=True, row_factory=dict_row) as conn:
        # Everything up to the n-th oldest finished task was created 41 days ago (the
        # backlog before it too: ids grow with creation time, as in a real queue).
        cut = conn.execute(
            "SELECT max(id) AS id FROM (SELECT id FROM tasks WHERE user_id = %s"
            " AND status = 'COMPLETED' ORDER BY id LIMIT %s) oldest",
            (grown.owner_id, n),
        ).fetchone()["id"]
        conn.execute(
            "UPDATE tasks SET created_at = now() - interval '41 days',"
            " completed_at = CASE WHEN status = 'COMPLETED' THEN now() - interval '40 days' END"
            " WHERE id <= %s",
            (cut,),
        )
        conn.execute("VACUUM tasks")
        t0 = time.perf_counter()
        deleted = delete_finished_tasks(conn, 30, 1000)
        seconds = time.perf_counter() - t0
    grown.finished -= deleted
    return {"deleted": deleted, "seconds": round(seconds, 3),
            "tasks_per_s": round(deleted / seconds, 1) if seconds else 0.0}  # fmt: skip


def table_sizes(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """The ``table_health`` rows of tasks and task_history, and the claim index's bytes."""
    rows = conn.execute(
        "SELECT table_name, live_tuples, dead_tuples, table_bytes, index_bytes,"
        " last_vacuum::text AS last_vacuum FROM table_health"
        " WHERE table_name IN ('tasks', 'task_history')"
    ).fetchall()
    sizes = {row["table_name"]: dict(row) for row in rows}
    claim = conn.execute("SELECT pg_relation_size('ix_tasks_claim') AS b").fetchone()["b"]
    sizes.setdefault("tasks", {})["claim_index_bytes"] = claim
    return sizes


def run_soak(url: str, settings: ScaleSettings, log: Log) -> dict[str, Any]:
    """``settings.soak`` tasks through the worker's SQL with a standing backlog."""
    from taskq.enqueue import insert_tasks

    total, batch = settings.soak, settings.soak_batch
    samples: list[dict[str, Any]] = []
    claims: list[float] = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        insert_tasks(conn, None, task_rows(0, settings.backlog, SOAK_QUEUE))
        numbered, drained = settings.backlog, 0
        started = last = time.monotonic()
        window: list[float] = []
        last_drained = 0

        def sample(now: float) -> None:
            nonlocal last, last_drained, window
            sizes = table_sizes(conn)
            samples.append({
                "seconds": round(now - started, 1), "drained": drained,
                "tasks_per_s": round((drained - last_drained) / max(now - last, 1e-9), 1),
                "claim_p50_ms": round(statistics.median(window), 2) if window else None,
                "claim_p99_ms": round(percentile(window, 99), 2) if len(window) > 1 else None,
                **{f"{table}_{key}": value for table, row in sizes.items()
                   for key, value in row.items() if key != "table_name"},
            })  # fmt: skip
            s = samples[-1]
            log(
                f"  soak: {drained:,}/{total:,} drained, {s['tasks_per_s']:,.0f} tasks/s, "
                f"claim p50 {s['claim_p50_ms']} ms, tasks {s['tasks_table_bytes'] / 1e6:,.0f}"
                f" + {s['tasks_index_bytes'] / 1e6:,.0f} MB, claim index "
                f"{s['tasks_claim_index_bytes'] / 1e6:,.1f} MB, dead {s['tasks_dead_tuples']:,}"
            )
            last, last_drained, window = now, drained, []

        sample(started)
        while drained < total:
            n = min(batch, total - drained)
            insert_tasks(conn, None, task_rows(numbered, n, SOAK_QUEUE))
            numbered += n
            count, claim_ms = finish_claimed(conn, SOAK_QUEUE, n)
            drained += count
            claims.append(claim_ms)
            window.append(claim_ms)
            now = time.monotonic()
            if now - last >= settings.sample_every or drained >= total:
                sample(now)
        seconds = time.monotonic() - started
    return {
        "tasks": total,
        "seconds": round(seconds, 1),
        "tasks_per_s": round(drained / seconds, 1),
        "claim_p50_ms": round(statistics.median(claims), 2),
        "claim_p99_ms": round(percentile(claims, 99), 2) if len(claims) > 1 else claims[0],
        "samples": samples,
    }


def make_users(url: str) -> int:
    """The owner of the filled tasks and an admin, both with ``PASSWORD``; the owner's id."""
    from app.auth import create_admin_user, hash_password

    create_admin_user(url, ADMIN, f"{ADMIN}@example.com", PASSWORD)
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, %s) RETURNING id",
            (OWNER, f"{OWNER}@example.com", hash_password(PASSWORD)),
        ).fetchone()[0]


@dataclass
class ScaleRun:
    """Everything one run measured (the JSON document)."""

    settings: dict[str, Any]
    sizes: list[dict[str, Any]] = field(default_factory=list)
    soak: dict[str, Any] | None = None
    seconds: float = 0.0


def run_scale(
    server_url: str, settings: ScaleSettings, results_dir: Path | None, log: Log
) -> ScaleRun:
    """Grow one database through ``settings.sizes``, measuring at each; then the soak."""
    from taskq.enqueue import insert_tasks
    from taskq.migrate import upgrade

    run = ScaleRun(settings=asdict(settings))
    started = time.monotonic()
    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    system = ScaleSystem()
    harness_sizes = replace(QUICK, label="scale", drain_n=settings.drain_n,
                            pickup_n=settings.pickup_n, pickup_gap=settings.pickup_gap,
                            settle=settings.settle)  # fmt: skip
    url = create_database(server_url, name)
    try:
        upgrade(url)
        grown = Grown(url, make_users(url))
        with psycopg.connect(url, autocommit=True) as conn:
            rows = task_rows(0, settings.backlog, BACKLOG_QUEUE)
            for start in range(0, len(rows), settings.fill_batch):
                insert_tasks(conn, grown.owner_id, rows[start : start + settings.fill_batch])
        for n in settings.sizes:
            log(f"scale {label(n)}: filling")
            fill = fill_to(grown, n, settings.fill_batch, log)
            vacuum = vacuum_analyze(url)
            log(f"scale {label(n)}: reads")
            reads = measure_reads(url, settings.repeats)
            for read, figure in reads.items():
                log(f"  {read}: p50 {figure['p50']} ms, p95 {figure['p95']} ms")
            drain = measure_drain(system, url, harness_sizes, 2)
            pickup = measure_pickup(system, url, harness_sizes)
            log(f"  drain {drain:,.0f} tasks/s; pickup p50 {percentile(pickup, 50):.1f} ms")
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
                tables = table_sizes(conn)
            cleanup = measure_cleanup(grown)
            log(f"  clean-up: {cleanup['deleted']:,} tasks in {cleanup['seconds']} s")
            run.sizes.append({
                "n": n, "label": label(n), "fill": fill, "vacuum_seconds": round(vacuum, 1),
                "reads": reads, "drain_tasks_per_s": round(drain, 1),
                "pickup_ms": {f"p{p}": round(percentile(pickup, p), 2) for p in (50, 95, 99)},
                "cleanup": cleanup, "tables": tables,
            })  # fmt: skip
        if settings.soak:
            log(f"soak: {settings.soak:,} tasks")
            run.soak = run_soak(url, settings, log)
    finally:
        drop_database(server_url, name)
    run.seconds = round(time.monotonic() - started, 1)
    if results_dir is not None:
        write_results(run, results_dir)
    return run


def format_markdown(run: ScaleRun) -> str:
    """The run as markdown tables: reads p50 (p95) per size, then drain, pickup, clean-up."""
    sizes = run.sizes
    head = "| read | " + " | ".join(s["label"] for s in sizes) + " |"
    lines = ["Reads, ms: p50 (p95)", "", head, "|---|" + "---|" * len(sizes)]
    for read in READ_NAMES:
        cells = [f"{s['reads'][read]['p50']:,.1f} ({s['reads'][read]['p95']:,.1f})"
                 for s in sizes]  # fmt: skip
        lines.append(f"| `{read}` | " + " | ".join(cells) + " |")
    rows = [
        ("drain, tasks/s (2 worker processes)", lambda s: f"{s['drain_tasks_per_s']:,.0f}"),
        ("pickup p50 / p99, ms", lambda s: "{p50:.1f} / {p99:.1f}".format(**s["pickup_ms"])),
        ("clean-up: oldest finished tasks deleted, in s",
         lambda s: f"{s['cleanup']['deleted']:,} in {s['cleanup']['seconds']:,.2f}"),
        ("fill, tasks/s", lambda s: f"{s['fill']['tasks_per_s']:,.0f}"),
        ("tasks table + indexes, MB", lambda s: mb(s["tables"]["tasks"])),
        ("task_history + indexes, MB", lambda s: mb(s["tables"]["task_history"])),
    ]  # fmt: skip
    lines += ["", "| figure | " + " | ".join(s["label"] for s in sizes) + " |",
              "|---|" + "---|" * len(sizes)]  # fmt: skip
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(s) for s in sizes) + " |")
    if run.soak:
        soak = run.soak
        first, last = soak["samples"][0], soak["samples"][-1]
        lines += [
            "",
            f"Soak: {soak['tasks']:,} tasks in {soak['seconds']:,} s ({soak['tasks_per_s']:,.0f} "
            f"tasks/s), claim p50 {soak['claim_p50_ms']} ms, p99 {soak['claim_p99_ms']} ms; "
            f"claim index {first['tasks_claim_index_bytes'] / 1e6:,.1f} -> "
            f"{last['tasks_claim_index_bytes'] / 1e6:,.1f} MB, tasks dead tuples at the end "
            f"{last['tasks_dead_tuples']:,}.",
        ]
    return "\n".join(lines)


def mb(row: dict[str, Any]) -> str:
    """``table + index`` megabytes of a table_health row."""
    return f"{row['table_bytes'] / 1e6:,.0f} + {row['index_bytes'] / 1e6:,.0f}"


def write_results(run: ScaleRun, results_dir: Path) -> None:
    """scale.json, scale.md and scale.png in ``results_dir``."""
    from bench.plot import plot_scale

    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "scale.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    (results_dir / "scale.md").write_text(format_markdown(run) + "\n")
    plot_scale(asdict(run), results_dir / "scale.png")


def main(
    server_url: str,
    sizes: str,
    soak: str | None,
    json_path: Path | None,
    results_dir: Path | None = RESULTS_DIR,
    smoke: bool = False,
    log: Log = lambda s: print(s, file=sys.stderr, flush=True),
) -> ScaleRun:
    """``taskq bench --scale``: run, print the markdown, write the JSON where asked."""
    settings = ScaleSettings(
        sizes=parse_sizes(sizes) if sizes else (), soak=parse_count(soak) if soak else 0
    )
    if smoke:
        settings = tiny(settings)
    run = run_scale(server_url, settings, results_dir, log)
    print(format_markdown(run))
    if json_path:
        json_path.write_text(json.dumps(asdict(run), indent=2) + "\n")
    return run
