"""Admin-only endpoints: every user's tasks (list, detail, cancel, retry, delete), queue
statistics, live workers and stuck tasks.

Queue and worker figures come from the operator views of ``sql/views.sql``,
the same ones psql users and ``taskq stats`` read.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app

from app import schemas
from app.auth import admin_required
from app.db import fetch_all, get_conn
from app.errors import ApiError
from app.openapi import doc
from app.tasks import CANCELLABLE, RETRYABLE, change_status, delete_one, list_tasks_page
from sql import queries
from taskq.representation import row_to_json, task_to_json

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")
schemas.reject_bad_data(bp)


@bp.get("/tasks")
@doc(
    "Every user's tasks (admins only)",
    tag="admin",
    query=schemas.AdminTaskListQuerySchema,
    response=schemas.TaskPageSchema,
    errors=(403,),
)
@admin_required
def admin_tasks():
    """The filters of GET /tasks, plus user_id and username; each task with its owner."""
    query = schemas.load_query(schemas.AdminTaskListQuerySchema)
    return list_tasks_page("admin_list_tasks", "admin_count_tasks", query, {})


@bp.get("/tasks/<int:task_id>")
@doc(
    "Any user's task with its owner and history (admins only)",
    tag="admin",
    response=schemas.AdminTaskDetailSchema,
    errors=(403,),
)
@admin_required
def admin_task(task_id: int):
    """One task of any user, read from Postgres, with its transitions, oldest first."""
    with get_conn() as conn:
        task = conn.execute(queries["admin_get_task"], {"task_id": task_id}).fetchone()
        if task is None:
            raise ApiError(404, f"Task {task_id} not found.")
        history = conn.execute(queries["task_history"], {"task_id": task_id}).fetchall()
    return {"task": task_to_json(task), "history": [row_to_json(row) for row in history]}


@bp.post("/tasks/<int:task_id>/cancel")
@doc(
    "Cancel any user's waiting or running task (admins only)",
    tag="admin",
    response=schemas.TaskActionSchema,
    errors=(403, 409),
)
@admin_required
def admin_cancel_task(task_id: int):
    """As POST /tasks/{id}/cancel, for a task of any user (its dependents are cancelled too)."""
    row = change_status("cancel_task", task_id, CANCELLABLE, "cancelled", any_owner=True)
    return {"task": task_to_json(row), "message": f"Task {task_id} cancelled"}


@bp.post("/tasks/<int:task_id>/retry")
@doc(
    "Retry any user's failed or cancelled task (admins only)",
    tag="admin",
    response=schemas.TaskActionSchema,
    errors=(403, 409),
)
@admin_required
def admin_retry_task(task_id: int):
    """As POST /tasks/{id}/retry, for a task of any user."""
    row = change_status("retry_task", task_id, RETRYABLE, "retried", any_owner=True)
    return {"task": task_to_json(row), "message": f"Task {task_id} queued for retry"}


@bp.delete("/tasks/<int:task_id>")
@doc(
    "Delete any user's task (admins only)",
    tag="admin",
    response=schemas.MessageSchema,
    errors=(403, 409),
)
@admin_required
def admin_delete_task(task_id: int):
    """As DELETE /tasks/{id}, for a task of any user (409 while a worker runs it)."""
    return delete_one(task_id, any_owner=True)


@bp.get("/queues")
@doc(
    "Depth, age and rate per queue (admins only)",
    tag="admin",
    response=schemas.QueuesSchema,
    errors=(403,),
)
@admin_required
def admin_queues():
    """One row of the queue_stats view per queue."""
    return {"queues": [row_to_json(row) for row in fetch_all("admin_queue_stats")]}


@bp.get("/workers")
@doc("Live workers (admins only)", tag="admin", response=schemas.WorkersSchema, errors=(403,))
@admin_required
def admin_workers():
    """Workers heard from in the last minute, with the tasks they run."""
    return {"workers": [row_to_json(row) for row in fetch_all("admin_live_workers")]}


@bp.get("/stuck-tasks")
@doc(
    "Running tasks whose lease expired (admins only)",
    tag="admin",
    response=schemas.StuckTasksSchema,
    errors=(403,),
)
@admin_required
def admin_stuck_tasks():
    """The stuck_tasks view: their worker is gone and the reaper will return them."""
    limit = current_app.config["TASKQ_MAX_PAGE_SIZE"]
    rows = fetch_all("admin_stuck_tasks", {"limit": limit})
    return {"stuck_tasks": [row_to_json(row) for row in rows]}


def init_app(app: Flask) -> None:
    """Register the admin endpoints."""
    app.register_blueprint(bp)
