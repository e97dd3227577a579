"""Steering through the API and psql: unique keys, dependencies, admins acting on any task,
snooze and progress statements."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.helpers import API, assert_error, create, insert_tasks, make_user, set_status
from tests.worker_helpers import claim, claim_connection, write
from worker.completer import Outcomes


def history(db: psycopg.Connection, task_id: int) -> list[tuple]:
    rows = db.execute(
        "SELECT from_status::text AS f, to_status::text AS t FROM task_history"
        " WHERE task_id = %s ORDER BY id",
        (task_id,),
    ).fetchall()
    return [(r["f"], r["t"]) for r in rows]


def count_tasks(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"]


# ------------------------------------------------------------------ unique keys


def test_unique_key_and_idempotency_key_each_keep_their_meaning(client, make_account, db):
    ann = make_account("ann")
    body = {"title": "t", "task_type": "echo", "unique_key": "report-7"}

    def post(key: str | None = None, **changes):
        headers = {**ann.headers, **({"Idempotency-Key": key} if key else {})}
        return client.post(f"{API}/tasks", json={**body, **changes}, headers=headers)

    first = post("req-1")
    assert first.status_code == 201
    task_id = first.get_json()["task"]["id"]
    assert first.get_json()["task"]["unique_key"] == "report-7"
    # The same request again: the Idempotency-Key answers.
    again = post("req-1")
    assert again.status_code == 200 and again.get_json()["task"]["id"] == task_id
    assert again.get_json()["message"] == "Task already created with this key"
    # Another request, another Idempotency-Key, the same unique_key: the existing task.
    other = post("req-2", title="other title")
    assert other.status_code == 200 and other.get_json()["task"]["id"] == task_id
    assert other.get_json()["message"] == "Task already exists with this unique_key"
    # The first Idempotency-Key with another body is refused, whatever the unique_key says.
    assert_error(post("req-1", title="changed"), 422, "Idempotency-Key")
    assert count_tasks(db) == 1


def test_a_key_held_by_an_unfinished_task_refuses_the_retry_of_an_older_one(
    client, make_account, db
):
    ann = make_account("ann")
    old = create(client, ann, unique_key="k")
    set_status(db, old["id"], "FAILED")
    new = create(client, ann, unique_key="k")
    assert new["id"] != old["id"]
    answer = client.post(f"{API}/tasks/{old['id']}/retry", headers=ann.headers)
    assert_error(answer, 409)
    assert (
        db.execute("SELECT status::text AS s FROM tasks WHERE id = %s", (old["id"],)).fetchone()[
            "s"
        ]
        == "FAILED"
    )


def test_batch_answers_taken_keys_with_their_tasks(client, make_account, db):
    ann = make_account("ann")
    held = create(client, ann, unique_key="a")
    tasks = [
        {"title": "1", "task_type": "echo", "unique_key": "a"},
        {"title": "2", "task_type": "echo"},
        {"title": "3", "task_type": "echo", "unique_key": "b", "unique_for": 3600},
        {"title": "4", "task_type": "echo", "unique_key": "b", "unique_for": 3600},
    ]
    answer = client.post(f"{API}/tasks/batch", json={"tasks": tasks}, headers=ann.headers)
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["existing"] == [0, 3]
    ids = [t["id"] for t in body["tasks"]]
    assert ids[0] == held["id"] and ids[3] == ids[2] and len(set(ids)) == 3
    assert count_tasks(db) == 3
    again = client.post(f"{API}/tasks/batch", json={"tasks": tasks[2:]}, headers=ann.headers)
    assert again.status_code == 200 and again.get_json()["existing"] == [0, 1]
    assert count_tasks(db) == 3


# A holder of the key that ends as soon as a create has met it, again and again: test-only
# triggers on this test's database. Before each INSERT statement of a client (trigger depth
# 1) an unfinished task of ``churn``'s key appears; after it, that task COMPLETES. So the
# create's ON CONFLICT skips its row, and the lookup that follows finds no holder.
CHURN = """
CREATE TABLE churn (user_id bigint, key text);
CREATE FUNCTION churn_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 THEN
        INSERT INTO tasks (user_id, title, task_type, unique_key)
        SELECT user_id, 'holder', 'echo', key FROM churn;
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION churn_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() = 1 THEN
        UPDATE tasks t SET status = 'COMPLETED' FROM churn c
         WHERE t.user_id = c.user_id AND t.unique_key = c.key AND t.status = 'PENDING';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER churn_hold BEFORE INSERT ON tasks FOR EACH STATEMENT EXECUTE FUNCTION churn_hold();
