"""Webhook history and replay: the endpoints over ``webhook_deliveries``.

Deliveries are made by the transition trigger (migration 0002) and sent by the
``deliver_webhook`` task type (``worker/webhooks.py``); here a client lists a
task's deliveries, replays one (a new delivery of the same event and task
snapshot), or triggers one for the task as it is now.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify
from psycopg import sql

from app import schemas
from app.db import fetch_one, get_conn
from app.errors import ApiError, get_json_body
from app.events import bearer_user_id, owned_task
from app.openapi import doc
from app.pagination import page_body, page_request
from sql import queries
from taskq.representation import EVENT_FOR_STATUS, row_to_json

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1/tasks")


@bp.get("/<int:task_id>/webhook-deliveries")
@doc(
    "A task's webhook deliveries",
    tag="webhooks",
    query=schemas.CursorQuerySchema,
    response=schemas.WebhookDeliveriesSchema,
)
def list_deliveries(task_id: int):
    """A task's webhook deliveries, newest first, each with its attempt log; by cursor.

    A page holds page_size deliveries (default TASKQ_MAX_PAGE_SIZE).
    """
    owned_task(task_id, bearer_user_id())
    query = schemas.load_query(schemas.CursorQuerySchema)
    size = query.get("page_size") or current_app.config["TASKQ_MAX_PAGE_SIZE"]
    asked = page_request("webhook_deliveries", "w", query, size, [("id", True)])
    limit = current_app.config["TASKQ_COUNT_LIMIT"]
    params = {**asked.params, "task_id": task_id, "count_limit": limit}
    with get_conn() as conn:
        total = conn.execute(queries["count_webhook_deliveries"], params).fetchone()["count"]
        statement = sql.SQL(queries["list_webhook_deliveries"]).format(after=asked.after)
        rows, next_cursor = asked.cut(conn.execute(statement, params).fetchall())
    body = page_body([row_to_json(r) for r in rows], total, total < limit, None, size, next_cursor)
    del body["next"], body["previous"]
    return jsonify(body)


@bp.post("/<int:task_id>/webhook-deliveries/<int:delivery_id>/replay")
@doc(
    "Send a webhook delivery again",
    tag="webhooks",
    response=schemas.WebhookReplayedSchema,
    status=202,
)
def replay_delivery(task_id: int, delivery_id: int):
    """Send a delivery again: a new delivery with the same event and task snapshot."""
    owned_task(task_id, bearer_user_id())
    row = fetch_one("replay_webhook_delivery", {"task_id": task_id, "delivery_id": delivery_id})
    if row is None:
        raise ApiError(404, "Webhook delivery not found.")
    body = {
        "delivery_id": row["delivery_id"],
        "replay_of": delivery_id,
        "message": f"Delivery {delivery_id} replayed as delivery {row['delivery_id']}",
    }
    return jsonify(body), 202


@bp.post("/<int:task_id>/trigger-webhook")
@doc(
    "Enqueue a webhook delivery of the task as it is now",
    tag="webhooks",
    body=schemas.TriggerWebhookSchema,
    body_required=False,
    response=schemas.WebhookTriggeredSchema,
    status=202,
)
def trigger_webhook(task_id: int):
    """Enqueue a delivery of the task as it is now; ``{"event": ...}`` optional."""
    owned_task(task_id, bearer_user_id())
    data = schemas.TriggerWebhookSchema().load(get_json_body(optional=True))
    task = fetch_one("task_callback", {"task_id": task_id})
    if task is None:
        raise ApiError(404, "Task not found.")
    if not task["callback_url"]:
        raise ApiError(400, "The task has no callback_url.", {"callback_url": ["Not set."]})
    event = data["event"] or EVENT_FOR_STATUS.get(task["status"], "task.queued")
    row = fetch_one("trigger_webhook", {"task_id": task_id, "event": event})
    if row is None:  # the task was deleted or lost its callback in between
        raise ApiError(404, "Task not found.")
    body = {"delivery_id": row["delivery_id"], "event": event, "message": "Webhook enqueued"}
    return jsonify(body), 202


def init_app(app: Flask) -> None:
    """Register the webhook endpoints."""
    app.register_blueprint(bp)
