"""The task counters: the roll-up of pending deltas (migration 0009).

A statement-level trigger on ``tasks`` writes each statement's net change per
(owner, queue, task type, status) as a few rows of ``task_count_deltas``;
nothing updates a shared counter row on the write path. ``roll_up_task_counts``
folds the deltas into ``task_counts``, ``queue_counts`` and ``status_entries``,
a batch per statement; the worker leader runs it every TASKQ_COUNTS_INTERVAL
seconds (``worker/maintenance.py``). Reads add the pending deltas to the
rolled-up rows (``sql/counters.sql``), so they are exact whether or not the
roll-up has run.
"""

from __future__ import annotations

from typing import Any

from sql import queries

ROLL_UP_BATCH = 5000  # deltas per statement: a short transaction, a handful of counter rows
MAX_BATCHES = 20  # per call: a backlog drains over a few rounds, not in one long pass


def roll_up_task_counts(conn: Any, batch: int = ROLL_UP_BATCH, batches: int = MAX_BATCHES) -> int:
    """Fold pending deltas into the counters, one short transaction per batch; how many.

    Safe beside writers and beside another roll-up: each batch is one statement
    that deletes the deltas it adds (rows another roll-up holds are skipped).
    """
    folded = 0
    for _ in range(batches):
        with conn.transaction():
            row = conn.execute(queries["roll_up_task_counts"], {"limit": batch}).fetchone()
        count = row["deltas"] if isinstance(row, dict) else row[0]
        folded += count
        if count < batch:
            break
    with conn.transaction():
        conn.execute(queries["forget_old_status_entries"])
    return folded


def forget_empty_task_counts(conn: Any) -> int:
    """Drop counters at zero (a deleted user's, a type no longer used); how many."""
    with conn.transaction():
        return conn.execute(queries["forget_empty_task_counts"]).rowcount
