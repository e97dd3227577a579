"""Bulk enqueue (``taskq.enqueue.insert_tasks``): COPY with reserved ids, rows built client-side.

The rows it returns must be exactly what ``SELECT *`` reads back (same values,
same types, same key order down into the jsonb), and the batch endpoint must
answer exactly what ``GET /tasks/{id}`` shows afterwards.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.taskq_system import TaskqClient
from sql import queries
from taskq.enqueue import COPY_COLUMNS, insert_tasks
from taskq.representation import task_to_json
from tests.integration.test_schema import make_user

API = "/api/v1"
# Numbers jsonb turns into numeric and back, keys it reorders, text beyond ASCII.
TRICKY_JSON = {
    "zeta": [1.5, -0.0, 1e16, 1.2345678901234567e20, 5e-324, 0.1, 2**70, True, None, "x"],
    "a": {"é": "ü", "z": [], "ab": {}, "b": {"yy": 1, "x": 2.0}},
    "": "empty key",
    "bb": "line\nbreak \\ tab\t \u2028",
}
SELECT_TASKS = "SELECT * FROM tasks WHERE id = ANY(%s) ORDER BY id"


def as_text(value) -> str:
    """JSON text that keeps key order, so two dictionaries compare in order too."""
    return json.dumps(value, default=str)


def every_kind_of_task() -> list[dict]:
    """Tasks covering every column: defaults, JSON, arrays, callbacks, past and future times."""
    past = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=timezone(timedelta(hours=2)))
    future = datetime(2099, 5, 5, 23, 30, tzinfo=timezone(timedelta(hours=-7)))
    return [
        {"title": "bare"},
        {
            "title": "everything",
            "description": "all columns",
            "task_type": "echo",
            "payload": TRICKY_JSON,
            "queue": "q.1",
            "priority": 20,
            "scheduled_at": future,
            "max_retries": 0,
            "retry_delay": 0,
            "timeout": 30,
            "tags": ["red", "ünï"],
            "metadata": {"source": "test", "n": 1},
            "callback_url": "https://example.com/hook",
            "callback_events": ("task.succeeded", "task.failed"),
            "callback_headers": {"X-Token": "t", "A": "b"},
            "callback_secret": "s3cret",
            "callback_max_attempts": 3,
        },
        {"title": "due long ago", "scheduled_at": past, "payload": {"n": 1}},
        {"title": "utc", "scheduled_at": datetime(2099, 1, 1, tzinfo=UTC), "tags": ()},
    ]


@pytest.mark.parametrize("time_zone", ["Etc/UTC", "Asia/Kolkata"])
def test_rows_are_what_select_star_reads_back(database_url, time_zone):
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("SELECT set_config('TimeZone', %s, false)", (time_zone,))
        user = make_user(conn)
        rows = insert_tasks(conn, user, every_kind_of_task())
        stored = conn.execute(SELECT_TASKS, ([row["id"] for row in rows],)).fetchall()
    assert [row["title"] for row in rows] == ["bare", "everything", "due long ago", "utc"]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert rows == stored
    for row, read in zip(rows, stored, strict=True):
        assert list(row) == list(read)  # the columns of SELECT *, in table order
        for name in row:
            assert type(row[name]) is type(read[name]), name
            assert as_text(row[name]) == as_text(read[name]), name
        assert as_text(task_to_json(row)) == as_text(task_to_json(read))
    assert rows[0]["run_at"] == rows[0]["created_at"] == rows[0]["updated_at"]
    assert rows[2]["run_at"] == rows[2]["created_at"]  # due in the past: greatest() is now()
    assert rows[1]["run_at"] == rows[1]["scheduled_at"]


def test_copy_runs_the_insert_trigger_once(database_url, db):
    user = make_user(db)
    tasks = [{"title": f"t{i}", "queue": "ab"[i % 2]} for i in range(450)]
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq_events")
        listener.execute("LISTEN taskq_wakeup")
        rows = insert_tasks(db, user, tasks)
        notes = list(listener.notifies(timeout=1, stop_after=5))
    history = db.execute(
        "SELECT id, task_id, user_id, from_status, to_status, attempt FROM task_history ORDER BY id"
    ).fetchall()
    assert [h["task_id"] for h in history] == [row["id"] for row in rows]
    assert {(h["user_id"], h["from_status"], h["to_status"], h["attempt"]) for h in history} == {
        (user, None, "PENDING", 0)
    }
    events = [json.loads(n.payload) for n in notes if n.channel == "taskq_events"]
    # One trigger run: chunks of 200 (their order is the GROUP BY's, not fixed).
    assert sorted(len(e["e"]) for e in events) == [50, 200, 200]
    assert {e["s"] for e in events} == {"PENDING"}
    sent = [entry for e in events for entry in e["e"]]
    assert sorted(sent) == [[h["id"], h["task_id"], user] for h in history]
    assert sorted(n.payload for n in notes if n.channel == "taskq_wakeup") == ["a", "b"]


def test_a_bad_task_fails_the_whole_batch(db):
    user = make_user(db)
    tasks = [{"title": "ok"}, {"title": "ok too"}, {"title": "bad", "priority": 500}]
    with pytest.raises(psycopg.errors.CheckViolation):
        insert_tasks(db, user, tasks)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM task_history").fetchone()["n"] == 0
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        insert_tasks(db, user + 1, [{"title": "nobody's"}])
    assert insert_tasks(db, user, []) == []
    assert len(insert_tasks(db, user, tasks[:2])) == 2  # the connection is still usable


def test_commits_its_own_transaction_or_a_savepoint_of_the_callers(database_url, db):
    with psycopg.connect(database_url) as conn:
        rows = insert_tasks(conn, None, [{"title": "a"}, {"title": "b"}])
        # Committed: another session sees them before this one commits anything itself.
        assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 2
        with conn.transaction():
            conn.execute("INSERT INTO tasks (title) VALUES ('outer')")
            with pytest.raises(psycopg.errors.CheckViolation):
                insert_tasks(conn, None, [{"title": "bad", "priority": 500}])
            insert_tasks(conn, None, [{"title": "inner"}])
    titles = db.execute("SELECT title FROM tasks ORDER BY id").fetchall()
    assert [t["title"] for t in titles] == ["a", "b", "outer", "inner"]
    assert [row["user_id"] for row in rows] == [None, None]


def test_copy_columns_match_the_query():
    listed = re.search(r"COPY tasks \(([^)]*)\)", queries["copy_tasks"]).group(1)
    assert [c.strip() for c in listed.split(",")] == [name for name, _ in COPY_COLUMNS]


def test_bench_adapter_enqueues_through_insert_tasks(database_url, db):
    client = TaskqClient(database_url)
    try:
        client.enqueue_batch([f"k{i}" for i in range(7)], 3)
    finally:
        client.conn.close()
    rows = db.execute("SELECT title, payload, queue, task_type FROM tasks ORDER BY id").fetchall()
    assert [r["title"] for r in rows] == [f"k{i}" for i in range(7)]
    assert rows[6] == {
        "title": "k6",
        "payload": {"key": "k6"},
        "queue": "bench",
        "task_type": "bench_stamp",
    }
    assert db.execute("SELECT count(*) AS n FROM task_history").fetchone()["n"] == 7


def test_batch_response_is_what_get_shows(client, make_account):
    ann = make_account("ann")
    items = [
        {"title": "plain"},
        {
            "name": "aliased",
            "task_type": "echo",
            "payload": TRICKY_JSON,
            "priority": "critical",
            "scheduled_time": "2099-01-01T10:00:00+05:30",
            "tags": ["x", "y"],
            "metadata": {"zz": {"b": 1, "a": [1e16, -0.0]}, "a": None},
            "callback_url": "https://example.com/hook",
            "callback_headers": {"X-Token": "t"},
            "callback_secret": "s3cret",
        },
        {
            "title": "past",
            "task_type": "compute",
            "payload": {"operation": "sum", "numbers": [1, 2.5]},
            "priority": "low",
            "scheduled_at": "2001-01-01T00:00:00Z",
            "callback_url": "http://hooks.example.org:9/x",
            "callback_events": ["task.started"],
            "timeout": 5,
        },
        {"title": "numeric priority", "priority": 42, "queue": "other"},
    ]
    response = client.post(f"{API}/tasks/batch", json={"tasks": items}, headers=ann.headers)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()["tasks"]
    assert [t["priority"] for t in created] == [5, 20, 1, 42]
    assert created[1]["callback_events"] == ["task.succeeded", "task.failed", "task.cancelled"]
    assert created[1]["has_callback_secret"] and created[1]["run_at"] == "2099-01-01T04:30:00+00:00"
    for task in created:
        shown = client.get(f"{API}/tasks/{task['id']}", headers=ann.headers).get_json()["task"]
        assert list(task) == list(shown)
        for name in task:
            assert as_text(task[name]) == as_text(shown[name]), name
