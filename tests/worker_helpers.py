"""Worker processes for the tests: start, stop and kill ``taskq worker`` subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tests.helpers import ROOT, status_counts
from worker.completer import Outcomes
from worker.config import WorkerConfig
from worker.exchange import Claim, Exchange


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


def completed(db, n: int) -> bool:
    """At least ``n`` tasks are COMPLETED."""
    return status_counts(db).get("COMPLETED", 0) >= n


def start_worker(
    database_url: str,
    *args: str,
    wrap: Callable[[list[str]], list[str]] = list,
    **env: str,
) -> subprocess.Popen:
    """``taskq worker`` as a subprocess in its own process group, with fast test settings
    (``wrap``: the command line run in its place, ``unshare …`` around it, say)."""
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TASKQ_POLL_INTERVAL": "0.5",
        "TASKQ_LEASE_SECONDS": "3",
        "TASKQ_REAPER_INTERVAL": "0.3",
        "TASKQ_CLEANUP_SCHEDULE": "off",
        "TASKQ_REINDEX_SCHEDULE": "off",
        "TASKQ_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        wrap([sys.executable, "-m", "taskq.cli", "worker", *args]),
        env=environ,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_worker(
    proc: subprocess.Popen, timeout: float = 20, signalled: bool = False
) -> tuple[int, str]:
    """SIGTERM the worker (unless ``signalled`` already) and wait; (exit code, output). Kills
    the group if it hangs. A second SIGTERM that lands while the worker exits finds Python's
    default handler back (it is reset at interpreter shutdown) and ends it with -15."""
    if proc.poll() is None and not signalled:
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
