"""The drain cost of queue controls: one drain, 2 worker processes, under each kind of limit.

Each row is the harness's drain (``drain_n`` no-op jobs committed at once to
idle workers: one ``taskq worker`` with 2 children) on a fresh database whose
``bench`` queue has the given row in ``queues``:

- unlimited: no row, today's claim (the gate returns no limit without a lock);
- a concurrency or rate limit far above what the drain reaches: the cost of
  the mechanism itself (the queue row's lock held to commit, the running count,
  the start log);
- binding limits: what the limit lets through;
- run alone, also an unlimited queue whose tasks each carry a ``unique_key``: the
  drain's cost of uniqueness (``bench.taskq_system.unique_drain``).

A resume's reach: milliseconds from sending ``UPDATE queues SET paused = false``
(autocommit: its commit included, so an upper bound) to the first line of the
task that waited in the paused queue (one idle ``taskq worker``): the queues
trigger's NOTIFY wakes the workers, the poll is only the backstop. A pause needs
no such figure: the claim reads the row, so no claim that starts after the
pause commits takes a task.

Run alone: ``python -m bench.queue_limits --database-url URL [--quick]``; also a
part of ``taskq bench`` (taskq's extra metrics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import psycopg

from taskq.queues import Rate, set_queue

# metric, the bench queue's controls (None: no row). ``taskq bench`` runs LIMITS (its own
# drain_2proc row is the unlimited one; --tiny runs the first only); this module adds UNLIMITED.
UNLIMITED = ("drain_2proc_unlimited_jobs_per_s", None)
LIMITS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("drain_2proc_concurrency_10000_jobs_per_s", {"concurrency": 10_000}),
    ("drain_2proc_rate_1000000_per_s_jobs_per_s", {"rate": Rate(1_000_000, timedelta(seconds=1))}),
    ("drain_2proc_concurrency_1000_jobs_per_s", {"concurrency": 1000}),
    ("drain_2proc_concurrency_100_jobs_per_s", {"concurrency": 100}),
    ("drain_2proc_rate_2000_per_s_jobs_per_s", {"rate": Rate(2_000, timedelta(seconds=1))}),
)


def limit_metrics(
    system: Any, fresh: Callable[[], AbstractContextManager[str]], sizes: Any, rows=None
) -> list[tuple[str, float, str]]:
    """The drain's jobs/s with 2 worker processes for each of ``rows`` (default: LIMITS)."""
    from bench.harness import measure_drain, percentile
    from bench.taskq_system import QUEUE

    if rows is None:
        rows = LIMITS[:1] if sizes.label == "tiny" else LIMITS
    figures = []
    for metric, controls in rows:
        with fresh() as db:
            if controls is not None:
                with psycopg.connect(db) as conn:
                    set_queue(conn, QUEUE, controls)
            figures.append((metric, measure_drain(system, db, sizes, 2), "jobs/s"))
            print(f"  taskq {metric} = {figures[-1][1]:,.1f}", file=sys.stderr, flush=True)
    with fresh() as db:
        waits = measure_resume(system, db, sizes)
    for pct in (50, 99):
        figures.append((f"resume_to_start_p{pct}_ms", percentile(waits, pct), "ms"))
    return figures


def measure_resume(system: Any, url: str, sizes: Any, gap: float = 0.1) -> list[float]:
    """Milliseconds from each resume (sent; its commit included) to the start of the one
    task that waited ``gap`` seconds in the paused queue: one idle worker, a pause before
    every task."""
    from bench.harness import keys, start_delays, wait_until_done
    from bench.taskq_system import QUEUE

    waiting = keys("r", max(5, sizes.pickup_n // 4))

    def resumes(client: Any, count: Callable[[], int]) -> list[float]:
        resumed = []
        with psycopg.connect(url, autocommit=True) as conn:
            for key in waiting:
                set_queue(conn, QUEUE, {"paused": True})
                client.enqueue_single([key])
                time.sleep(gap)  # the worker woke for it, found the queue paused, sleeps
                if count() != 1:
                    raise RuntimeError("a task of a paused queue ran")
                # Timed from before the UPDATE is sent, its commit included: an upper bound
                # (after it returns, the task may already have started: the worker hears the
                # NOTIFY as this client hears the commit).
                resumed.append(time.time())
                conn.execute("UPDATE queues SET paused = false WHERE name = %s", (QUEUE,))
                wait_until_done(count, 10)
        return resumed

    return start_delays(system, url, sizes, waiting, resumes)


def main(argv: list[str] | None = None) -> None:
    """Print the rows as a markdown table: median [min-max] of ``--repeats`` runs."""
    from bench.harness import FULL, QUICK, fresh_database, system_template
    from bench.taskq_system import UNIQUE_DRAIN, TaskqSystem, unique_drain
    from taskq.settings import database_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--quick", action="store_true", help="drain 10,000 instead of 20,000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    url = args.database_url or database_url()
    sizes = QUICK if args.quick else FULL
    system = TaskqSystem()
    runs: dict[str, list[float]] = {}
    with system_template(url, system) as template:
        for _ in range(args.repeats):
            fresh = lambda: fresh_database(url, template)  # noqa: E731
            for metric, value, _unit in limit_metrics(system, fresh, sizes, (UNLIMITED, *LIMITS)):
                runs.setdefault(metric, []).append(value)
            runs.setdefault(UNIQUE_DRAIN, []).append(unique_drain(system, fresh, sizes))
    unlimited = statistics.median(runs[UNLIMITED[0]])
    print(f"drain {sizes.drain_n:,} no-op jobs, 2 worker processes, {args.repeats} runs\n")
    print("| bench queue | jobs/s, median [min-max] | vs unlimited |\n|---|---|---|")
    labels = [
        (metric, ", ".join(f"{k} {v}" for k, v in (controls or {}).items()) or "unlimited")
        for metric, controls in (UNLIMITED, *LIMITS)
    ]
    for metric, label in [*labels, (UNIQUE_DRAIN, "unlimited, a unique_key on every task")]:
        values = runs[metric]
        median = statistics.median(values)
        print(f"| {label} | {median:,.0f} [{min(values):,.0f}-{max(values):,.0f}] "
              f"| {median / unlimited:.2f}x |")  # fmt: skip
    for pct in (50, 99):
        values = runs[f"resume_to_start_p{pct}_ms"]
        spread = f"{statistics.median(values):.1f} ms [{min(values):.1f}-{max(values):.1f}]"
        print(f"\nresume sent (commit included) -> the task's first line, p{pct}: {spread}")


if __name__ == "__main__":
    main()
