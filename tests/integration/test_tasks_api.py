"""The tasks and dead-letter endpoints through the real API on a real Postgres.

States a worker would reach are made with plain UPDATEs, as an operator in
psql would: the triggers write history and dead letters either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from psycopg import sql

from sql import queries
from tests.helpers import API, assert_error, create, set_status


def test_create_with_every_field_and_aliases(client, make_account, db):
    ann = make_account("ann")
    body = {
        "name": "Sum some numbers",
        "description": "adds",
        "task_type": "compute",
        "payload": {"operation": "sum", "numbers": [1, 2, 3]},
        "queue": "math",
        "priority": "high",
        "scheduled_time": "2099-01-01T10:00:00",
        "max_retries": 5,
        "retry_delay": 2,
        "timeout": 30,
        "tags": ["x", "y"],
        "metadata": {"source": "test"},
        "callback_url": "https://example.com/hook",
        "callback_headers": {"X-Token": "t"},
        "callback_secret": "s3cret",
        "callback_max_attempts": 3,
    }
    response = client.post(f"{API}/tasks/", json=body, headers=ann.headers)
    assert response.status_code == 201
    data = response.get_json()
    task = data["task"]
    assert data["message"] == "Task created successfully"
    assert response.headers["Location"].endswith(f"/api/v1/tasks/{task['id']}")
    assert task["title"] == "Sum some numbers" and task["priority"] == 10
    assert task["scheduled_at"] == "2099-01-01T10:00:00+00:00" == task["run_at"]
    assert task["status"] == "PENDING" and task["user_id"] == ann.id
    assert task["callback_events"] == ["task.succeeded", "task.failed", "task.cancelled"]
    assert task["has_callback_secret"] is True
    assert "s3cret" not in response.get_data(as_text=True)
    assert {k: task[k] for k in ("queue", "max_retries", "retry_delay", "timeout", "tags")} == {
        "queue": "math",
        "max_retries": 5,
        "retry_delay": 2,
        "timeout": 30,
        "tags": ["x", "y"],
    }
    row = db.execute("SELECT * FROM tasks WHERE id = %s", (task["id"],)).fetchone()
    assert row["callback_secret"] == "s3cret" and row["callback_headers"] == {"X-Token": "t"}
    assert row["payload"] == {"operation": "sum", "numbers": [1, 2, 3]}
    history = db.execute("SELECT to_status FROM task_history WHERE task_id = %s", (task["id"],))
    assert [h["to_status"] for h in history] == ["PENDING"]
    assert create(client, ann, priority=42)["priority"] == 42
    assert create(client, ann, priority="critical")["priority"] == 20


BAD_CREATE_FIELDS = [
    ({"title": None}, "title"),
    ({"title": ""}, "title"),
    ({"task_type": "nope"}, "task_type"),
    ({"task_type": "compute", "payload": {"operation": "pow"}}, "payload.operation"),
    ({"payload": [1, 2]}, "payload"),
    ({"priority": "urgent"}, "priority"),
    ({"priority": 101}, "priority"),
    ({"priority": True}, "priority"),
    ({"max_retries": 10**30}, "max_retries"),
    ({"max_retries": 1.5}, "max_retries"),
    ({"timeout": 0}, "timeout"),
    ({"scheduled_at": "yesterday"}, "scheduled_at"),
    ({"scheduled_at": "99999-01-01T00:00:00"}, "scheduled_at"),
    ({"queue": "no spaces"}, "queue"),
    ({"tags": "x"}, "tags"),
    ({"title": "nul\x00byte"}, "title"),
    ({"metadata": {"k": "\x00"}}, "metadata"),
    ({"callback_url": "ftp://example.com"}, "callback_url"),
    ({"callback_events": ["task.exploded"]}, "callback_events.0"),
    ({"unknown_field": 1}, "unknown_field"),
]


def test_create_refuses_bad_fields(client, make_account, db):
    ann = make_account("ann")
    for changes, field in BAD_CREATE_FIELDS:
        body = {"title": "t", "task_type": "echo", **changes}
        body = {k: v for k, v in body.items() if v is not None}
        response = client.post(f"{API}/tasks", json=body, headers=ann.headers)
        assert_error(response, 400, field)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0


def test_unknown_task_type_names_the_known_ones(client, make_account):
    ann = make_account("ann")
    response = client.post(
        f"{API}/tasks", json={"title": "t", "task_type": "x"}, headers=ann.headers
    )
    message = assert_error(response, 400, "task_type")["field_errors"]["task_type"][0]
    assert "compute" in message and "echo" in message


INTERNAL_TYPES = ("cleanup_old_tasks", "rebuild_queue_indexes", "deliver_webhook")


def test_nobody_creates_internal_types_or_tasks_in_system_queues(client, make_account, db):
    ann, bob = make_account("ann"), make_account("bob")
    root = make_account("root", admin=True)
    finished = create(client, ann, title="finished long ago")
    set_status(db, finished["id"], "COMPLETED", completed_at=datetime(2000, 1, 1, tzinfo=UTC))
    hooked = create(client, ann, callback_url="https://example.com/hook", callback_secret="s")
    set_status(db, hooked["id"], "COMPLETED")
    delivery = db.execute("SELECT id, status, attempt FROM webhook_deliveries").fetchone()
    before = db.execute("SELECT id, task_type, status::text FROM tasks ORDER BY id").fetchall()
    attacks = [
        {"title": "wipe", "task_type": "cleanup_old_tasks", "payload": {"days": 0}},
        {"title": "rebuild", "task_type": "rebuild_queue_indexes", "payload": {"min_mb": 0}},
        {"title": "resend", "task_type": "deliver_webhook",
         "payload": {"delivery_id": delivery["id"]}},
    ]  # fmt: skip
    for account in (bob, root):
        for body in attacks:
            # Refused exactly like an unknown type, and the known types listed leave them out.
            single = client.post(f"{API}/tasks", json=body, headers=account.headers)
            message = assert_error(single, 400, "task_type")["field_errors"]["task_type"][0]
            assert message.startswith(f"Unknown task type {body['task_type']!r}")
            known = message.partition("known types:")[2]
            assert "echo" in known and not any(name in known for name in INTERNAL_TYPES)
            batch = {"tasks": [{"title": "fine"}, body]}
            response = client.post(f"{API}/tasks/batch", json=batch, headers=account.headers)
            assert_error(response, 400, "tasks.1.task_type")
        reserved = {"title": "sneak in", "task_type": "echo", "queue": "webhooks"}
        response = client.post(f"{API}/tasks", json=reserved, headers=account.headers)
        assert "reserved" in assert_error(response, 400, "queue")["field_errors"]["queue"][0]
        response = client.post(f"{API}/tasks/batch", json=[reserved], headers=account.headers)
        assert_error(response, 400, "tasks.0.queue")
    # Nothing was stored: Ann's finished task survives, her delivery is untouched.
    assert db.execute("SELECT id, task_type, status::text FROM tasks ORDER BY id").fetchall() == (
        before
    )
    assert db.execute("SELECT id, status, attempt FROM webhook_deliveries").fetchall() == [delivery]
    assert client.get(f"{API}/tasks/{finished['id']}", headers=ann.headers).status_code == 200
    listed = client.get(f"{API}/task-types", headers=bob.headers).get_json()["task_types"]
    assert not {t["name"] for t in listed} & set(INTERNAL_TYPES)


def test_idempotency_key_returns_the_first_task(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    headers = {**ann.headers, "Idempotency-Key": "order-17"}
    body = {"title": "one", "scheduled_at": "2099-01-01T02:00:00+02:00", "payload": {"a": 1}}
    first = client.post(f"{API}/tasks", json=body, headers=headers)
    again = client.post(f"{API}/tasks", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["task"]["id"] == first.get_json()["task"]["id"]
    assert again.get_json()["task"]["title"] == "one"
    # The same request spelled differently (alias, defaults, another offset) is the same.
    same = {"name": "one", "priority": "normal", "scheduled_time": "2099-01-01T00:00:00Z"}
    respelled = client.post(f"{API}/tasks", json={**same, "payload": {"a": 1}}, headers=headers)
    assert respelled.status_code == 200
    assert respelled.get_json()["task"]["id"] == first.get_json()["task"]["id"]
    other = client.post(
        f"{API}/tasks", json={"title": "b"}, headers={**bob.headers, "Idempotency-Key": "order-17"}
    )
    assert other.status_code == 201
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 2
    too_long = {**ann.headers, "Idempotency-Key": "k" * 300}
    assert_error(client.post(f"{API}/tasks", json={"title": "x"}, headers=too_long), 400)


def test_idempotency_key_reused_with_another_body_is_422(client, make_account, db):
    ann = make_account("ann")
    headers = {**ann.headers, "Idempotency-Key": "order-18"}
    first = client.post(f"{API}/tasks", json={"title": "one", "payload": {"n": 1}}, headers=headers)
    assert first.status_code == 201
    for other in (
        {"title": "two", "payload": {"n": 1}},
        {"title": "one", "payload": {"n": 2}},
        {"title": "one", "payload": {"n": 1}, "priority": "high"},
    ):
        response = client.post(f"{API}/tasks", json=other, headers=headers)
        body = assert_error(response, 422, "Idempotency-Key")
        assert "different request" in body["error"]
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 1
    same = client.post(f"{API}/tasks", json={"title": "one", "payload": {"n": 1}}, headers=headers)
    assert same.status_code == 200
    assert same.get_json()["task"]["id"] == first.get_json()["task"]["id"]
    spec = client.get("/openapi.json").get_json()
    answer = spec["paths"]["/api/v1/tasks"]["post"]["responses"]["422"]
    shared = spec["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]]
    assert "Idempotency-Key" in shared["description"]


def test_a_key_stored_before_fingerprints_still_returns_its_task(client, make_account, db):
    """Tasks created before migration 0007 have no fingerprint: their key still replays."""
    ann = make_account("ann")
    headers = {**ann.headers, "Idempotency-Key": "legacy-1"}
    first = client.post(f"{API}/tasks", json={"title": "one"}, headers=headers)
    db.execute("UPDATE tasks SET idempotency_fingerprint = NULL")
    again = client.post(f"{API}/tasks", json={"title": "two"}, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["task"]["id"] == first.get_json()["task"]["id"]


def test_batch_creates_all_in_one_statement(client, make_account, db):
    ann = make_account("ann")
    items = [{"title": f"t{i}", "task_type": "echo", "tags": [f"n{i}"]} for i in range(50)]
    items[7] = {"name": "scheduled", "scheduled_at": "2099-05-05T00:00:00Z", "priority": "low"}
    response = client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=ann.headers)
    assert response.status_code == 201
    data = response.get_json()
    assert data["count"] == 50
    tasks = data["tasks"]
    assert [t["title"] for t in tasks][:8] == [f"t{i}" for i in range(7)] + ["scheduled"]
    assert tasks[7]["run_at"] == "2099-05-05T00:00:00+00:00" and tasks[7]["priority"] == 1
    assert tasks[7]["task_type"] == "process" and tasks[3]["tags"] == ["n3"]
    assert db.execute("SELECT count(*) AS n FROM task_history").fetchone()["n"] == 50
    bare = client.post(f"{API}/tasks/batch", json=[{"title": "x"}], headers=ann.headers)
    assert bare.status_code == 201


def test_batch_refuses_bad_items_and_big_batches(app, client, make_account, db):
    ann = make_account("ann")
    items = [{"title": "ok"}, {"task_type": "echo"}, {"title": "x", "priority": "meh"}]
    response = client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=ann.headers)
    assert_error(response, 400, "tasks.1.title", "tasks.2.priority")
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    assert_error(client.post(f"{API}/tasks/batch", json={"tasks": []}, headers=ann.headers), 400)
    app.config["TASKQ_MAX_BATCH"] = 2
    three = {"tasks": [{"title": "a"}] * 3}
    assert_error(client.post(f"{API}/tasks/batch", json=three, headers=ann.headers), 400, "tasks")


def row_counts(db) -> dict[str, int]:
    """Rows of every table a create writes."""
    return db.execute(
        "SELECT (SELECT count(*) FROM tasks) AS tasks, "
        "(SELECT count(*) FROM task_history) AS history, "
        "(SELECT count(*) FROM webhook_deliveries) AS deliveries"
    ).fetchone()


# Postgres stores these (year 10000 and 1 BC in UTC), but no read could turn them back
# into a Python datetime: the owner's list, detail, status, history and every admin's
# list answered 400 from then on.
UNREADABLE_DATETIMES = ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]


def test_a_datetime_no_read_could_render_is_refused_and_not_stored(client, make_account, db):
    ann = make_account("ann")
    root = make_account("root", admin=True)
    kept = create(client, ann, title="kept")
    before = row_counts(db)
    for value in UNREADABLE_DATETIMES:
        for name in ("scheduled_at", "scheduled_time"):
            response = client.post(
                f"{API}/tasks", json={"title": "t", name: value}, headers=ann.headers
            )
            assert_error(response, 400, name)
        items = [{"title": "fine"}, {"title": "t", "scheduled_at": value}]
        response = client.post(f"{API}/tasks/batch", json=items, headers=ann.headers)
        assert_error(response, 400, "tasks.1.scheduled_at")
    assert row_counts(db) == before
    for path in ("", f"/{kept['id']}", f"/{kept['id']}/status", f"/{kept['id']}/history"):
        assert client.get(f"{API}/tasks{path}", headers=ann.headers).status_code == 200
    assert client.get(f"{API}/admin/tasks", headers=root.headers).status_code == 200


def test_the_last_storable_datetimes_are_stored_and_read_back(client, make_account):
    ann = make_account("ann")
    root = make_account("root", admin=True)
    edges = {
        "0001-01-02T12:00:00+11:59": "0001-01-02T00:01:00+00:00",
        "9999-12-30T12:00:00-11:59": "9999-12-30T23:59:00+00:00",
    }
    for value, utc in edges.items():
        task = create(client, ann, scheduled_at=value)
        assert task["scheduled_at"] == utc
        for path in ("", "/status", "/history"):
            response = client.get(f"{API}/tasks/{task['id']}{path}", headers=ann.headers)
            assert response.status_code == 200, response.get_json()
    batch = client.post(
        f"{API}/tasks/batch",
        json=[{"title": "b", "scheduled_at": v} for v in edges],
        headers=ann.headers,
    )
    assert [t["scheduled_at"] for t in batch.get_json()["tasks"]] == list(edges.values())
    assert client.get(f"{API}/tasks", headers=ann.headers).get_json()["count"] == 4
    assert client.get(f"{API}/admin/tasks", headers=root.headers).get_json()["count"] == 4


def test_list_filters(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    a = create(client, ann, title="Report 100% done", queue="q1", priority="high", tags=["red"])
    b = create(client, ann, title="other", description="mentions report", queue="q2")
    c = create(
        client,
        ann,
        title="third",
        task_type="compute",
        payload={"operation": "sum", "numbers": [1]},
    )
    create(client, bob, title="Report of bob")
    set_status(db, c["id"], "FAILED")
    db.execute("UPDATE tasks SET created_at = '2020-01-15T12:00:00Z' WHERE id = %s", (b["id"],))

    def ids(**params):
        response = client.get(f"{API}/tasks", query_string=params, headers=ann.headers)
        assert response.status_code == 200, response.get_json()
        return sorted(t["id"] for t in response.get_json()["results"])

    assert ids() == sorted([a["id"], b["id"], c["id"]])
    assert ids(status="failed") == [c["id"]]
    assert ids(status="PENDING,FAILED") == sorted([a["id"], b["id"], c["id"]])
    assert ids(task_type="compute") == [c["id"]]
    assert ids(queue="q1") == [a["id"]]
    assert ids(priority="high") == ids(priority="10") == [a["id"]]
    assert ids(tag="red") == [a["id"]]
    assert ids(search="REPORT") == sorted([a["id"], b["id"]])
    assert ids(search="100%") == [a["id"]]
    # Words, not substrings: each word of the search starts a word of title or description.
    assert ids(search="rep") == sorted([a["id"], b["id"]])
    assert ids(search="report 10") == [a["id"]] and ids(search="MENTIONS rep") == [b["id"]]
    assert ids(search="port") == ids(search="report bob") == []
    assert ids(search="%") == []  # no word in it
    assert ids(end_date="2020-01-15") == [b["id"]]
    assert ids(start_date="2020-01-16") == sorted([a["id"], c["id"]])
    assert ids(start_date="2020-01-15T11:00:00", end_date="2020-01-15T12:00:00Z") == [b["id"]]


def test_list_ordering_and_pagination(client, make_account):
    ann = make_account("ann")
    batch = [{"title": f"t{i:02d}", "priority": i} for i in range(25)]
    client.post(f"{API}/tasks/batch", json={"tasks": batch}, headers=ann.headers)
    first = client.get(f"{API}/tasks?page_size=10&ordering=-priority", headers=ann.headers)
    data = first.get_json()
    assert data["count"] == 25 and data["previous"] is None
    assert [t["priority"] for t in data["results"]] == list(range(24, 14, -1))
    next_url = urlsplit(data["next"])
    assert next_url.scheme == "http" and next_url.path == "/api/v1/tasks"
    assert parse_qs(next_url.query) == {
        "page_size": ["10"],
        "ordering": ["-priority"],
        "page": ["2"],
    }
    last = client.get(f"{API}/tasks?page_size=10&ordering=-priority&page=3", headers=ann.headers)
    data = last.get_json()
    assert [t["priority"] for t in data["results"]] == [4, 3, 2, 1, 0]
    assert data["next"] is None and "page=2" in data["previous"]
    by_title = client.get(f"{API}/tasks?ordering=title,-id&page_size=3", headers=ann.headers)
    assert [t["title"] for t in by_title.get_json()["results"]] == ["t00", "t01", "t02"]
    beyond = client.get(f"{API}/tasks?page=9&page_size=10", headers=ann.headers).get_json()
    assert beyond["results"] == [] and beyond["count"] == 25 and "page=3" in beyond["previous"]


BAD_LIST_QUERIES = [
    ("ordering=password_hash", "ordering"),
    ("ordering=title;drop", "ordering"),
    ("ordering=,", "ordering"),
    ("page=0", "page"),
    ("page=-1", "page"),
    ("page=abc", "page"),
    ("page_size=1000", "page_size"),
    ("page_size=0", "page_size"),
    ("status=DONE", "status"),
    ("priority=urgent", "priority"),
    ("start_date=2020-13-01", "start_date"),
    ("end_date=9999-12-31T23:59:59", None),
    ("end_date=9999-12-31", None),
    ("start_date=2021-02-29", "start_date"),
    ("status=PENDING%0A", "status"),
    ("ordering=title%0A", "ordering"),
    ("search=%00", "search"),
]


def test_list_refuses_bad_queries(client, make_account):
    ann = make_account("ann")
    for query, field in BAD_LIST_QUERIES:
        response = client.get(f"{API}/tasks?{query}", headers=ann.headers)
        if field is None:  # valid, if odd: must not crash
            assert response.status_code == 200, query
        else:
            assert_error(response, 400, field)


def test_list_query_uses_the_user_index(database_url, db):
    from app.pagination import keyset_sql, order_sql
    from app.tasks import ordering_terms, where_sql

    terms = ordering_terms(None)
    after, cursor = keyset_sql("t", terms, [datetime(2021, 1, 1, tzinfo=UTC), 99])
    db.execute("SET enable_seqscan = off")
    for more in ([], [after]):  # a first page, and a page after a cursor
        where = where_sql({"user_id": 1, "start_date": None}, *more)
        statement = sql.SQL(queries["list_tasks"]).format(where=where, order=order_sql("t", terms))
        plan = db.execute(
            sql.SQL("EXPLAIN ") + statement,
            {"user_id": 1, "start_date": "2020-01-01", "limit": 20, "offset": 0, **cursor},
        ).fetchall()
        text = "\n".join(row["QUERY PLAN"] for row in plan)
        assert "ix_tasks_user_created" in text and "Sort" not in text, text
        if more:  # the cursor is where the index scan starts, not a filter of every row
            condition = next(line for line in text.splitlines() if "Index Cond" in line)
            assert "ROW(created_at, id) < ROW(" in condition, text


def test_detail_status_and_history(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann)
    set_status(db, task["id"], "PROCESSING", attempts=1, worker_id="w1")
    set_status(db, task["id"], "RETRYING", error="boom", run_at="2099-01-01T00:00:00Z")
    detail = client.get(f"{API}/tasks/{task['id']}", headers=ann.headers)
    assert detail.status_code == 200
    data = detail.get_json()
    assert data["cached"] is False
    assert data["task"]["status"] == "RETRYING"
    assert data["task"]["next_retry_at"] == "2099-01-01T00:00:00+00:00"
    status = client.get(f"{API}/tasks/{task['id']}/status", headers=ann.headers).get_json()
    assert status["status"] == "RETRYING" and status["error"] == "boom" and status["attempts"] == 1
    history = client.get(f"{API}/tasks/{task['id']}/history", headers=ann.headers).get_json()
    assert history["task_id"] == task["id"]
    steps = [(h["from_status"], h["to_status"], h["worker_id"]) for h in history["history"]]
    assert steps == [
        (None, "PENDING", None),
        ("PENDING", "PROCESSING", "w1"),
        ("PROCESSING", "RETRYING", "w1"),
    ]
    assert history["history"][-1]["error"] == "boom"
    for suffix in ("", "/status", "/history"):
        assert_error(client.get(f"{API}/tasks/999999{suffix}", headers=ann.headers), 404)


def test_delete(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann)
    response = client.delete(f"{API}/tasks/{task['id']}", headers=ann.headers)
    assert response.status_code == 200
    assert response.get_json() == {"message": f"Task {task['id']} deleted successfully"}
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    assert_error(client.delete(f"{API}/tasks/{task['id']}", headers=ann.headers), 404)
    running = create(client, ann)
    set_status(db, running["id"], "PROCESSING")
    assert_error(client.delete(f"{API}/tasks/{running['id']}", headers=ann.headers), 409)


def test_cancel(client, make_account, db):
    ann = make_account("ann")
    waiting, running, done = create(client, ann), create(client, ann), create(client, ann)
    set_status(db, running["id"], "PROCESSING", worker_id="w1")
    set_status(db, done["id"], "COMPLETED")
    db.execute("LISTEN taskq_cancel")
    for task in (waiting, running):
        response = client.post(f"{API}/tasks/{task['id']}/cancel", headers=ann.headers)
        assert response.status_code == 200
        assert response.get_json()["task"]["status"] == "CANCELLED"
        assert response.get_json()["task"]["completed_at"] is not None
    cancels = [n.payload for n in db.notifies(timeout=2, stop_after=1)]
    assert cancels == [str(running["id"])]
    body = assert_error(client.post(f"{API}/tasks/{done['id']}/cancel", headers=ann.headers), 409)
    assert "COMPLETED" in body["error"]
    assert_error(client.post(f"{API}/tasks/999999/cancel", headers=ann.headers), 404)


def test_retry(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann)
    set_status(db, task["id"], "FAILED", attempts=4, error="boom")
    response = client.post(f"{API}/tasks/{task['id']}/retry", headers=ann.headers)
    assert response.status_code == 200
    retried = response.get_json()["task"]
    assert (retried["status"], retried["attempts"], retried["error"]) == ("PENDING", 0, None)
    letter = db.execute("SELECT reprocessed_at FROM dead_letters WHERE task_id = %s", (task["id"],))
    assert letter.fetchone()["reprocessed_at"] is not None
    assert_error(client.post(f"{API}/tasks/{task['id']}/retry", headers=ann.headers), 409)


def test_stats(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    tasks = [create(client, ann) for _ in range(3)]
    create(client, bob)
    set_status(db, tasks[0]["id"], "COMPLETED")
    response = client.get(f"{API}/tasks/stats", headers=ann.headers)
    assert response.status_code == 200
    data = response.get_json()
    counts = {s["status"]: s["count"] for s in data["stats"]}
    assert counts == {
        "WAITING": 0,
        "PENDING": 2,
        "PROCESSING": 0,
        "COMPLETED": 1,
        "FAILED": 0,
        "RETRYING": 0,
        "CANCELLED": 0,
    }
    assert data["total"] == 3
    assert_error(client.get(f"{API}/tasks/stats"), 401)


def test_task_types(client, make_account):
    ann = make_account("ann")
    response = client.get(f"{API}/task-types", headers=ann.headers)
    assert response.status_code == 200
    types = {t["name"]: t for t in response.get_json()["task_types"]}
    assert {"echo", "compute", "process", "sleep"} <= set(types)
    compute = types["compute"]["payload_schema"]
    assert compute["properties"]["operation"]["enum"] == ["sum", "product", "average"]
    assert set(compute["required"]) == {"operation", "numbers"}
    assert types["compute"]["description"]
    assert_error(client.get(f"{API}/task-types"), 401)


def test_dead_letters_list_detail_and_reprocess(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann, task_type="compute", payload={"operation": "sum", "numbers": [1]})
    set_status(db, task["id"], "FAILED", attempts=4, error="division by zero")
    listing = client.get(f"{API}/dead-letters", headers=ann.headers)
    assert listing.status_code == 200
    data = listing.get_json()
    assert data["count"] == 1 and data["next"] is None
    letter = data["results"][0]
    assert (letter["task_id"], letter["error"], letter["attempts"]) == (
        task["id"],
        "division by zero",
        4,
    )
    assert letter["task_status"] == "FAILED" and letter["reprocessed_at"] is None
    detail = client.get(f"{API}/dead-letters/{letter['id']}", headers=ann.headers)
    assert detail.get_json()["dead_letter"]["payload"] == {"operation": "sum", "numbers": [1]}
    response = client.post(f"{API}/dead-letters/{letter['id']}/reprocess", headers=ann.headers)
    assert response.status_code == 200
    assert (response.get_json()["task"]["status"], response.get_json()["task"]["attempts"]) == (
        "PENDING",
        0,
    )
    again = client.post(f"{API}/dead-letters/{letter['id']}/reprocess", headers=ann.headers)
    assert "already" in assert_error(again, 409)["error"]
    after = client.get(f"{API}/dead-letters/{letter['id']}", headers=ann.headers).get_json()
    assert after["dead_letter"]["reprocessed_at"] is not None
    assert_error(client.get(f"{API}/dead-letters?page=0", headers=ann.headers), 400, "page")
    assert_error(client.get(f"{API}/dead-letters/999999", headers=ann.headers), 404)


def test_reprocess_refuses_a_task_already_retried(client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann)
    set_status(db, task["id"], "FAILED")
    letter = db.execute("SELECT id FROM dead_letters").fetchone()["id"]
    db.execute("UPDATE tasks SET status = 'PENDING' WHERE id = %s", (task["id"],))
    response = client.post(f"{API}/dead-letters/{letter}/reprocess", headers=ann.headers)
    assert "PENDING" in assert_error(response, 409)["error"]


OWNED_ROUTES = [
    ("get", "/tasks/{task}"),
    ("get", "/tasks/{task}/status"),
    ("get", "/tasks/{task}/history"),
    ("delete", "/tasks/{task}"),
    ("post", "/tasks/{task}/cancel"),
    ("post", "/tasks/{task}/retry"),
    ("get", "/dead-letters/{letter}"),
    ("post", "/dead-letters/{letter}/reprocess"),
]


def test_another_users_task_is_404_on_every_route(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    task = create(client, bob)
    set_status(db, task["id"], "FAILED")
    letter = db.execute("SELECT id FROM dead_letters").fetchone()["id"]
    for method, route in OWNED_ROUTES:
        path = API + route.format(task=task["id"], letter=letter)
        response = getattr(client, method)(path, headers=ann.headers)
        assert_error(response, 404)
        assert getattr(client, method)(path).status_code == 401
    # Nothing changed for bob, and his own view still works.
    row = db.execute("SELECT status FROM tasks WHERE id = %s", (task["id"],)).fetchone()
    assert row["status"] == "FAILED"
    assert client.get(f"{API}/tasks/{task['id']}", headers=bob.headers).status_code == 200
    listing = client.get(f"{API}/tasks", headers=ann.headers).get_json()
    assert listing["count"] == 0
    assert client.get(f"{API}/dead-letters", headers=ann.headers).get_json()["count"] == 0


def test_search_follows_an_operators_retitle_and_forgets_deleted_tasks(client, make_account, db):
    ann = make_account("ann")
    kept = create(client, ann, title="alpha", description="first words")
    gone = create(client, ann, title="alpha two")

    def ids(search: str) -> list[int]:
        response = client.get(f"{API}/tasks", query_string={"search": search}, headers=ann.headers)
        return sorted(t["id"] for t in response.get_json()["results"])

    assert ids("alpha") == sorted([kept["id"], gone["id"]])
    db.execute("UPDATE tasks SET title = 'omega' WHERE id = %s", (kept["id"],))
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (kept["id"],))
    assert ids("alpha") == [gone["id"]] and ids("omega first") == [kept["id"]]
    db.execute("DELETE FROM tasks WHERE id = %s", (gone["id"],))
    assert db.execute("SELECT count(*) AS n FROM task_search").fetchone()["n"] == 1
