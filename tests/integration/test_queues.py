"""Queues as rows: the admin API and psql edit them; the claim's gate keeps pause and limits."""

from __future__ import annotations

import threading

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sql import queries
from tests.helpers import API, assert_error, create, insert_tasks, wait_for
from tests.worker_helpers import claim_connection
from worker.completer import Outcomes

ADMIN = f"{API}/admin"
FIELDS = ("paused", "concurrency", "rate_limit", "rate_period", "description")


def claim(conn: psycopg.Connection, queues: list[str], limit: int = 100, worker: str = "w"):
    """One claim_tasks statement: the claimed rows and the gate's hint rows."""
    params = {"queues": queues, "limit": limit, "worker_id": worker, "lease_seconds": 30}
    rows = conn.execute(queries["claim_tasks"], params).fetchall()
    return [r for r in rows if r["id"] is not None], [r for r in rows if r["id"] is None]


def queue_row(db: psycopg.Connection, name: str):
    return db.execute(
        "SELECT paused, concurrency, rate_limit, rate_period, description FROM queues "
        "WHERE name = %s",
        [name],
    ).fetchone()


def serve(db: psycopg.Connection, *queues: str, worker: str = "w1") -> None:
    """A live worker process serving ``queues``, as register_worker records it."""
    db.execute(
        queries["register_worker"],
        {"id": worker, "hostname": "h", "pid": 1, "queues": list(queues), "concurrency": 1},
    )


@pytest.fixture
def root(make_account):
    return make_account("root", admin=True)


# ------------------------------------------------------------------------ the gate


def test_a_paused_queue_gets_no_claims_and_the_others_still_do(db):
    insert_tasks(db, 3, queue="a")
    insert_tasks(db, 2, queue="b")
    db.execute("INSERT INTO queues (name, paused) VALUES ('a', true)")
    got, _ = claim(db, ["a", "b"])
    assert sorted(r["queue"] for r in got) == ["b", "b"]
    db.execute("UPDATE queues SET paused = false WHERE name = 'a'")
    got, _ = claim(db, ["a", "b"])
    assert [r["queue"] for r in got] == ["a", "a", "a"]


def test_a_concurrency_limit_counts_running_tasks_of_every_worker(db):
    ids = insert_tasks(db, 10, queue="a")
    db.execute("INSERT INTO queues (name, concurrency) VALUES ('a', 4)")
    first, _ = claim(db, ["a"], limit=3, worker="w1")
    second, _ = claim(db, ["a"], limit=3, worker="w2")
    assert (len(first), len(second)) == (3, 1)
    assert claim(db, ["a"], worker="w3")[0] == []
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY(%s)", [ids[:2]])
    assert len(claim(db, ["a"], worker="w3")[0]) == 2


def test_a_fair_share_per_live_worker_and_unlimited_queues_beside_limited_ones(db):
    insert_tasks(db, 10, queue="a")
    insert_tasks(db, 5, queue="free")
    db.execute("INSERT INTO queues (name, concurrency) VALUES ('a', 6)")
    serve(db, "a", "free", worker="w1")
    serve(db, "a", worker="w2")
    serve(db, "free", worker="w3")  # serves another queue: not in a's share
    first, _ = claim(db, ["a", "free"], worker="w1")
    assert sorted(r["queue"] for r in first).count("a") == 3  # 6 over 2 live workers
    assert [r["queue"] for r in first].count("free") == 5  # no limit beside a limited queue
    assert len(claim(db, ["a"], worker="w2")[0]) == 3
    assert claim(db, ["a"], worker="w1")[0] == []


def test_a_rate_limit_counts_starts_in_the_window_and_hints_when_it_opens(db):
    insert_tasks(db, 10, queue="a")
    db.execute("INSERT INTO queues (name, rate_limit, rate_period) VALUES ('a', 4, '1 hour')")
    assert len(claim(db, ["a"], limit=3)[0]) == 3
    got, hints = claim(db, ["a"], limit=3)
    assert len(got) == 1 and hints == []
    got, hints = claim(db, ["a"])
    assert got == [] and [h["queue"] for h in hints] == ["a"]
    assert 3500 < hints[0]["waited"] <= 3600
    # Starts older than the window no longer count (and are pruned by the next claim).
    db.execute("UPDATE queue_starts SET started_at = started_at - interval '2 hours'")
    assert len(claim(db, ["a"])[0]) == 4
    assert db.execute("SELECT sum(tasks) AS n FROM queue_starts").fetchone()["n"] == 4


def test_unlimited_queues_log_no_starts_and_take_no_lock(db, database_url):
    insert_tasks(db, 2, queue="a")
    db.execute("INSERT INTO queues (name, description) VALUES ('a', 'plain')")
    with psycopg.connect(database_url) as other:
        other.execute("SELECT 1 FROM queues WHERE name = 'a' FOR UPDATE")  # held, not committed
        assert len(claim(db, ["a"])[0]) == 2  # did not wait for it
    assert db.execute("SELECT count(*) AS n FROM queue_starts").fetchone()["n"] == 0


