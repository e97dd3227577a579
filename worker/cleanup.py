"""The ``cleanup_old_tasks`` task type's implementation (declared in ``taskq.builtins``).

The periodic scheduler enqueues it on the leader (TASKQ_CLEANUP_SCHEDULE);
``days`` defaults to the worker's TASKQ_CLEANUP_DAYS, handed over in ``ctx.settings``.
"""

from __future__ import annotations

from typing import Any

from sql import queries
from taskq.registry import TaskContext, implement


def delete_finished_tasks(conn: Any, days: int, batch_size: int) -> int:
    """Delete COMPLETED and FAILED tasks older than ``days``, one short transaction per batch.

    Small batches keep each transaction's locks brief, so the queue keeps
    moving while a large backlog is cleaned; the delete trigger removes their
    history, dead letters and webhook deliveries.
    """
    deleted = 0
    while True:
        with conn.transaction():
            count = conn.execute(
                queries["delete_finished_tasks"], {"days": days, "limit": batch_size}
            ).rowcount
        deleted += count
        if count < batch_size:
            return deleted


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
