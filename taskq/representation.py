"""The one JSON representation of a task, shared by the API, webhooks and SSE.

Flask-free on purpose: the worker's webhook sender and the event stream build
the same dictionaries from the same ``tasks`` rows, so a client sees one shape
wherever a task reaches it. ``callback_secret`` never leaves the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

# Columns of ``tasks`` copied as they are (datetimes become ISO 8601 strings).
TASK_FIELDS = (
    "id",
    "user_id",
    "title",
    "description",
    "task_type",
    "payload",
    "queue",
    "priority",
    "status",
    "scheduled_at",
    "run_at",
    "attempts",
    "max_retries",
    "retry_delay",
    "timeout",
    "result",
    "error",
    "tags",
    "metadata",
    "worker_id",
    "callback_url",
    "callback_events",
    "callback_max_attempts",
    "callback_format",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "unique_key",
    "unique_for",
    "snoozes",
    "progress",
    "progress_message",
    "progress_at",
    "depends_on",
    "pending_parents",
)

PRIORITY_NAMES = {"low": 1, "normal": 5, "high": 10, "critical": 20}

# Status names the seeds (and Celery) use, read wherever a request names a status, in any
# letter case; answers keep taskq's names. SEED_STATUS is the other way round, for the
# seed-style webhook body (``callback_format: "seed"``): the first alias of each status.
STATUS_ALIASES = {
    "success": "COMPLETED",
    "retry": "RETRYING",
    "failure": "FAILED",
    "started": "PROCESSING",
    "revoked": "CANCELLED",
    "canceled": "CANCELLED",
}
SEED_STATUS = {"COMPLETED": "success", "RETRYING": "retry"}

# Webhook events of a transition to each status, first choice first. The
# database's copy is taskq_webhook_events() (migration 0005), which the trigger
# uses; tests/integration/test_schema.py checks that the two agree.
# task.revoked is the seeds' (Celery's) name for task.cancelled; subscribers may use either.
EVENTS_FOR_STATUS = {
    "WAITING": ("task.waiting",),
    "PENDING": ("task.queued",),
    "PROCESSING": ("task.started",),
    "RETRYING": ("task.retrying",),
    "COMPLETED": ("task.succeeded",),
    "FAILED": ("task.failed",),
    "CANCELLED": ("task.cancelled", "task.revoked"),
}
# The event a transition to each status is named by (manual triggers, docs).
EVENT_FOR_STATUS = {status: events[0] for status, events in EVENTS_FOR_STATUS.items()}
CALLBACK_EVENTS = tuple(event for events in EVENTS_FOR_STATUS.values() for event in events)
# A task whose callback_events is NULL hears of these (the trigger's default too).
DEFAULT_CALLBACK_EVENTS = ("task.succeeded", "task.failed", "task.cancelled")


def json_value(value: Any) -> Any:
    """A database value as JSON: datetimes in ISO 8601, intervals in seconds."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    return value


def row_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of ``row`` as JSON values (views, dead letters, history)."""
    return {key: json_value(value) for key, value in row.items()}


def task_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's representation of a ``tasks`` row (``SELECT *``, optionally with the owner).

    ``next_retry_at`` is ``run_at`` while the task waits for its next attempt.
    A row joined with its owner (``owner_username``, ``owner_email``) also
    carries ``user: {id, username, email}``, as the admin list shows it.
    """
    task = {name: json_value(row.get(name)) for name in TASK_FIELDS}
    task["tags"] = list(row.get("tags") or [])
    task["depends_on"] = list(row.get("depends_on") or [])
    task["next_retry_at"] = task["run_at"] if row.get("status") == "RETRYING" else None
    task["has_callback_secret"] = bool(row.get("callback_secret"))
    if "owner_username" in row:
        task["user"] = {
            "id": row.get("user_id"),
            "username": row.get("owner_username"),
            "email": row.get("owner_email"),
        }
    return task


def task_status_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The short status of a task (``GET /tasks/{id}/status``)."""
    task = task_to_json(row)
    return {key: task[key] for key in STATUS_FIELDS}


STATUS_FIELDS = (
    "id",
    "status",
    "attempts",
    "max_retries",
    "result",
    "error",
    "next_retry_at",
    "progress",
    "progress_message",
    "progress_at",
    "pending_parents",
    "started_at",
    "completed_at",
    "updated_at",
)
