"""taskq in the shared workloads: the API's insert queries, and ``taskq worker`` processes.

Enqueue goes through the code the API runs (the ``insert_task`` query per
task, ``taskq.enqueue.insert_tasks`` per batch), so the figures carry the full
product: history row and NOTIFY per transition from the triggers, durable
commits. Workers are the real supervisor (``python -m worker``, i.e. ``taskq
worker``) with ``--concurrency`` children; the task type is ``bench_stamp``, a
no-op that notes its start (``bench/taskq_tasks.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.system import Client, System
from sql import queries
from taskq.enqueue import COLUMN_DEFAULTS, insert_tasks

QUEUE = "bench"
TASK_TYPE = "bench_stamp"
# Every column insert_task / insert_tasks take, as the API fills them for a bare create.
TASK_DEFAULTS = {
    **COLUMN_DEFAULTS,
    "user_id": None,
    "task_type": TASK_TYPE,
    "queue": QUEUE,
    "idempotency_key": None,
    "idempotency_fingerprint": None,
    "status": "PENDING",
    "pending_parents": 0,
}


def task_row(key: str, unique: bool = False) -> dict:
    """The column values of one bench task (``unique``: with its key as ``unique_key``)."""
    row = {**TASK_DEFAULTS, "title": key, "payload": {"key": key}}
    if unique:
        row["unique_key"] = key
    return row


class TaskqClient:
    """One autocommit connection running the API's insert queries (``unique``: every task
    with a ``unique_key``, the unique indexes' and the batch path's cost)."""

    def __init__(self, url: str, unique: bool = False) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.unique = unique

    def insert_one(self, key: str) -> None:
        """``insert_task``: one statement, one commit."""
        row = task_row(key, self.unique)
        row["payload"], row["metadata"] = Jsonb(row["payload"]), Jsonb(row["metadata"])
        self.conn.execute(queries["insert_task"], row)

    def enqueue_single(self, keys: Sequence[str]) -> None:
        """One ``insert_task`` per job."""
        for key in keys:
            self.insert_one(key)

    def enqueue_batch(self, keys: Sequence[str], batch: int) -> None:
        """One ``insert_tasks`` (the batch endpoint's function) per ``batch`` jobs."""
        for start in range(0, len(keys), batch):
            rows = [task_row(k, self.unique) for k in keys[start : start + batch]]
            insert_tasks(self.conn, None, rows)

    def enqueue_paced(self, keys: Sequence[str], gap: float) -> list[float]:
        """One ``insert_task`` per job, ``gap`` apart; commit times."""
        committed = []
        for key in keys:
            self.insert_one(key)
            committed.append(time.time())
            time.sleep(gap)
        return committed


class TaskqSystem(System):
    """taskq: unfinished = any task not yet COMPLETED."""

    name = "taskq"
    # Two EXISTS probes on the partial indexes (claim, lease): polled every 5 ms during a
    # drain, this must not scan the table and steal CPU from the system it measures.
    unfinished_sql = (
        "SELECT (EXISTS (SELECT 1 FROM tasks WHERE status IN ('PENDING', 'RETRYING'))"
        " OR EXISTS (SELECT 1 FROM tasks WHERE status = 'PROCESSING'))::int"
    )

    # The schema installed: head, or an earlier revision for an A/B of a migration's cost.
    # A class default too, so that variants with an __init__ of their own install head.
    revision = "head"

    def __init__(self, revision: str = "head") -> None:
        self.revision = revision

    def install(self, url: str) -> None:
        """The Alembic migrations (``taskq migrate``), up to ``revision``."""
        from taskq.migrate import upgrade

        upgrade(url, self.revision)

    @contextmanager
    def client(self, url: str, unique: bool = False) -> Iterator[Client]:
        """A connected client (``unique``: its tasks carry unique keys)."""
        client = TaskqClient(url, unique)
        try:
            yield client
        finally:
            client.conn.close()

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """One supervisor with ``procs`` children."""
        worker = [sys.executable, "-m", "worker", "--queues", QUEUE, "--log-level", "warning"]
        return [[*worker, "--concurrency", str(procs)]]

    def worker_env(self, url: str, record: Path) -> dict[str, str]:
        """The database, the bench task type, and where it notes start times."""
        imports = ",".join(filter(None, [os.environ.get("TASKQ_IMPORTS"), "bench.taskq_tasks"]))
        return {"DATABASE_URL": url, "TASKQ_IMPORTS": imports, "BENCH_STAMP_FILE": str(record)}

    def wait_ready(self, url: str, procs: int, lines: Callable[[], int], timeout: float) -> None:
        """Every child has registered in ``workers``."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(url, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM workers").fetchone()[0] < procs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"taskq: {procs} workers not registered after {timeout} s")
                time.sleep(0.05)

    def extra_metrics(
        self, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
    ) -> list[tuple[str, float, str]]:
        """HTTP create, end to end through the API, RSS, SSE, the pgbench ceiling, and the
        drain under queue limits (``bench.queue_limits``)."""
        measured = []
        from bench.queue_limits import limit_metrics

        for group in (unique_metrics, http_metrics, sse_metrics, ceiling_metrics, limit_metrics):
            try:
                measured += group(self, fresh, sizes)
            except Exception as exc:  # one broken group must not lose the others' figures
                print(f"taskq {group.__name__} failed: {exc}", file=sys.stderr)
        figures: dict[str, tuple[float, str]] = {}
        for metric, value, unit in measured:
            # api_rss_mb comes from two runs (HTTP load, SSE streams): the peak counts.
            figures[metric] = (max(value, figures.get(metric, (value, unit))[0]), unit)
        return [(metric, value, unit) for metric, (value, unit) in figures.items()]

    def start_times(self, url: str, record: Path) -> dict[str, float]:
        """The ``key time`` lines ``bench_stamp`` wrote."""
        started = {}
        for path in record.parent.glob(record.name + ".*"):
            for line in path.read_text().splitlines():
                key, stamp = line.split()
                started[key] = float(stamp)
        return started


class TaskqTreeSystem(TaskqSystem):
    """taskq's workers run from another source tree (``git archive main | tar -x -C DIR``):
    an A/B of worker code in one run, named ``taskq_<label>``. Schema and enqueue come from
    this checkout, so only the worker differs (``taskq bench --taskq-tree main=DIR``)."""

    def __init__(self, label: str, tree: str) -> None:
        self.name = f"taskq_{label}"
        self.tree = str(Path(tree).resolve())

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """The same supervisor, with ``tree`` first on the path (ahead of the working directory)."""
        boot = (f"import sys, runpy; sys.path.insert(0, {self.tree!r}); "
                "runpy.run_module('worker', run_name='__main__', alter_sys=True)")  # fmt: skip
        return [[sys.executable, "-c", boot, *argv[3:]] for argv in super().worker_commands(
            url, procs, record)]  # fmt: skip

    def extra_metrics(
        self, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
    ) -> list[tuple[str, float, str]]:
        """None: the API and the ceiling are this checkout's, measured as ``taskq``."""
        return []


class WithUniqueKeys:
    """``system`` whose clients give every task a ``unique_key`` (the drain's cost of them)."""

    def __init__(self, system: TaskqSystem) -> None:
        self.system = system

    def __getattr__(self, name: str) -> Any:
        return getattr(self.system, name)

    def client(self, url: str, unique: bool = True) -> AbstractContextManager[Client]:
        return self.system.client(url, unique=True)


def unique_metrics(
    system: TaskqSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> list[tuple[str, float, str]]:
    """The enqueue workloads again with a ``unique_key`` on every task: the unique index on
    single creates, the ``INSERT … ON CONFLICT`` path instead of COPY on batches; and the
    drain of such tasks with 2 worker processes (each one leaves the unique index's range)."""
    from bench.harness import keys

    figures = []
    for metric, run in (
        ("enqueue_unique_single_jobs_per_s", lambda c, k: c.enqueue_single(k)),
        ("enqueue_unique_batch_jobs_per_s", lambda c, k: c.enqueue_batch(k, sizes.batch)),
    ):
        with fresh() as db, system.client(db, unique=True) as client:
            t0 = time.perf_counter()
            run(client, keys("u", sizes.enqueue_n))
            figures.append((metric, sizes.enqueue_n / (time.perf_counter() - t0), "jobs/s"))
    figures.append((UNIQUE_DRAIN, unique_drain(system, fresh, sizes), "jobs/s"))
    return figures


UNIQUE_DRAIN = "drain_2proc_unique_jobs_per_s"


def unique_drain(
    system: TaskqSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> float:
    """The harness's 2-process drain of tasks that each carry a ``unique_key`` (jobs/s)."""
    from bench.harness import measure_drain

    with fresh() as db:
        return measure_drain(WithUniqueKeys(system), db, sizes, 2)


def http_metrics(
    system: TaskqSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> list[tuple[str, float, str]]:
    """POST /tasks with the API alone; then create -> COMPLETED with 2 worker processes."""
    from bench.harness import percentile, running_workers, unfinished, wait_until_done
    from bench.taskq_http import create_load, family_peak_rss_mb, register_user, running_api

    with fresh() as db, running_api(db) as (host, port, api):
        token = register_user(host, port)
        create_load(
            host, port, token, 20 * sizes.http_clients, sizes.http_clients, QUEUE
        )  # warm-up
        elapsed, latencies = create_load(host, port, token, sizes.http_n, sizes.http_clients, QUEUE)
        api_rss = family_peak_rss_mb(api.pid)
    figures = [
        ("http_create_rps", sizes.http_n / elapsed, "req/s"),
        ("http_create_p50_ms", percentile(latencies, 50), "ms"),
        ("http_create_p99_ms", percentile(latencies, 99), "ms"),
    ]
    with fresh() as db, running_api(db) as (host, port, api):
        token = register_user(host, port)
        count = unfinished(system, db)
        with running_workers(system, db, 2, sizes.settle) as (workers, _):
            t0 = time.time()
            create_load(host, port, token, sizes.e2e_n, sizes.http_clients, QUEUE)
            done = wait_until_done(count, 600)
            worker_rss = family_peak_rss_mb(workers.popens[0].pid)
        count.close()
        api_rss = max(api_rss, family_peak_rss_mb(api.pid))
    return [
        *figures,
        ("e2e_tasks_per_s", sizes.e2e_n / (done - t0), "tasks/s"),
        ("worker_rss_mb", worker_rss, "MB"),
        ("api_rss_mb", api_rss, "MB"),
    ]


def sse_metrics(
    system: TaskqSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> list[tuple[str, float, str]]:
    """SSE commit -> client latency with ``sse_streams`` open (``bench.sse_latency``)."""
    from bench.taskq_http import family_peak_rss_mb, register_user, running_api

    try:
        from bench.sse_latency import measure_sse_latency
    except ImportError as exc:
        print(f"sse left out: {exc}", file=sys.stderr)
        return []
    if not sizes.sse_streams:
        return []
    with fresh() as db, running_api(db) as (host, port, api):
        token = register_user(host, port)
        figures = measure_sse_latency(
            f"http://{host}:{port}", lambda: token, sizes.sse_streams, database_url=db
        )
        api_rss = family_peak_rss_mb(api.pid)
    return [
        ("sse_p50_ms", figures["p50_ms"], "ms"),
        ("sse_p99_ms", figures["p99_ms"], "ms"),
        ("api_rss_mb", api_rss, "MB"),
    ]


def ceiling_metrics(
    system: TaskqSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> list[tuple[str, float, str]]:
    """The pgbench ceiling at the worker's batch size: the best over ``ceiling_clients``."""
    from bench.ceiling import measure_ceiling
    from bench.harness import keys
    from worker.config import WorkerConfig

    batch = WorkerConfig.batch_size
    best = 0.0
    for clients in sizes.ceiling_clients:
        with fresh() as db:
            with system.client(db) as client:
                client.enqueue_batch(keys("c", sizes.drain_n), 1000)
            best = max(best, measure_ceiling(db, sizes.drain_n, batch, clients))
    return [("ceiling_jobs_per_s", best, "jobs/s")]
