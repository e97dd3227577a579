"""Requests as the earlier systems' users write them (shared/seeds), read onto taskq's one
implementation: status aliases, seed 002's create body, seed 001's webhook body."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.helpers import API, assert_error, create, set_status
from worker.webhooks import webhook_body


def test_status_aliases_filter_as_their_status(client, make_account, db):
    ann = make_account("ann")
    done = create(client, ann, title="done")
    again = create(client, ann, title="again")
    create(client, ann, title="waiting")
    set_status(db, done["id"], "COMPLETED")
    set_status(db, again["id"], "RETRYING")

    def ids(status: str) -> list[int]:
        response = client.get(f"{API}/tasks", query_string={"status": status}, headers=ann.headers)
        assert response.status_code == 200, response.get_json()
        return sorted(t["id"] for t in response.get_json()["results"])

    assert ids("success") == ids("SUCCESS") == ids("completed") == [done["id"]]
    assert ids("retry") == [again["id"]]
    assert ids("success,retry,completed") == sorted([done["id"], again["id"]])
    results = client.get(f"{API}/tasks?status=success", headers=ann.headers).get_json()
    assert results["results"][0]["status"] == "COMPLETED"  # answers keep taskq's names
    assert_error(client.get(f"{API}/tasks?status=succes", headers=ann.headers), 400, "status")


def test_seed_002_create_body_is_the_task_taskq_would_make(client, make_account, db):
    ann = make_account("ann")
    seed = {
        "task_name": "echo",
        "args": [10, 20],
        "kwargs": {"x": 1},
        "priority": "high",
        "max_retries": 3,
        "queue_name": "math",
    }
    response = client.post(f"{API}/tasks/", json=seed, headers=ann.headers)
    assert response.status_code == 201, response.get_json()
    task = response.get_json()["task"]
    assert (task["title"], task["task_type"], task["queue"], task["priority"]) == (
        "echo",
        "echo",
        "math",
        10,
    )
    assert task["payload"] == {"args": [10, 20], "kwargs": {"x": 1}}
    same = create(
        client,
        ann,
        title="echo",
        task_type="echo",
        queue="math",
        priority=10,
        payload={"args": [10, 20], "kwargs": {"x": 1}},
    )
    columns = "title, task_type, queue, priority, payload, max_retries"
    rows = db.execute(
        f"SELECT {columns} FROM tasks WHERE id = ANY(%s) ORDER BY id", ([task["id"], same["id"]],)
    ).fetchall()
    assert rows[0] == rows[1]


def test_seed_002_bodies_that_do_not_fit_are_refused_and_not_stored(client, make_account, db):
    ann = make_account("ann")
    before = db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"]
    for body, field in (
        ({"task_name": "echo", "args": "10,20"}, "args"),
        ({"task_name": "echo", "kwargs": [1]}, "kwargs"),
        ({"task_name": "echo", "args": [1], "payload": {"a": 1}}, "args"),
        ({"task_name": "no_such_type"}, "task_type"),
        ({"task_name": "echo", "queue_name": "webhooks"}, "queue"),
    ):
        response = client.post(f"{API}/tasks", json=body, headers=ann.headers)
        assert_error(response, 400, field)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == before


def test_a_task_asks_for_seed_001_webhook_bodies(client, make_account, db):
    ann = make_account("ann")
    url = "https://example.com/hook"
    seed = create(client, ann, title="s", callback_url=url, callback_format="seed")
    plain = create(client, ann, title="p", callback_url=url)
    assert (seed["callback_format"], plain["callback_format"]) == ("seed", None)
    assert_error(
        client.post(
            f"{API}/tasks", json={"title": "x", "callback_format": "xml"}, headers=ann.headers
        ),
        400,
        "callback_format",
    )
    for task_id in (seed["id"], plain["id"]):
        set_status(db, task_id, "FAILED", error="boom")
    deliveries = {
        row["task_id"]: row
        for row in db.execute("SELECT task_id, event, payload FROM webhook_deliveries").fetchall()
    }
    now = datetime.now(UTC)
    seed_body = json.loads(webhook_body("task.failed", deliveries[seed["id"]]["payload"], now))
    plain_body = json.loads(webhook_body("task.failed", deliveries[plain["id"]]["payload"], now))
    assert seed_body["task"]["name"] == "s" and "title" not in seed_body["task"]
    assert (seed_body["task"]["status"], seed_body["task"]["error_message"]) == ("failed", "boom")
    assert (plain_body["task"]["status"], plain_body["task"]["error"]) == ("FAILED", "boom")
    set_status(db, seed["id"], "PENDING")
    set_status(db, seed["id"], "COMPLETED", error=None)
    done = db.execute(
        "SELECT payload FROM webhook_deliveries WHERE task_id = %s AND event = 'task.succeeded'",
        (seed["id"],),
    ).fetchone()
    body = json.loads(webhook_body("task.succeeded", done["payload"], now))["task"]
    assert (body["status"], body["error_message"]) == ("success", "")
