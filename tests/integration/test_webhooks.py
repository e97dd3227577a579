"""Webhooks: the trigger that enqueues deliveries, the endpoints, and one delivery attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest
from psycopg.types.json import Jsonb

from taskq import TaskSettings
from tests.helpers import Receiver
from tests.webhook_helpers import context, delivery_for, insert_task, sender_context
from worker.webhooks import WebhookDeliveryError, deliver_webhook, verify_signature


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([200])
    yield server
    server.close()


def test_a_subscribed_transition_enqueues_a_delivery_and_its_task(db):
    task = insert_task(db, "https://example.com/hook")
    plain = insert_task(db, None)
    db.execute(
        "UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", ([task["id"], plain["id"]],)
    )
    assert db.execute("SELECT count(*) AS n FROM webhook_deliveries").fetchone()["n"] == 0
    db.execute(
        "UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY(%s)", ([task["id"], plain["id"]],)
    )
    deliveries = db.execute("SELECT * FROM webhook_deliveries").fetchall()
    assert [(d["task_id"], d["event"], d["max_attempts"]) for d in deliveries] == [
        (task["id"], "task.succeeded", 3)
    ]
    assert "callback_secret" not in deliveries[0]["payload"]
    assert deliveries[0]["payload"]["status"] == "COMPLETED"
    job = db.execute("SELECT * FROM tasks WHERE task_type = 'deliver_webhook'").fetchone()
    assert (job["queue"], job["user_id"], job["max_retries"], job["status"]) == (
        "webhooks",
        None,
        2,
        "PENDING",
    )
    assert job["payload"] == {"delivery_id": deliveries[0]["id"]}
    assert deliveries[0]["sender_task_id"] == job["id"]  # the one task that may send it


def test_event_selection_and_the_revoked_alias(db):
    started = insert_task(db, "https://example.com/a", ["task.started"])
    revoked = insert_task(db, "https://example.com/b", ["task.succeeded", "task.revoked"])
    default = insert_task(db, "https://example.com/c")
    ids = [started["id"], revoked["id"], default["id"]]
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", (ids,))
    db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = ANY(%s)", (ids,))
    rows = db.execute("SELECT task_id, event FROM webhook_deliveries ORDER BY id").fetchall()
    assert [(r["task_id"], r["event"]) for r in rows] == [
        (started["id"], "task.started"),
        (revoked["id"], "task.revoked"),
        (default["id"], "task.cancelled"),
    ]


def test_delivery_is_signed_twice_and_recorded(db, database_url, receiver, monkeypatch):
    task = insert_task(db, receiver.url)
    delivery = delivery_for(db, task)
    result = deliver_webhook(
        {"delivery_id": delivery["id"]}, sender_context(db, database_url, delivery)
    )
    assert result["status_code"] == 200
    headers, body = receiver.requests[0]
    assert headers["X-Taskqueue-Signature"] == hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert verify_signature("s3cret", body, headers["X-Taskqueue-Signature-256"])
    assert not verify_signature("wrong", body, headers["X-Taskqueue-Signature-256"])
    assert headers["X-Custom"] == "yes"
    sent = json.loads(body)
    assert (sent["event"], sent["task"]["id"], sent["task"]["status"]) == (
        "task.failed",
        task["id"],
        "FAILED",
    )
    row = db.execute("SELECT * FROM webhook_deliveries WHERE id = %s", (delivery["id"],)).fetchone()
    assert (row["status"], row["attempt"], row["status_code"]) == ("delivered", 1, 200)
    assert row["duration_ms"] > 0 and row["delivered_at"] is not None
    # Run again (a lost lease): already delivered, nothing is sent twice.
    again = deliver_webhook(
        {"delivery_id": delivery["id"]}, sender_context(db, database_url, delivery)
    )
    assert again == {"skipped": "already delivered"}
    assert len(receiver.requests) == 1


def test_a_500_raises_for_a_retry_and_the_last_attempt_marks_it_failed(
    db, database_url, receiver, monkeypatch
):
    receiver.statuses = [500]
    delivery = delivery_for(db, insert_task(db, receiver.url))
    ctx = sender_context(db, database_url, delivery)
    for attempt in (1, 2, 3):
        with pytest.raises(WebhookDeliveryError):
            deliver_webhook({"delivery_id": delivery["id"]}, ctx)
        row = db.execute(
            "SELECT * FROM webhook_deliveries WHERE id = %s", (delivery["id"],)
        ).fetchone()
        assert (row["attempt"], row["status_code"], row["error"]) == (attempt, 500, "HTTP 500")
    assert row["status"] == "failed"
    assert [a["status_code"] for a in row["attempt_log"]] == [500, 500, 500]


def test_private_addresses_are_refused_without_the_setting(db, database_url, receiver, monkeypatch):
    delivery = delivery_for(db, insert_task(db, receiver.url))
    unset = TaskSettings()  # the worker's defaults: TASKQ_ALLOW_PRIVATE_URLS unset
    result = deliver_webhook(
        {"delivery_id": delivery["id"]}, sender_context(db, database_url, delivery, unset)
    )
    assert result["error"].startswith("refused:")
    assert receiver.requests == []
    row = db.execute("SELECT * FROM webhook_deliveries WHERE id = %s", (delivery["id"],)).fetchone()
    assert (row["status"], row["attempt"]) == ("failed", 1)


def stray_task(db, delivery_id: int) -> int:
    """A deliver_webhook task made by hand in psql, running: not the delivery's sender."""
    return db.execute(
        "INSERT INTO tasks (title, task_type, payload, queue, status) "
        "VALUES ('stray', 'deliver_webhook', %s, 'webhooks', 'PROCESSING') RETURNING id",
        (Jsonb({"delivery_id": delivery_id}),),
    ).fetchone()["id"]