CREATE TRIGGER churn_end AFTER INSERT ON tasks FOR EACH STATEMENT EXECUTE FUNCTION churn_end();
"""


def test_keys_whose_holders_keep_ending_get_409_and_store_nothing(client, make_account, db):
    ann = make_account("ann")
    db.execute(CHURN)
    db.execute("INSERT INTO churn VALUES (%s, 'k')", (ann.id,))
    mine = {"title": "mine", "task_type": "echo", "unique_key": "k"}
    batch = {"tasks": [mine, {"title": "other", "task_type": "echo"}]}
    refused = assert_error(client.post(f"{API}/tasks/batch", json=batch, headers=ann.headers), 409)
    assert refused["error"] == "Unique keys kept meeting tasks that ended meanwhile: send it again."
    # The batch is one transaction: its rows and the holders made inside it are gone.
    assert count_tasks(db) == 0
    assert db.execute("SELECT count(*) AS n FROM task_history").fetchone()["n"] == 0
    # A single create commits each try: the holders stay (COMPLETED), the create does not.
    refused = assert_error(client.post(f"{API}/tasks", json=mine, headers=ann.headers), 409)
    assert refused["error"] == "The task holding this key just ended or was deleted: send it again."
    titles = db.execute("SELECT title, status::text AS s FROM tasks").fetchall()
    assert titles and {(t["title"], t["s"]) for t in titles} == {("holder", "COMPLETED")}
    # Once the churn stops, the same requests create their tasks.
    db.execute("DELETE FROM churn")
    assert client.post(f"{API}/tasks/batch", json=batch, headers=ann.headers).status_code == 201


def test_a_batch_says_it_takes_no_idempotency_key(client, make_account, db):
    ann = make_account("ann")
    headers = {**ann.headers, "Idempotency-Key": "batch-1"}
    tasks = [{"title": "1", "task_type": "echo"}]
    for _ in range(2):  # the key does not make the resend a replay: two tasks
        answer = client.post(f"{API}/tasks/batch", json=tasks, headers=headers)
        assert answer.status_code == 201
        assert any("Idempotency-Key is not taken" in w for w in answer.get_json()["warnings"])
    assert count_tasks(db) == 2
    answer = client.post(f"{API}/tasks/batch", json=tasks, headers=ann.headers)
    assert not any("Idempotency-Key" in w for w in answer.get_json()["warnings"])


# ------------------------------------------------------------------ dependencies


def test_depends_on_only_the_callers_existing_unfinished_tasks(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    anns = create(client, ann)
    bobs = create(client, bob)
    before = count_tasks(db)

    def post(body):
        body = {"title": "c", "task_type": "echo", **body}
        return client.post(f"{API}/tasks", json=body, headers=bob.headers)

    refused = assert_error(post({"depends_on": [bobs["id"], anns["id"]]}), 404, "depends_on")
    assert refused["field_errors"]["depends_on"] == [f"Task {anns['id']} not found."]
    assert_error(post({"depends_on": [10**9]}), 404, "depends_on")
    assert_error(post({"depends_on": ["x"]}), 400, "depends_on.0")
    assert_error(post({"depends_on": []}), 400, "depends_on")
    set_status(db, bobs["id"], "FAILED")
    assert_error(post({"depends_on": [bobs["id"]]}), 409, "depends_on")
    assert count_tasks(db) == before
    assert db.execute("SELECT count(*) AS n FROM task_dependencies").fetchone()["n"] == 0


def test_a_batch_refuses_parents_as_a_create_does_and_stores_nothing(client, make_account, db):
    ann = make_account("ann")
    bob = make_account("bob")
    anns, bobs, failed = create(client, ann), create(client, bob), create(client, bob)
    set_status(db, failed["id"], "FAILED")
    before = count_tasks(db)

    def batch(*parents):
        tasks = [{"title": f"c{n}", "task_type": "echo"} for n in range(len(parents))]
        for task, p in zip(tasks, parents, strict=True):
            if p is not None:
                task["depends_on"] = p
        return client.post(f"{API}/tasks/batch", json={"tasks": tasks}, headers=bob.headers)

    # Another user's task or none: 404, naming each such task (and only the 404s).
    refused = assert_error(
        batch([bobs["id"]], [anns["id"]], None, [failed["id"]], [10**9]),
        404,
        "tasks.1.depends_on",
        "tasks.4.depends_on",
    )
    assert refused["error"] == "A parent task was not found."
    assert refused["field_errors"]["tasks.1.depends_on"] == [f"Task {anns['id']} not found."]
    assert "tasks.3.depends_on" not in refused["field_errors"]
    refused = assert_error(batch(None, [bobs["id"], failed["id"]]), 409, "tasks.1.depends_on")
    assert refused["field_errors"]["tasks.1.depends_on"] == [
        f"Task {failed['id']} is FAILED: it will never complete."
    ]
    assert_error(batch([]), 400, "tasks.0.depends_on")
    assert count_tasks(db) == before
    assert db.execute("SELECT count(*) AS n FROM task_dependencies").fetchone()["n"] == 0


def test_a_completed_parent_counts_as_done_and_psql_transitions_release(client, make_account, db):
    ann = make_account("ann")
    done, running = create(client, ann), create(client, ann)
    set_status(db, done["id"], "COMPLETED")
    ready = create(client, ann, depends_on=[done["id"]])
    assert ready["status"] == "PENDING" and ready["pending_parents"] == 0
    child = create(client, ann, depends_on=[done["id"], running["id"]])
    assert child["status"] == "WAITING" and child["pending_parents"] == 1
    assert child["depends_on"] == sorted([done["id"], running["id"]])
    listed = client.get(f"{API}/tasks?status=waiting", headers=ann.headers).get_json()
    assert [t["id"] for t in listed["results"]] == [child["id"]]
    with psycopg.connect(db.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN taskq_events")
        set_status(db, running["id"], "COMPLETED")  # an operator's UPDATE in psql
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    assert {"s": "PENDING"} in [{"s": n["s"]} for n in notes]
    assert any(e[1] == child["id"] for n in notes if n["s"] == "PENDING" for e in n["e"])
    row = db.execute("SELECT status::text AS s, pending_parents AS n FROM tasks WHERE id = %s",
                     (child["id"],)).fetchone()  # fmt: skip
    assert row == {"s": "PENDING", "n": 0}
    assert history(db, child["id"]) == [(None, "WAITING"), ("WAITING", "PENDING")]


def test_a_batch_waits_for_parents_as_single_creates_do(client, make_account, db):
    ann = make_account("ann")
    done, running = create(client, ann), create(client, ann)
    set_status(db, done["id"], "COMPLETED")
    tasks = [
        {"title": "free", "task_type": "echo"},
        {"title": "ready", "task_type": "echo", "depends_on": [done["id"]]},
        {"title": "child", "task_type": "echo",
         "depends_on": [running["id"], done["id"], running["id"]]},
        {"title": "keyed", "task_type": "echo", "depends_on": [running["id"]], "unique_key": "k"},
    ]  # fmt: skip
    answer = client.post(f"{API}/tasks/batch", json={"tasks": tasks}, headers=ann.headers)
    assert answer.status_code == 201, answer.get_json()
    free, ready, child, keyed = answer.get_json()["tasks"]
    assert (free["status"], free["depends_on"], free["pending_parents"]) == ("PENDING", [], 0)
    assert (ready["status"], ready["pending_parents"]) == ("PENDING", 0)
    assert child["status"] == "WAITING" and child["pending_parents"] == 1
    assert child["depends_on"] == sorted([done["id"], running["id"]])
    for task in (free, ready, child, keyed):  # the answer is what GET shows
        shown = client.get(f"{API}/tasks/{task['id']}", headers=ann.headers).get_json()["task"]
        assert {k: shown[k] for k in task} == task
    edges = db.execute("SELECT parent_id, task_id FROM task_dependencies ORDER BY 2, 1").fetchall()
    assert [(e["parent_id"], e["task_id"]) for e in edges] == [
        (done["id"], ready["id"]),
        (done["id"], child["id"]),
        (running["id"], child["id"]),
        (running["id"], keyed["id"]),
    ]
    marked = db.execute("SELECT id FROM tasks WHERE has_dependents ORDER BY id").fetchall()
    assert [r["id"] for r in marked] == [done["id"], running["id"]]
    # The same key again: the task holding it, and no second edge.
    again = client.post(f"{API}/tasks/batch", json={"tasks": tasks[3:]}, headers=ann.headers)
    assert again.status_code == 200 and again.get_json()["existing"] == [0]
    assert again.get_json()["tasks"][0]["id"] == keyed["id"]
    assert db.execute("SELECT count(*) AS n FROM task_dependencies").fetchone()["n"] == 4
    set_status(db, running["id"], "COMPLETED")  # releases them as it does a single create's
    for task in (child, keyed):
        row = db.execute("SELECT status::text AS s, pending_parents AS n FROM tasks WHERE id = %s",
                         (task["id"],)).fetchone()  # fmt: skip
        assert row == {"s": "PENDING", "n": 0}
        assert history(db, task["id"]) == [(None, "WAITING"), ("WAITING", "PENDING")]


def test_insert_tasks_takes_parents_from_python_too(db):
    from taskq.enqueue import ParentProblem
    from taskq.enqueue import insert_tasks as enqueue

    (parent,) = insert_tasks(db, user_id=None)
    (child,) = enqueue(db, None, [{"title": "c", "depends_on": [parent]}])
    assert (child["status"], child["depends_on"], child["pending_parents"]) == (
        "WAITING",
        [parent],
        1,
    )
    stored = db.execute("SELECT status::text AS status FROM tasks WHERE id = %s", (child["id"],))
    assert stored.fetchone()["status"] == "WAITING"
    (owned,) = insert_tasks(db, user_id=make_user(db))
    with pytest.raises(ParentProblem) as refused:  # an owned task is no parent of an unowned
        enqueue(db, None, [{"title": "c"}, {"title": "d", "depends_on": [owned, parent]}])
    assert refused.value.status == 404
    assert refused.value.messages == {1: [f"Task {owned} not found."]}


def test_cancelling_or_deleting_a_parent_cancels_the_waiting_tree(client, make_account, db):
    ann = make_account("ann")
    parent = create(client, ann)
    child = create(client, ann, depends_on=[parent["id"]])
    grandchild = create(client, ann, depends_on=[child["id"]])
    answer = client.post(f"{API}/tasks/{parent['id']}/cancel", headers=ann.headers)
    assert answer.status_code == 200
    for task, reason in ((child, f"{parent['id']} ended CANCELLED"),
                         (grandchild, f"{child['id']} ended CANCELLED")):  # fmt: skip
        row = db.execute("SELECT status::text AS s, error FROM tasks WHERE id = %s",
                         (task["id"],)).fetchone()  # fmt: skip
        assert row == {"s": "CANCELLED", "error": f"Cancelled: parent task {reason}."}
        assert history(db, task["id"]) == [(None, "WAITING"), ("WAITING", "CANCELLED")]

    other = create(client, ann)
    waiting = create(client, ann, depends_on=[other["id"]])
    assert client.delete(f"{API}/tasks/{other['id']}", headers=ann.headers).status_code == 200
    row = db.execute("SELECT status::text AS s, error FROM tasks WHERE id = %s",
                     (waiting["id"],)).fetchone()  # fmt: skip
    assert row == {
        "s": "CANCELLED",
        "error": f"Cancelled: parent task {other['id']} ended DELETED.",
    }
    assert db.execute("SELECT count(*) AS n FROM task_dependencies WHERE parent_id = %s",
                      (other["id"],)).fetchone()["n"] == 0  # fmt: skip
    # A retried child whose parent never completed would wait for nothing: 409; one whose
    # parent is gone (deleted) runs.
    assert_error(client.post(f"{API}/tasks/{child['id']}/retry", headers=ann.headers), 409)
    retried = client.post(f"{API}/tasks/{waiting['id']}/retry", headers=ann.headers)
    assert retried.status_code == 200 and retried.get_json()["task"]["status"] == "PENDING"


# ----------------------------------------------------------------------- admins


def test_admins_cancel_retry_and_delete_any_users_task_and_users_cannot(client, make_account, db):
    root = make_account("root", admin=True)
    ann = make_account("ann")
    bob = make_account("bob")
    task = create(client, ann)
    admin = f"{API}/admin/tasks/{task['id']}"
    for attempt in (bob, ann):  # an ordinary user, even the owner, is not an admin
        assert_error(client.post(f"{admin}/cancel", headers=attempt.headers), 403)
        assert_error(client.delete(admin, headers=attempt.headers), 403)
    assert_error(client.post(f"{API}/tasks/{task['id']}/cancel", headers=bob.headers), 404)
    assert_error(client.delete(f"{API}/tasks/{task['id']}", headers=bob.headers), 404)

    cancelled = client.post(f"{admin}/cancel", headers=root.headers)
    assert cancelled.status_code == 200 and cancelled.get_json()["task"]["status"] == "CANCELLED"
    assert_error(client.post(f"{admin}/cancel", headers=root.headers), 409)
    retried = client.post(f"{admin}/retry", headers=root.headers)
    assert retried.status_code == 200 and retried.get_json()["task"]["status"] == "PENDING"
    assert history(db, task["id"]) == [(None, "PENDING"), ("PENDING", "CANCELLED"),
                                       ("CANCELLED", "PENDING")]  # fmt: skip
    set_status(db, task["id"], "PROCESSING")
    assert_error(client.delete(admin, headers=root.headers), 409)
    set_status(db, task["id"], "COMPLETED")
    deleted = client.delete(admin, headers=root.headers)
    assert deleted.get_json() == {"message": f"Task {task['id']} deleted successfully"}
    assert_error(client.delete(admin, headers=root.headers), 404)
    assert_error(client.post(f"{API}/admin/tasks/{10**9}/retry", headers=root.headers), 404)
    # Ann still sees only her own tasks.
    mine = create(client, ann)
    create(client, bob)
    listed = client.get(f"{API}/tasks", headers=ann.headers).get_json()
    assert [t["id"] for t in listed["results"]] == [mine["id"]]


# ------------------------------------------------------------ snooze and progress


def test_snooze_and_progress_are_fenced_by_the_claim(database_url, db):
    (task_id,) = insert_tasks(db, 1, max_retries=0)
    with (
        claim_connection(database_url) as exchange,
        psycopg.connect(database_url, autocommit=True) as listener,
    ):
        listener.execute("LISTEN taskq_progress")
        (row,) = claim(exchange, 1)
        report = {"task_id": task_id, "percent": 42.5, "message": "half"}
        from sql import queries

        db.execute(queries["report_progress"], {**report, "token": row.lease_token + 1})
        db.execute(queries["report_progress"], {**report, "token": row.lease_token})
        (note,) = listener.notifies(timeout=2, stop_after=1)
        assert json.loads(note.payload)["p"] == 42.5 and json.loads(note.payload)["t"] == task_id
        stale = Outcomes()
        stale.snooze(task_id, row.lease_token + 1, 30)
        write(exchange, stale)
        assert db.execute("SELECT status::text AS s FROM tasks").fetchone()["s"] == "PROCESSING"
        outcomes = Outcomes()
        outcomes.snooze(task_id, row.lease_token, 30)
        write(exchange, outcomes)
    task = db.execute(
        "SELECT status::text AS s, attempts, snoozes, progress, progress_message,"
        " run_at - now() > interval '25 seconds' AS later FROM tasks"
    ).fetchone()
    assert task == {"s": "RETRYING", "attempts": 0, "snoozes": 1, "progress": 42.5,
                    "progress_message": "half", "later": True}  # fmt: skip


@pytest.mark.parametrize("bad", [-1, 101, "50", True])
def test_progress_and_snooze_refuse_what_they_cannot_store(bad):
    from taskq import Snooze, TaskContext

    ctx = TaskContext(1, 1, "default", "echo", "w")
    with pytest.raises((TypeError, ValueError)):
        ctx.progress(bad)
    with pytest.raises((TypeError, ValueError)):
        Snooze(bad if bad != 101 else 10**9)
    ctx.progress(50, "no worker: nothing written")


def test_downgrade_makes_waiting_tasks_pending_and_drops_the_label(database_url, db):
    from taskq.migrate import downgrade, upgrade

    (parent,) = insert_tasks(db, 1)
    (child,) = insert_tasks(db, 1, status="WAITING", pending_parents=1, depends_on=[parent])
    db.execute("INSERT INTO task_dependencies (parent_id, task_id) VALUES (%s, %s)",
               (parent, child))  # fmt: skip
    db.close()
    downgrade(database_url, "0008")
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        labels = conn.execute("SELECT enum_range(NULL::task_status)::text[] AS l").fetchone()["l"]
        assert "WAITING" not in labels
        row = conn.execute("SELECT status::text AS s FROM tasks WHERE id = %s", (child,)).fetchone()
        assert row == {"s": "PENDING"}
        assert history(conn, child) == [(None, "PENDING"), ("PENDING", "PENDING")]
    upgrade(database_url)
