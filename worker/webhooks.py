"""The ``deliver_webhook`` task type: POST a signed event to a task's callback URL.

The transition trigger (migration 0002) writes a ``webhook_deliveries`` row
and enqueues this task on queue ``webhooks``, recorded as the delivery's
sender (migration 0006); a failed attempt raises, so the engine retries it
with its usual backoff, up to the delivery's ``max_attempts``. Each attempt
updates the delivery row (status code, duration, error) and appends to its
``attempt_log``.

The type is internal (the API creates no such task), and the sender checks
in SQL that the delivery is due before it sends: one conditional UPDATE
counts the attempt only for a pending delivery with attempts left, asked by
its own sender task while that task runs. Any other ``deliver_webhook`` task
(made in psql, or a re-run after the delivery finished) sends nothing and
changes nothing.

Signatures, when the task has a ``callback_secret``:

* ``X-Taskqueue-Signature``: HMAC-SHA256 hex of the raw body;
* ``X-Taskqueue-Signature-256``: ``t=<unix seconds>,v1=<HMAC-SHA256 hex of "<t>." + body>``,
  so a receiver can refuse old (replayed) requests.

Outbound calls go through ``taskq.urlguard``: private and loopback addresses
are refused unless ``TASKQ_ALLOW_PRIVATE_URLS`` is set; redirects are not followed.
Both it and ``TASKQ_WEBHOOK_TIMEOUT`` come from ``ctx.settings``. The type is
declared (name, schema, internal) in ``taskq.builtins``; this module implements it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row

from sql import queries
from taskq import tracing
from taskq.builtins import DeliverySchema  # noqa: F401  (its old home, for one release)
from taskq.registry import TaskContext, implement
from taskq.representation import SEED_STATUS, task_to_json
from taskq.settings import TaskSettings
from taskq.urlguard import UnsafeURLError, fetch

SIGNATURE_HEADER = "X-Taskqueue-Signature"
TIMESTAMPED_SIGNATURE_HEADER = "X-Taskqueue-Signature-256"


_ATTEMPTS: Any = None


def count_attempt(outcome: str) -> None:
    """Count one attempt by outcome, when the worker records metrics (worker.metrics)."""
    global _ATTEMPTS
    from worker import metrics

    if not metrics.ENABLED:
        return
    if _ATTEMPTS is None:
        from prometheus_client import Counter

        _ATTEMPTS = Counter(
            "taskq_webhook_attempts_total",
            "Webhook delivery attempts by outcome (delivered, error, refused).",
            ["outcome"],
        )
    _ATTEMPTS.labels(outcome=outcome).inc()


class WebhookDeliveryError(RuntimeError):
    """An attempt failed; the engine retries the task while attempts remain."""


def webhook_body(event: str, task_snapshot: dict[str, Any], sent_at: datetime) -> bytes:
    """The raw body: ``{"event", "sent_at", "task"}`` with the API's task representation,
    or with seed 001's field names when the task's ``callback_format`` is ``seed``."""
    task = task_to_json(task_snapshot)
    if task_snapshot.get("callback_format") == "seed":
        task = seed_task(task)
    body = {"event": event, "sent_at": sent_at.isoformat(), "task": task}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def seed_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task as seed 001's webhooks carry it: ``name`` for title, lowercase ``status`` with
    its aliases (``success``, ``retry``), ``error_message`` ("" when none) for error."""
    renamed = {"name" if key == "title" else key: value for key, value in task.items()}
    renamed["status"] = SEED_STATUS.get(task["status"], str(task["status"]).lower())
    renamed["error_message"] = renamed.pop("error") or ""
    return renamed


