"""The statement triggers of ``tasks`` (migration 0014: one per event) do what the several
triggers of 0013 did, write for write and notification for notification, and nothing at all
for a statement that touches no row."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg
from psycopg.rows import dict_row

from sql import queries
from taskq.migrate import upgrade

CHANNELS = ("taskq_events", "taskq_wakeup", "taskq_cancel")
CLAIM = {"queues": ["w"], "limit": 10, "worker_id": "w1", "lease_seconds": 30}

# Every kind of write the triggers act on, as workers, the API and psql make them.
WORKLOAD: list[tuple[str, dict | Callable[[psycopg.Connection], dict]]] = [
    ("INSERT INTO users (username, email, password_hash) VALUES ('ann', 'a@x', 'x')", {}),
    (
        "INSERT INTO tasks (user_id, title, description, queue, callback_url, callback_events)"
        " SELECT 1, 'hook ' || g, 'words ' || g, 'w', 'http://127.0.0.1:9/h',"
        " ARRAY['task.started', 'task.succeeded', 'task.failed', 'task.cancelled']"
        " FROM generate_series(1, 3) g",
        {},
    ),
    (
        "INSERT INTO tasks (title, queue, max_retries) SELECT 'plain ' || g, 'w', 0"
        " FROM generate_series(1, 4) g",
        {},
    ),
    # Task 8, a parent with two waiting children (9, 10); 11, a parent with one (12).
    ("INSERT INTO tasks (title, queue, has_dependents) VALUES ('parent', 'p', true)", {}),
    (
        "INSERT INTO tasks (title, queue, status, depends_on, pending_parents)"
        " VALUES ('child a', 'p', 'WAITING', '{8}', 1), ('child b', 'p', 'WAITING', '{8}', 1)",
        {},
    ),
    ("INSERT INTO tasks (title, queue, has_dependents) VALUES ('doomed', 'p', true)", {}),
    (
        "INSERT INTO tasks (title, queue, status, depends_on, pending_parents)"
        " VALUES ('orphan', 'p', 'WAITING', '{11}', 1)",
        {},
    ),
    ("INSERT INTO task_dependencies VALUES (8, 9), (8, 10), (11, 12)", {}),
    (queries["claim_tasks"], CLAIM),
    (queries["claim_tasks"], {**CLAIM, "queues": ["idle"]}),  # claims nothing
    (queries["complete_tasks"], lambda db: {**leases(db, [1, 2]), "results": ["{}", "1"]}),
    (queries["complete_tasks"], lambda db: {**leases(db, [1]), "results": ["1"]}),  # no row
    (
        queries["fail_tasks"],
        lambda db: {**leases(db, [4, 5]), "errors": ["boom", "bang"], "max_delay": 0},
    ),
    ("UPDATE tasks SET status = 'CANCELLED' WHERE id = 3", {}),  # a running task: taskq_cancel
    ("UPDATE tasks SET lease_expires_at = now() WHERE status = 'PROCESSING'", {}),  # no key
    ("UPDATE tasks SET queue = 'moved', task_type = 'echo' WHERE id IN (6, 7)", {}),
    ("UPDATE tasks SET title = 'renamed words' WHERE id = 7", {}),
    ("UPDATE tasks SET id = DEFAULT WHERE id = 6", {}),  # an id change: one side only
    ("UPDATE tasks SET status = 'COMPLETED' WHERE id = 8", {}),  # releases 9 and 10
    ("DELETE FROM tasks WHERE id = 11", {}),  # cancels 12
    ("DELETE FROM tasks WHERE id = 2", {}),
    ("UPDATE tasks SET status = 'PENDING' WHERE false", {}),
    ("DELETE FROM tasks WHERE false", {}),
    ("INSERT INTO tasks (title) SELECT 'none' WHERE false", {}),
]


def leases(db: psycopg.Connection, ids: list[int]) -> dict[str, list[int]]:
    """The ids and lease tokens of tasks, as the completer sends them."""
    rows = db.execute(
        "SELECT id, lease_token FROM tasks WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    return {"ids": [r["id"] for r in rows], "tokens": [r["lease_token"] for r in rows]}


# What the workload left, in forms that do not depend on clocks or transaction ids.
OUTCOME = {
    "tasks": "SELECT id, status::text, queue, task_type, attempts, pending_parents, error"
    " FROM tasks ORDER BY id",
    "history": "SELECT id, task_id, user_id, from_status::text, to_status::text, attempt,"
    " worker_id, error FROM task_history ORDER BY id",
    "deltas": "SELECT user_id, queue, task_type, status::text, tasks, entered"
    " FROM task_count_deltas ORDER BY 1, 2, 3, 4, 5, 6",
    "search": "SELECT task_id, document::text FROM task_search ORDER BY task_id",
    "dead": "SELECT task_id, error, attempts FROM dead_letters ORDER BY task_id",
    "deliveries": "SELECT d.id, d.task_id, d.event, d.url, d.sender_task_id,"
    " d.payload->>'status' AS status, t.payload AS sender_payload"
    " FROM webhook_deliveries d LEFT JOIN tasks t ON t.id = d.sender_task_id ORDER BY d.id",
    "edges": "SELECT * FROM task_dependencies ORDER BY 1, 2",
}


def run_workload(url: str) -> dict[str, list]:
    """The workload on ``url``; what it left and the notifications it sent, in order."""
    with (
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as db,
        psycopg.connect(url, autocommit=True) as listener,
    ):
        for channel in CHANNELS:
            listener.execute(f"LISTEN {channel}")
        for statement, params in WORKLOAD:
            db.execute(statement, params(db) if callable(params) else params)
        db.execute("NOTIFY taskq_wakeup, 'end'")
        notes = []
        for note in listener.notifies(timeout=10):
            notes.append((note.channel, note.payload))
            if note.payload == "end":
                break
        outcome = {name: db.execute(query).fetchall() for name, query in OUTCOME.items()}
    outcome["notifications"] = notes
    return outcome


def test_one_trigger_per_event_does_what_the_triggers_of_0013_did(database_url, empty_database_url):
    upgrade(empty_database_url, "0013")
    before = run_workload(empty_database_url)
    after = run_workload(database_url)
    assert after == before
    # The workload reached what it was written for.
    statuses = {row["id"]: row["status"] for row in after["tasks"]}
    assert statuses[9] == statuses[10] == "PENDING" and statuses[12] == "CANCELLED"
    assert [d["task_id"] for d in after["dead"]] == [4, 5]
    assert any(channel == "taskq_cancel" for channel, _ in after["notifications"])
    assert {d["event"] for d in after["deliveries"]} >= {"task.started", "task.succeeded"}


def test_a_statement_on_no_row_writes_nothing_and_sends_nothing(db, database_url):
    db.execute("INSERT INTO tasks (title, queue) VALUES ('t', 'w')")
    written = {name: db.execute(query).fetchall() for name, query in OUTCOME.items()}
    with psycopg.connect(database_url, autocommit=True) as listener:
        for channel in CHANNELS:
            listener.execute(f"LISTEN {channel}")
        db.execute(queries["claim_tasks"], {**CLAIM, "queues": ["idle"]})
        db.execute(queries["complete_tasks"], {"ids": [1], "tokens": [7], "results": ["1"]})
        db.execute(queries["extend_leases"], {"worker_ids": ["w1"], "lease_seconds": 30})
        db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE false")
        db.execute("DELETE FROM tasks WHERE id = -1")
        db.execute("INSERT INTO tasks (title) SELECT 't' WHERE false")
        db.execute("NOTIFY taskq_wakeup, 'end'")
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
    assert notes == [("taskq_wakeup", "end")]
    assert {name: db.execute(query).fetchall() for name, query in OUTCOME.items()} == written


def test_tasks_has_one_statement_trigger_per_event(db):
    rows = db.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'tasks'::regclass AND NOT tgisinternal"
        " ORDER BY 1"
    ).fetchall()
    assert [r["tgname"] for r in rows] == [
        "tasks_deleted",
        "tasks_derived_truncated",
        "tasks_inserted",
        "tasks_retitled",  # a row trigger on UPDATE OF title, description: psql's edits only
        "tasks_updated",
    ]


def test_a_claim_of_one_task_writes_its_counters_history_and_notification(db, database_url):
    db.execute("INSERT INTO tasks (title, queue) VALUES ('t', 'w')")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq_events")
        (claimed,) = db.execute(queries["claim_tasks"], CLAIM).fetchall()
        (note,) = listener.notifies(timeout=10, stop_after=1)
    history = db.execute("SELECT id, to_status::text FROM task_history ORDER BY id").fetchall()
    assert [h["to_status"] for h in history] == ["PENDING", "PROCESSING"]
    assert json.loads(note.payload) == {"s": "PROCESSING", "e": [[history[-1]["id"], 1, None]]}
    deltas = db.execute(
        "SELECT status::text, sum(tasks)::int AS n FROM task_count_deltas GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert deltas == [{"status": "PENDING", "n": 0}, {"status": "PROCESSING", "n": 1}]
    assert claimed["id"] == 1
