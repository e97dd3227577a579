"""taskq in the shared workloads: the API's insert queries, and ``taskq worker`` processes.

Enqueue goes through the named queries the API runs (``insert_task`` per
task, ``insert_tasks_batch`` per batch), so the figures carry the full
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
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from bench.system import Client, System
from sql import queries

QUEUE = "bench"
TASK_TYPE = "bench_stamp"
# Every column insert_task / insert_tasks_batch take, as the API fills them for a bare create.
TASK_DEFAULTS = {
    "user_id": None,
    "description": "",
    "task_type": TASK_TYPE,
    "queue": QUEUE,
    "priority": 5,
    "scheduled_at": None,
    "max_retries": 3,
    "retry_delay": 60,
    "timeout": None,
    "tags": [],
    "metadata": {},
    "idempotency_key": None,
    "callback_url": None,
    "callback_events": None,
    "callback_headers": None,
    "callback_secret": None,
    "callback_max_attempts": 5,
}


def task_row(key: str) -> dict:
    """The column values of one bench task."""
    return {**TASK_DEFAULTS, "title": key, "payload": {"key": key}}


class TaskqClient:
    """One autocommit connection running the API's insert queries."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    def insert_one(self, key: str) -> None:
        """``insert_task``: one statement, one commit."""
        row = task_row(key)
        row["payload"], row["metadata"] = Jsonb(row["payload"]), Jsonb(row["metadata"])
        self.conn.execute(queries["insert_task"], row)

    def enqueue_single(self, keys: Sequence[str]) -> None:
        """One ``insert_task`` per job."""
        for key in keys:
            self.insert_one(key)

    def enqueue_batch(self, keys: Sequence[str], batch: int) -> None:
        """One ``insert_tasks_batch`` per ``batch`` jobs."""
        for start in range(0, len(keys), batch):
            items = [{**task_row(k), "n": n} for n, k in enumerate(keys[start : start + batch])]
            self.conn.execute(
                queries["insert_tasks_batch"], {"user_id": None, "tasks": Jsonb(items)}
            )

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
    unfinished_sql = (
        "SELECT count(*) FROM (SELECT 1 FROM tasks"
        " WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING') LIMIT 1) s"
    )

    def install(self, url: str) -> None:
        """The Alembic migrations (``taskq migrate``)."""
        from taskq.migrate import upgrade

        upgrade(url)

    @contextmanager
    def client(self, url: str) -> Iterator[Client]:
        """A connected client."""
        client = TaskqClient(url)
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

    def start_times(self, url: str, record: Path) -> dict[str, float]:
        """The ``key time`` lines ``bench_stamp`` wrote."""
        started = {}
        for path in record.parent.glob(record.name + ".*"):
            for line in path.read_text().splitlines():
                key, stamp = line.split()
                started[key] = float(stamp)
        return started