@pytest.mark.parametrize(
    "limit_sql",
    ["concurrency = 5", "rate_limit = 5, rate_period = '1 hour'"],
    ids=["concurrency", "rate"],
)
def test_two_claims_racing_share_one_limit(db, database_url, limit_sql):
    insert_tasks(db, 20, queue="a")
    db.execute("INSERT INTO queues (name) VALUES ('a')")
    db.execute(f"UPDATE queues SET {limit_sql} WHERE name = 'a'")
    results = {}
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as first:
        got, _ = claim(first, ["a"], limit=3, worker="w1")  # its transaction holds the gate
        results["first"] = len(got)

        def second_claim():
            with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
                results["second"] = len(claim(conn, ["a"], limit=10, worker="w2")[0])

        racer = threading.Thread(target=second_claim)
        racer.start()
        wait_for(lambda: blocked_on_lock(db), 10, "the second claim waiting on the gate")
        assert "second" not in results
        first.commit()
        racer.join(10)
    assert results == {"first": 3, "second": 2}
    assert (
        db.execute("SELECT count(*) AS n FROM tasks WHERE status = 'PROCESSING'").fetchone()["n"]
        == 5
    )


def blocked_on_lock(db: psycopg.Connection) -> bool:
    return bool(
        db.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    )


def test_a_psql_update_of_a_queue_wakes_its_workers(db, database_url):
    db.execute("INSERT INTO queues (name, paused) VALUES ('mail', true)")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq_wakeup")
        db.execute("UPDATE queues SET paused = false WHERE name = 'mail'")
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [("taskq_wakeup", "mail")]
    touched = db.execute("SELECT created_at < updated_at AS touched FROM queues").fetchone()
    assert touched["touched"]


def test_the_database_refuses_bad_rows_from_psql(db):
    for values in ("('x', 0, NULL, NULL)", "('x', NULL, 5, NULL)", "('x y', NULL, NULL, NULL)",
                   "('x', NULL, 5, '-1 second')"):  # fmt: skip
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(
                f"INSERT INTO queues (name, concurrency, rate_limit, rate_period) VALUES {values}"
            )


# --------------------------------------------------------------------- the admin API


def test_patch_pause_resume_and_read_a_queue(client, root, db):
    body = {"concurrency": 3, "rate": "100/60s", "description": "smtp"}
    response = client.patch(f"{ADMIN}/queues/mail", headers=root.headers, json=body)
    assert response.status_code == 200, response.get_json()
    queue = response.get_json()["queue"]
    assert (queue["queue"], queue["paused"], queue["concurrency"]) == ("mail", False, 3)
    assert (queue["rate"], queue["rate_limit"], queue["rate_period"]) == ("100/60s", 100, 60.0)
    assert queue["description"] == "smtp" and queue["workers"] == 0
    paused = client.post(f"{ADMIN}/queues/mail/pause", headers=root.headers).get_json()
    assert paused["queue"]["paused"] is True and paused["message"] == "Queue mail paused"
    assert queue_row(db, "mail")["paused"] is True
    client.patch(f"{ADMIN}/queues/mail", headers=root.headers, json={"rate": None})
    read = client.get(f"{ADMIN}/queues/mail", headers=root.headers).get_json()["queue"]
    assert (read["paused"], read["concurrency"], read["rate"]) == (True, 3, None)
    resumed = client.post(f"{ADMIN}/queues/mail/resume", headers=root.headers).get_json()
    assert resumed["queue"]["paused"] is False
    listed = client.get(f"{ADMIN}/queues", headers=root.headers).get_json()["queues"]
    mail = next(q for q in listed if q["queue"] == "mail")
    assert (mail["concurrency"], mail["waiting"], mail["unserved"]) == (3, 0, False)


@pytest.mark.parametrize(
    "body",
    [
        {"concurrency": 0},
        {"concurrency": "3"},
        {"concurrency": 2.5},
        {"rate": "100"},
        {"rate": "0/1s"},
        {"rate": "10/0s"},
        {"rate": "10/0.000s"},
        {"rate": " 1/s"},
        {"rate": 10},
        {"paused": "yes"},
        {"paused": 1},
        {"unknown": 1},
        {},
    ],
)
def test_bad_patch_input_is_a_400_and_stores_nothing(client, root, db, body):
    client.patch(f"{ADMIN}/queues/mail", headers=root.headers, json={"concurrency": 2})
    before = queue_row(db, "mail")
    response = client.patch(f"{ADMIN}/queues/mail", headers=root.headers, json=body)
    assert_error(response, 400)
    assert queue_row(db, "mail") == before


def test_a_bad_queue_name_is_a_400_and_an_unknown_one_a_404(client, root, db):
    assert_error(client.post(f"{ADMIN}/queues/a%20b/pause", headers=root.headers), 400, "name")
    assert_error(client.get(f"{ADMIN}/queues/{'x' * 65}", headers=root.headers), 400, "name")
    assert_error(client.get(f"{ADMIN}/queues/nowhere", headers=root.headers), 404)
    assert db.execute("SELECT count(*) AS n FROM queues").fetchone()["n"] == 0


