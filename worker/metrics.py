"""Prometheus metrics of the worker, in multiprocess mode.

Children write their samples to files under ``PROMETHEUS_MULTIPROC_DIR``; the
supervisor (``--metrics-port``) or the API's /metrics aggregates them. When
the variable is unset the worker records nothing and never imports
prometheus_client, which keeps a bare worker lean. The hot path calls
``record_batch`` once per batch, not once per task.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import Any

ENABLED = False
TASKS = RETRIES = DEAD_LETTERS = PICKUP = RUN_TIME = REAPED = None  # type: Any


def enable() -> bool:
    """Create the instruments if PROMETHEUS_MULTIPROC_DIR is set; whether metrics are on."""
    global ENABLED, TASKS, RETRIES, DEAD_LETTERS, PICKUP, RUN_TIME, REAPED
    if ENABLED or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return ENABLED
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Histogram

    labels = ["task_type", "queue"]
    TASKS = PromCounter(
        "taskq_tasks_total", "Task attempts finished, by outcome", [*labels, "outcome"]
    )
    RETRIES = PromCounter("taskq_task_retries_total", "Failed attempts to be retried", labels)
    DEAD_LETTERS = PromCounter("taskq_dead_letters_total", "Tasks that ended FAILED", labels)
    PICKUP = Histogram(
        "taskq_pickup_latency_seconds",
        "From due (run_at) to claimed",
        ["queue"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )
    RUN_TIME = Histogram(
        "taskq_task_run_seconds",
        "Run time of one attempt",
        ["task_type"],
        buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
    )
    REAPED = PromCounter("taskq_reaped_tasks_total", "Tasks returned by the reaper")
    ENABLED = True
    return True


enable()


class BatchMetrics:
    """Counts of one batch, pushed to Prometheus in one go by ``flush``."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.pickups: list[tuple[str, float]] = []
        self.runs: list[tuple[str, float]] = []

    def claimed(self, queue: str, waited: float) -> None:
        """A task was claimed ``waited`` seconds after it was due."""
        if ENABLED:
            self.pickups.append((queue, waited))

    def finished(self, task_type: str, queue: str, outcome: str, seconds: float) -> None:
        """An attempt ended: completed, failed, snoozed, cancelled or released."""
        if ENABLED:
            self.outcomes[(task_type, queue, outcome)] += 1
            self.runs.append((task_type, seconds))

    def flush(self, failed_statuses: dict[int, str] | None = None, types: Any = None) -> None:
        """Push the counts; ``failed_statuses`` (id -> RETRYING/FAILED) splits retries from dead."""
        if not ENABLED:
            return
        for (task_type, queue, outcome), count in self.outcomes.items():
            TASKS.labels(task_type, queue, outcome).inc(count)
        observe_all(PICKUP, ((queue, max(waited, 0.0)) for queue, waited in self.pickups))
        observe_all(RUN_TIME, self.runs)
        for task_id, status in (failed_statuses or {}).items():
            task_type, queue = types.get(task_id, ("?", "?")) if types else ("?", "?")
            (RETRIES if status == "RETRYING" else DEAD_LETTERS).labels(task_type, queue).inc()
        self.__init__()  # type: ignore[misc]


def observe_all(histogram: Any, observed: Iterable[tuple[str, float]]) -> None:
    """``histogram.labels(label).observe(value)`` for each pair, one write per bucket.

    In multiprocess mode every ``observe`` is two writes to a shared file (the sum
    and a bucket) behind a lock: per task, that was a sixth of a drain's worker CPU.
    A batch's values are counted per label and bucket here and added once each,
    through the histogram's own value objects, which is what ``observe`` does for one.
    A prometheus_client without them gets ``observe`` per value.
    """
    grouped: dict[str, list[float]] = {}
    for label, value in observed:
        grouped.setdefault(label, []).append(value)
    for label, values in grouped.items():
        child = histogram.labels(label)
        buckets, bounds = getattr(child, "_buckets", None), getattr(child, "_upper_bounds", None)
        if buckets is None or bounds is None or not hasattr(child, "_sum"):
            for value in values:
                child.observe(value)
            continue
        counts = Counter(bisect_left(bounds, value) for value in values)
        child._sum.inc(sum(values))
        for index, count in counts.items():
            buckets[index].inc(count)


def record_reaped(count: int) -> None:
    """The reaper returned ``count`` tasks."""
    if ENABLED and count:
        REAPED.inc(count)


def serve_metrics(port: int) -> None:
    """Expose every process's samples on ``port`` (call in the supervisor)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def mark_process_dead(pid: int) -> None:
    """Drop a finished child's live gauges."""
    if ENABLED:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
