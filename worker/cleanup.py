"""The ``cleanup_old_tasks`` task type's implementation (declared in ``taskq.builtins``).

The periodic scheduler enqueues it on the leader (TASKQ_CLEANUP_SCHEDULE);
``days`` defaults to the worker's TASKQ_CLEANUP_DAYS, handed over in ``ctx.settings``.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from sql import queries
from taskq.registry import TaskContext, implement


def delete_finished_tasks(conn: Any, days: int, batch_size: int) -> int:
    """Delete COMPLETED and FAILED tasks older than ``days``, one short transaction per batch.

    A keyset walk of the primary key, ``batch_size`` tasks a window: each
    transaction reads and locks at most that many rows, so the queue keeps
    moving while a large backlog is cleaned, and the walk stops at the first
    window of tasks all created after the horizon (a task finishes after it is
    created) instead of reading the rest of the table. The delete trigger
    removes their history, dead letters and webhook deliveries (history older
    than TASKQ_HISTORY_DAYS has gone with its partition already).
    """
    deleted, after = 0, 0
    while True:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            window = cur.execute(
                queries["delete_finished_tasks"],
                {"days": days, "limit": batch_size, "after": after},
            ).fetchone()
        deleted += window["deleted"]
        if window["past_horizon"] or window["last_id"] is None:
            return deleted
        after = window["last_id"]


@implement("cleanup_old_tasks")
def cleanup_old_tasks(payload: dict, ctx: TaskContext) -> dict:
    """Deletes COMPLETED and FAILED tasks older than TASKQ_CLEANUP_DAYS (30) days."""
    days = payload["days"] if payload["days"] is not None else ctx.settings.cleanup_days
    conn = ctx.connection()
    deleted = delete_finished_tasks(conn, days, payload["batch_size"])
    with conn.transaction():
        conn.execute(queries["delete_old_ticks"], {"days": days})
        conn.execute(queries["delete_silent_workers"], {})
    return {"deleted": deleted, "days": days}