def test_queue_controls_are_for_admins_only(client, make_account, db):
    ann = make_account("ann")
    calls = (("get", "mail"), ("patch", "mail"), ("post", "mail/pause"), ("post", "mail/resume"))
    for method, path in calls:
        call = getattr(client, method)
        answer = call(f"{ADMIN}/queues/{path}", headers=ann.headers, json={"paused": True})
        body = assert_error(answer, 403)
        assert body["error"] == "Admins only."
        assert_error(call(f"{ADMIN}/queues/{path}", json={"paused": True}), 401)
    assert db.execute("SELECT count(*) AS n FROM queues").fetchone()["n"] == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["paused", "concurrency", "rate", "description", "other"]),
        st.none()
        | st.booleans()
        | st.integers(-5, 2_000_000)
        | st.text(max_size=12)
        | st.from_regex(r"\A\d{1,8}/\d{0,3}(ms|s|m|h|d)?\Z"),
        max_size=4,
    )
)
def test_whatever_patch_accepts_every_read_returns_and_what_it_refuses_it_did_not_store(
    client, root, db, body
):
    db.execute("DELETE FROM queues")
    response = client.patch(f"{ADMIN}/queues/prop", headers=root.headers, json=body)
    stored = queue_row(db, "prop")
    if response.status_code != 200:
        assert_error(response, 400)
        assert stored is None
        return
    queue = response.get_json()["queue"]
    read = client.get(f"{ADMIN}/queues/prop", headers=root.headers).get_json()["queue"]
    assert read == queue
    for field in ("paused", "concurrency", "description"):
        if field in body:
            assert queue[field] == body[field]
    if body.get("rate") is not None:
        assert queue["rate_limit"] == stored["rate_limit"] == int(body["rate"].split("/")[0])


# ------------------------------------------------------------------ unserved queues


def test_a_create_in_a_queue_no_live_worker_serves_warns(app, client, make_account, db):
    app.config["TASKQ_QUEUE_INFO_SECONDS"] = 0  # read the workers at every create
    headers = make_account("bea").headers
    made = client.post(f"{API}/tasks", headers=headers,
                       json={"title": "t", "task_type": "echo", "queue": "mail"})  # fmt: skip
    assert made.status_code == 201
    assert [w for w in made.get_json()["warnings"] if "No live worker serves queue 'mail'" in w]
    serve(db, "mail")
    served = client.post(f"{API}/tasks", headers=headers,
                         json={"title": "t", "task_type": "echo", "queue": "mail"})  # fmt: skip
    assert served.get_json()["warnings"] == []
    db.execute("INSERT INTO queues (name, paused) VALUES ('mail', true)")
    batch = client.post(f"{API}/tasks/batch", headers=headers, json=[
        {"title": "a", "task_type": "echo", "queue": "mail"},
        {"title": "b", "task_type": "echo", "queue": "other"}])  # fmt: skip
    assert batch.status_code == 201
    warnings = batch.get_json()["warnings"]
    assert any("'mail' is paused" in w for w in warnings)
    assert any("No live worker serves queue 'other'" in w for w in warnings)
    assert not any("serves queue 'mail'" in w for w in warnings)


def test_a_create_answered_by_the_task_holding_its_key_warns_too(app, client, make_account):
    app.config["TASKQ_QUEUE_INFO_SECONDS"] = 0
    headers = make_account("cal").headers
    body = {"title": "t", "task_type": "echo", "queue": "unserved-q", "unique_key": "k"}
    again = {**headers, "Idempotency-Key": "once"}
    for sent, status in ((again, 201), (again, 200), (headers, 200)):
        answer = client.post(f"{API}/tasks", headers=sent, json=body)
        assert answer.status_code == status, answer.get_json()
        assert any("No live worker serves queue 'unserved-q'" in w
                   for w in answer.get_json()["warnings"])  # fmt: skip


def test_admin_queues_and_metrics_show_queues_with_work_and_no_workers(client, root, db):
    ann_task = create(client, root, queue="orphans")
    serve(db, "default")
    listed = client.get(f"{ADMIN}/queues", headers=root.headers).get_json()["queues"]
    by_name = {q["queue"]: q for q in listed}
    assert by_name["orphans"]["unserved"] is True and by_name["orphans"]["waiting"] == 1
    assert by_name["default"]["unserved"] is False and by_name["default"]["workers"] == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'taskq_queue_unserved{queue="orphans"} 1.0' in metrics
    assert 'taskq_queue_workers{queue="default"} 1.0' in metrics
    db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", [ann_task["id"]])
    listed = client.get(f"{ADMIN}/queues", headers=root.headers).get_json()["queues"]
    assert not [q for q in listed if q["unserved"]]


def test_the_worker_exchange_hears_when_a_full_rate_window_opens(db, database_url):
    insert_tasks(db, 3)
    db.execute("INSERT INTO queues (name, rate_limit, rate_period) VALUES ('default', 1, '1 hour')")
    with claim_connection(database_url) as exchange:
        exchange.send(Outcomes(), 5)
        first = exchange.receive()
        exchange.send(Outcomes(), 5)
        second = exchange.receive()
    assert len(first.rows) == 1 and first.reopens is None
    assert second.rows == [] and 3500 < second.reopens <= 3600