def sign(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Both signature headers of ``body``."""
    key = secret.encode()
    plain = hmac.new(key, body, hashlib.sha256).hexdigest()
    stamped = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        SIGNATURE_HEADER: plain,
        TIMESTAMPED_SIGNATURE_HEADER: f"t={timestamp},v1={stamped}",
    }


def verify_signature(
    secret: str, body: bytes, header: str, tolerance: float = 300, now: float | None = None
) -> bool:
    """Receiver side: a valid ``t=…,v1=…`` header no older than ``tolerance`` seconds."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp)[TIMESTAMPED_SIGNATURE_HEADER]
    return hmac.compare_digest(expected.encode(), header.encode())


def request_headers(delivery: dict[str, Any], body: bytes) -> dict[str, str]:
    """The user's callback headers, then ours (which the user cannot override)."""
    ours = {
        "Content-Type": "application/json",
        "User-Agent": "taskq-webhooks",
        "X-Taskqueue-Event": delivery["event"],
        "X-Taskqueue-Delivery": str(delivery["id"]),
    }
    if delivery.get("callback_secret"):
        ours.update(sign(delivery["callback_secret"], body, int(time.time())))
    # Header names are case-insensitive: a user's "content-type" would otherwise go out
    # beside ours, twice.
    names = {name.lower() for name in ours}
    user = delivery.get("callback_headers") or {}
    headers = {str(k): str(v) for k, v in user.items() if str(k).lower() not in names}
    return {**headers, **ours}


def send(delivery: dict[str, Any], settings: TaskSettings) -> tuple[int | None, float, str | None]:
    """One POST: (status code, duration ms, error); a refused URL is an error, not a raise."""
    body = webhook_body(delivery["event"], delivery["payload"], datetime.now(UTC))
    started = time.perf_counter()
    try:
        reply = fetch(
            "POST",
            delivery["url"],
            headers=request_headers(delivery, body),
            body=body,
            timeout=settings.webhook_timeout,
            allow_private=settings.allow_private_urls,
        )
    except UnsafeURLError as exc:
        return None, (time.perf_counter() - started) * 1000, f"refused: {exc}"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timeout, not HTTP
        return None, (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}"
    error = None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
    return reply.status, reply.elapsed_ms, error


def refusal(conn: Any, delivery_id: int) -> str:
    """Why a delivery was not due for this task (read after the claim refused it)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            queries["webhook_delivery_state"], {"delivery_id": delivery_id}
        ).fetchone()
    if row is None:
        return "the delivery was deleted with its task"
    if row["status"] != "pending":
        return f"already {row['status']}"  # a re-run after a lost lease, say
    if row["attempt"] >= row["max_attempts"]:
        return "its attempts are spent"
    return "not its turn: this task is not the delivery's running sender"


@implement("deliver_webhook")
def deliver_webhook(payload: dict, ctx: TaskContext) -> dict:
    """Sends one webhook delivery (signed POST); raises so the engine retries a failure."""
    conn = ctx.connection()
    params = {"delivery_id": payload["delivery_id"], "task_id": ctx.task_id}
    with conn.cursor(row_factory=dict_row) as cur:
        delivery = cur.execute(queries["claim_webhook_delivery"], params).fetchone()
    if delivery is None:
        return {"skipped": refusal(conn, payload["delivery_id"])}
    with tracing.continued(
        "taskq.webhook",
        delivery.get("trace_context"),
        taskq__task_id=delivery["task_id"],
        taskq__delivery_id=delivery["id"],
        taskq__event=delivery["event"],
        taskq__attempt=delivery["attempt"],
    ) as span:
        status_code, duration_ms, error = send(delivery, ctx.settings)
        if span is not None:
            span.set_attribute("http.response.status_code", status_code or 0)
    delivered = error is None
    refused = error is not None and error.startswith("refused:")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            queries["record_webhook_attempt"],
            {
                "delivery_id": delivery["id"],
                "attempt": delivery["attempt"],
                "delivered": delivered,
                # The attempt the engine will not retry: the last one, or a refused URL.
                "final": refused or delivery["attempt"] >= delivery["max_attempts"],
                "status_code": status_code,
                "duration_ms": round(duration_ms, 3),
                "error": error,
            },
        ).fetchone()
    outcome = "delivered" if delivered else ("refused" if refused else "error")
    count_attempt(outcome)
    result = {"delivery_id": delivery["id"], "attempt": row["attempt"] if row else None}
    if delivered or refused:
        return {**result, "status_code": status_code, "error": error}
    raise WebhookDeliveryError(f"webhook delivery {delivery['id']} failed: {error}")