def test_the_sender_sends_only_a_due_delivery_and_only_its_own(
    db, database_url, receiver, monkeypatch
):
    receiver.statuses = [500, 200]
    delivery = delivery_for(db, insert_task(db, receiver.url))
    sent = {"delivery_id": delivery["id"]}

    def state() -> tuple[str, int]:
        row = db.execute(
            "SELECT status, attempt FROM webhook_deliveries WHERE id = %s", (delivery["id"],)
        ).fetchone()
        return row["status"], row["attempt"]

    # Pending and due, but asked by a task that is not its sender: nothing sent or counted.
    stray = context(database_url, stray_task(db, delivery["id"]))
    assert "not its turn" in deliver_webhook(sent, stray)["skipped"]
    assert (receiver.requests, state()) == ([], ("pending", 0))

    sender = sender_context(db, database_url, delivery)
    with pytest.raises(WebhookDeliveryError):  # the sender's first attempt: a 500
        deliver_webhook(sent, sender)
    # As the engine leaves it: the retry is due in an hour. Not its turn, for anyone.
    db.execute(
        "UPDATE tasks SET status = 'RETRYING', run_at = now() + interval '1 hour' WHERE id = %s",
        (sender.task_id,),
    )
    for ctx in (stray, sender):
        assert "not its turn" in deliver_webhook(sent, ctx)["skipped"]
    assert (len(receiver.requests), state()) == (1, ("pending", 1))

    # Its turn (the sender is claimed): delivered. Then a re-run or a stray resend nothing.
    assert deliver_webhook(sent, sender_context(db, database_url, delivery))["status_code"] == 200
    for ctx in (stray, sender_context(db, database_url, delivery)):
        assert deliver_webhook(sent, ctx) == {"skipped": "already delivered"}
    assert (len(receiver.requests), state()) == (2, ("delivered", 2))

    # Attempts spent (a worker died after its last claim): even the sender sends nothing.
    spent = delivery_for(db, insert_task(db, receiver.url))
    db.execute("UPDATE webhook_deliveries SET attempt = max_attempts WHERE id = %s", (spent["id"],))
    result = deliver_webhook({"delivery_id": spent["id"]}, sender_context(db, database_url, spent))
    assert result == {"skipped": "its attempts are spent"}
    assert len(receiver.requests) == 2


