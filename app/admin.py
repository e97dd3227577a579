"""Admin-only endpoints: every user's tasks (list, detail, cancel, retry, delete), queue
statistics and controls (pause, resume, limits), live workers and stuck tasks.

Queue and worker figures come from the operator views of ``sql/views.sql``,
the same ones psql users and ``taskq stats`` read; queue controls are the
``queues`` rows that ``taskq queue`` and psql edit too (``taskq.queues``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app

from app import schemas
from app.auth import admin_required
from app.db import fetch_all, fetch_view, get_conn
from app.errors import ApiError, get_json_body
from app.openapi import doc
from app.tasks import CANCELLABLE, RETRYABLE, change_status, delete_one, list_tasks_page
from sql import queries
from taskq.queues import get_queue, queue_json, set_queue
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
    return list_tasks_page("admin_list_tasks", query, {}, admin=True)


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
    """One row per queue: the queue_stats view's figures with its controls (queue_controls)."""
    return {"queues": [row_to_json(row) for row in fetch_view("admin_queue_stats")]}


def queue_name(name: str) -> str:
    """The queue name of the URL, or 400 when no queue can have it."""
    if not schemas.QUEUE_NAME_PATTERN.fullmatch(name):
        raise ApiError(400, "Invalid queue name.", {"name": ["1-64 of A-Z a-z 0-9 _ . : -"]})
    return name


def change_queue(name: str, changes: dict[str, Any], message: str) -> dict[str, Any]:
    """Store ``changes`` in the queue's row (created when missing) and answer its controls."""
    with get_conn() as conn:
        row = set_queue(conn, queue_name(name), changes)
    return {"queue": queue_json(row), "message": message}


@bp.get("/queues/<name>")
@doc(
    "A queue's controls: paused, limits, workers serving it (admins only)",
    tag="admin",
    response=schemas.QueueDetailSchema,
    errors=(400, 403, 404),
)
@admin_required
def admin_queue(name: str):
    """404 for a queue nobody configured, no worker serves and no task waits in."""
    with get_conn() as conn:
        row = get_queue(conn, queue_name(name))
    if row is None:
        raise ApiError(404, f"Queue {name} not found.")
    return {"queue": queue_json(row), "message": "OK"}


@bp.patch("/queues/<name>")
@doc(
    "Change a queue's controls (admins only)",
    tag="admin",
    body=schemas.QueuePatchSchema,
    response=schemas.QueueDetailSchema,
    errors=(400, 403),
)
@admin_required
def patch_queue(name: str):
    """paused, concurrency (null: none), rate `N/PERIOD` (null: none), description; every
    worker sees the change at its next claim (idle ones are woken)."""
    changes = schemas.QueuePatchSchema().load(get_json_body())
    return change_queue(name, changes, f"Queue {name} updated")


@bp.post("/queues/<name>/pause")
@doc("Pause a queue (admins only)", tag="admin", response=schemas.QueueDetailSchema,
     errors=(400, 403))  # fmt: skip
@admin_required
def pause_queue(name: str):
    """No new claims on any worker; running tasks finish; creates still work."""
    return change_queue(name, {"paused": True}, f"Queue {name} paused")


@bp.post("/queues/<name>/resume")
@doc("Resume a paused queue (admins only)", tag="admin", response=schemas.QueueDetailSchema,
     errors=(400, 403))  # fmt: skip
@admin_required
def resume_queue(name: str):
    """Workers claim from it again at once."""
    return change_queue(name, {"paused": False}, f"Queue {name} resumed")


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
