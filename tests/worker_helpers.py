"""Shared helpers of the worker tests: enqueue tasks, start and wait on worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.completer import Outcomes
from worker.config import WorkerConfig
from worker.exchange import Claim, Exchange

ROOT = Path(__file__).resolve().parent.parent


def insert_tasks(db: psycopg.Connection, count: int = 1, **fields: Any) -> list[int]:
    """Insert ``count`` tasks with ``fields`` in one statement; their ids in order."""
    values = {"title": "t", "task_type": "noop", "payload": {}, **fields}
    if isinstance(values["payload"], dict | list):
        values["payload"] = Jsonb(values["payload"])
    names = list(values)
    columns = ", ".join(names)
    placeholders = ", ".join(f"%({n})s" for n in names)
    rows = db.execute(
        f"INSERT INTO tasks ({columns}) SELECT {placeholders} FROM generate_series(1, %(n)s) "
        "ORDER BY 1 RETURNING id",
        {**values, "n": count},
    ).fetchall()
    return sorted(r["id"] if isinstance(r, dict) else r[0] for r in rows)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; its value. AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)


def status_counts(db: psycopg.Connection) -> dict[str, int]:
    """{status: count} over all tasks."""
    rows = db.execute("SELECT status::text AS s, count(*) AS n FROM tasks GROUP BY 1").fetchall()
    return {r["s"]: r["n"] for r in rows}


@contextlib.contextmanager
def claim_connection(
    database_url: str, worker_id: str = "w", held: Callable[[], set[int]] = set, **settings: Any
) -> Iterator[Exchange]:
    """A worker child's claim connection (``Exchange``) as ``worker_id``, started and stopped."""
    config = WorkerConfig(database_url=database_url, queues=("default",), **settings)
    exchange = Exchange(config, worker_id, held=held)
    exchange.start()
    try:
        yield exchange
    finally:
        exchange.stop()


def claim(exchange: Exchange, limit: int) -> list[Claim]:
    """Claim up to ``limit`` tasks through one exchange that writes nothing."""
    exchange.send(Outcomes(), limit)
    return exchange.receive().rows


def write(exchange: Exchange, outcomes: Outcomes) -> dict[int, str]:
    """Write ``outcomes`` through one exchange that claims nothing; the failed tasks' statuses."""
    exchange.send(outcomes, 0)
    return exchange.receive().failed


def start_worker(database_url: str, *args: str, **env: str) -> subprocess.Popen:
    """``taskq worker`` as a subprocess in its own process group, with fast test settings."""
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TASKQ_POLL_INTERVAL": "0.5",
        "TASKQ_LEASE_SECONDS": "3",
        "TASKQ_REAPER_INTERVAL": "0.3",
        "TASKQ_CLEANUP_SCHEDULE": "off",
        "TASKQ_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "taskq.cli", "worker", *args],
        env=environ,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_worker(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    """SIGTERM the worker and wait; (exit code, output). Kills the group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out
    return proc.returncode, out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker and all its children: a lost machine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