# ---------------------------------------------------------------- the endpoints


def test_list_replay_and_trigger(client, make_account, db):
    owner, other = make_account("owner"), make_account("other")
    task = db.execute(
        "INSERT INTO tasks (user_id, title, callback_url) "
        "VALUES (%s, 't', 'https://example.com/h') RETURNING id",
        (owner.id,),
    ).fetchone()
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (task["id"],))
    base = f"/api/v1/tasks/{task['id']}"

    listed = client.get(f"{base}/webhook-deliveries", headers=owner.headers)
    assert listed.status_code == 200
    first = listed.get_json()["results"][0]
    assert (listed.get_json()["count"], first["event"], first["status"]) == (
        1,
        "task.succeeded",
        "pending",
    )

    replayed = client.post(f"{base}/webhook-deliveries/{first['id']}/replay", headers=owner.headers)
    assert replayed.status_code == 202
    assert replayed.get_json()["delivery_id"] > first["id"]

    triggered = client.post(f"{base}/trigger-webhook", headers=owner.headers)
    assert triggered.status_code == 202
    assert triggered.get_json()["event"] == "task.succeeded"
    delivery_ids = {
        t["payload"]["delivery_id"]
        for t in db.execute("SELECT payload FROM tasks WHERE task_type = 'deliver_webhook'")
    }
    assert delivery_ids == {
        first["id"],
        replayed.get_json()["delivery_id"],
        triggered.get_json()["delivery_id"],
    }
    # Replay and trigger make their delivery due properly: each has its own sender task.
    senders = db.execute(
        "SELECT w.id, s.payload FROM webhook_deliveries w JOIN tasks s ON s.id = w.sender_task_id"
    ).fetchall()
    assert sorted(r["payload"]["delivery_id"] for r in senders) == sorted(delivery_ids)
    assert all(r["payload"]["delivery_id"] == r["id"] for r in senders)

    for response in (
        client.get(f"{base}/webhook-deliveries", headers=other.headers),
        client.post(f"{base}/webhook-deliveries/999999/replay", headers=owner.headers),
        client.post(f"{base}/trigger-webhook", json={"event": "task.nope"}, headers=owner.headers),
        client.get(f"{base}/webhook-deliveries"),
    ):
        assert response.status_code in {400, 401, 404}
        assert set(response.get_json()) == {"error", "field_errors"}


def test_trigger_without_a_callback_url_is_400(client, make_account, db):
    owner = make_account("owner")
    task = db.execute(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id", (owner.id,)
    ).fetchone()
    response = client.post(f"/api/v1/tasks/{task['id']}/trigger-webhook", headers=owner.headers)
    assert response.status_code == 400
    assert response.get_json()["field_errors"] == {"callback_url": ["Not set."]}


def test_a_users_header_never_goes_out_beside_ours(db, database_url, receiver, monkeypatch):
    task = insert_task(db, receiver.url)
    spoofed = {"content-type": "text/plain", "x-taskqueue-event": "forged", "X-Custom": "yes"}
    db.execute("UPDATE tasks SET callback_headers = %s WHERE id = %s", (Jsonb(spoofed), task["id"]))
    delivery = delivery_for(db, task)
    assert deliver_webhook(
        {"delivery_id": delivery["id"]}, sender_context(db, database_url, delivery)
    )
    headers, _ = receiver.requests[0]
    names = [name.lower() for name in headers]
    assert names.count("content-type") == 1 and names.count("x-taskqueue-event") == 1
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Taskqueue-Event"] == "task.failed" and headers["X-Custom"] == "yes"
