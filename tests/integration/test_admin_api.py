"""Admin endpoints: every user's tasks, queue statistics and live workers."""

from __future__ import annotations

from tests.integration.test_auth import assert_error
from tests.integration.test_tasks_api import create, set_status

API = "/api/v1/admin"


def test_admin_sees_every_users_tasks_with_filters(client, make_account, db):
    root = make_account("root", admin=True)
    ann = make_account("ann")
    bob = make_account("bob")
    a = create(client, ann, title="ann's", queue="q1")
    b = create(client, bob, title="bob's", priority="critical")
    set_status(db, b["id"], "FAILED")
    response = client.get(f"{API}/tasks", headers=root.headers)
    assert response.status_code == 200
    data = response.get_json()
    assert data["count"] == 2
    owners = {t["id"]: t["user"] for t in data["results"]}
    assert owners[a["id"]] == {"id": ann.id, "username": "ann", "email": "ann@example.com"}
    assert owners[b["id"]]["username"] == "bob"

    def ids(**params):
        found = client.get(f"{API}/tasks", query_string=params, headers=root.headers)
        assert found.status_code == 200, found.get_json()
        return [t["id"] for t in found.get_json()["results"]]

    assert ids(status="FAILED") == [b["id"]]
    assert ids(username="BOB") == [b["id"]]
    assert ids(user_id=ann.id) == [a["id"]]
    assert ids(queue="q1", search="ann") == [a["id"]]
    assert ids(ordering="-priority") == [b["id"], a["id"]]
    assert_error(client.get(f"{API}/tasks?ordering=owner", headers=root.headers), 400, "ordering")
    assert_error(client.get(f"{API}/tasks?user_id=x", headers=root.headers), 400, "user_id")


def test_admin_endpoints_refuse_users_and_anonymous(client, make_account):
    ann = make_account("ann")
    for path in ("tasks", "queues", "workers"):
        body = assert_error(client.get(f"{API}/{path}", headers=ann.headers), 403)
        assert body["error"] == "Admins only."
        assert_error(client.get(f"{API}/{path}"), 401)


def test_queues_from_the_queue_stats_view(client, make_account, db):
    root = make_account("root", admin=True)
    ann = make_account("ann")
    for _ in range(3):
        create(client, ann, queue="emails")
    running = create(client, ann, queue="reports")
    set_status(db, running["id"], "PROCESSING")
    done = create(client, ann, queue="reports")
    set_status(db, done["id"], "COMPLETED")
    response = client.get(f"{API}/queues", headers=root.headers)
    assert response.status_code == 200
    queues = {q["queue"]: q for q in response.get_json()["queues"]}
    assert (queues["emails"]["waiting"], queues["emails"]["due"]) == (3, 3)
    assert isinstance(queues["emails"]["oldest_due_age"], float)
    assert queues["reports"]["running"] == 1
    assert queues["reports"]["completed_last_minute"] == 1


def test_workers_from_the_live_workers_view(client, make_account, db):
    root = make_account("root", admin=True)
    db.execute(
        "INSERT INTO workers (id, hostname, pid, queues, concurrency) "
        "VALUES ('w-1', 'box', 42, '{default}', 4), ('w-old', 'box', 43, '{default}', 1)"
    )
    db.execute("UPDATE workers SET heartbeat_at = now() - interval '5 minutes' WHERE id = 'w-old'")
    response = client.get(f"{API}/workers", headers=root.headers)
    assert response.status_code == 200
    workers = response.get_json()["workers"]
    assert [w["id"] for w in workers] == ["w-1"]
    assert workers[0]["queues"] == ["default"] and workers[0]["running"] == 0
    assert workers[0]["silent_for"] >= 0


def test_workers_list_the_tasks_each_one_runs(client, make_account, db):
    root = make_account("root", admin=True)
    ann = make_account("ann")
    db.execute(
        "INSERT INTO workers (id, hostname, pid, queues, concurrency) "
        "VALUES ('w-1', 'box', 42, '{default}', 4), ('w-2', 'box', 43, '{default}', 1)"
    )
    first, second = (create(client, ann, title=f"job {n}") for n in (1, 2))
    idle = create(client, ann, title="waiting")
    for task in (first, second):
        set_status(db, task["id"], "PROCESSING", worker_id="w-1")
    response = client.get(f"{API}/workers", headers=root.headers)
    assert response.status_code == 200
    workers = {w["id"]: w for w in response.get_json()["workers"]}
    running = workers["w-1"]["running_tasks"]
    assert [t["id"] for t in running] == [first["id"], second["id"]]
    assert running[0]["title"] == "job 1" and running[0]["user_id"] == ann.id
    assert running[0]["task_type"] == "echo" and running[0]["queue"] == "default"
    assert workers["w-1"]["running"] == 2
    assert workers["w-2"]["running_tasks"] == []
    assert idle["id"] not in {t["id"] for w in workers.values() for t in w["running_tasks"]}


def test_stuck_tasks_from_the_stuck_tasks_view(client, make_account, db):
    root = make_account("root", admin=True)
    ann = make_account("ann")
    stuck, healthy = create(client, ann, title="stuck"), create(client, ann, title="fine")
    set_status(db, stuck["id"], "PROCESSING", worker_id="gone")
    db.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '90 seconds' WHERE id = %s",
        (stuck["id"],),
    )
    set_status(db, healthy["id"], "PROCESSING", worker_id="alive")
    db.execute(
        "UPDATE tasks SET lease_expires_at = now() + interval '30 seconds' WHERE id = %s",
        (healthy["id"],),
    )
    response = client.get(f"{API}/stuck-tasks", headers=root.headers)
    assert response.status_code == 200
    rows = response.get_json()["stuck_tasks"]
    assert [r["id"] for r in rows] == [stuck["id"]]
    assert rows[0]["worker_id"] == "gone" and rows[0]["queue"] == "default"
    assert rows[0]["overdue"] >= 90
    assert "lease_expires_at" in rows[0] and "started_at" in rows[0]
    body = assert_error(client.get(f"{API}/stuck-tasks", headers=ann.headers), 403)
    assert body["error"] == "Admins only."
    assert_error(client.get(f"{API}/stuck-tasks"), 401)
