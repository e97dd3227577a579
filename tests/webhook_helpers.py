"""What the webhook tests share: a hooked task straight in SQL, its delivery, and the
context of the deliver_webhook task the trigger enqueued for it."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from taskq import TaskContext, TaskSettings


def insert_task(db, url: str | None, events: list[str] | None = None, secret: str = "s3cret"):
    """A task with callback settings, straight in SQL (as psql or another client would)."""
    user = db.execute(
        "INSERT INTO users (username, email, password_hash) VALUES ('wh', 'wh@x', 'x') "
        "ON CONFLICT DO NOTHING RETURNING id"
    ).fetchone()
    user_id = user["id"] if user else db.execute("SELECT id FROM users").fetchone()["id"]
    return db.execute(
        "INSERT INTO tasks (user_id, title, task_type, callback_url, callback_events, "
        "callback_secret, callback_headers, callback_max_attempts) "
        "VALUES (%s, 'hooked', 'echo', %s, %s, %s, %s, 3) RETURNING *",
        (user_id, url, events, secret, Jsonb({"X-Custom": "yes"})),
    ).fetchone()


# The tests' receivers listen on 127.0.0.1: the worker's settings with private URLs allowed.
PRIVATE = TaskSettings(allow_private_urls=True)


def context(database_url: str, task_id: int, settings: TaskSettings = PRIVATE) -> TaskContext:
    return TaskContext(task_id, 1, "webhooks", "deliver_webhook", "test-worker", database_url,
                       settings)  # fmt: skip


def sender_context(
    db, database_url: str, delivery: dict, settings: TaskSettings = PRIVATE
) -> TaskContext:
    """The context of the deliver_webhook task the trigger enqueued for ``delivery``, running
    (as a worker claims it)."""
    sender = db.execute(
        "UPDATE tasks SET status = 'PROCESSING' WHERE id = (SELECT min(id) FROM tasks "
        "WHERE task_type = 'deliver_webhook' AND payload->>'delivery_id' = %s) RETURNING id",
        (str(delivery["id"]),),
    ).fetchone()
    return context(database_url, sender["id"], settings)


def delivery_for(db, task) -> dict:
    """The delivery a FAILED transition of ``task`` made."""
    db.execute("UPDATE tasks SET status = 'FAILED' WHERE id = %s", (task["id"],))
    return db.execute(
        "SELECT * FROM webhook_deliveries WHERE task_id = %s", (task["id"],)
    ).fetchone()
