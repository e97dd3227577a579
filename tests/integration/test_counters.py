"""The task counters (migration 0009) equal a real COUNT, whoever writes, whenever they roll up."""

from __future__ import annotations

import contextlib
import random
import threading

import psycopg
import pytest
from psycopg.rows import dict_row

from taskq.counters import forget_empty_task_counts, roll_up_task_counts
from tests.helpers import API, insert_tasks, make_user, wait_for
from tests.worker_helpers import start_worker, stop_worker

KEY = "user_id, queue, task_type, status::text AS status"


def real_counts(db: psycopg.Connection) -> dict[tuple, int]:
    """(owner or 0, queue, type, status) -> tasks, counted in ``tasks``."""
    rows = db.execute(
        "SELECT coalesce(user_id, 0) AS user_id, queue, task_type, status::text AS status, "
        "count(*) AS n FROM tasks GROUP BY 1, 2, 3, 4"
    ).fetchall()
    return {(r["user_id"], r["queue"], r["task_type"], r["status"]): r["n"] for r in rows}


def counter_counts(db: psycopg.Connection) -> dict[tuple, int]:
    """The same, from the rolled-up counters and the pending deltas in one snapshot."""
    rows = db.execute(
        f"SELECT {KEY}, sum(tasks)::bigint AS n FROM (SELECT {KEY}, tasks FROM task_counts "
        f"UNION ALL SELECT {KEY}, tasks FROM task_count_deltas) c GROUP BY 1, 2, 3, 4 "
        "HAVING sum(tasks) <> 0"
    ).fetchall()
    return {(r["user_id"], r["queue"], r["task_type"], r["status"]): r["n"] for r in rows}


def queue_counts(db: psycopg.Connection) -> dict[tuple, int]:
    """(queue, status) -> tasks from the per-queue counters and the pending deltas."""
    rows = db.execute(
        "SELECT queue, status::text AS status, sum(tasks)::bigint AS n FROM "
        "(SELECT queue, status, tasks FROM queue_counts UNION ALL "
        " SELECT queue, status, tasks FROM task_count_deltas) c GROUP BY 1, 2 "
        "HAVING sum(tasks) <> 0"
    ).fetchall()
    return {(r["queue"], r["status"]): r["n"] for r in rows}


def by_queue(counts: dict[tuple, int]) -> dict[tuple, int]:
    """Fine counts summed per (queue, status)."""
    summed: dict[tuple, int] = {}
    for (_, queue, _, status), n in counts.items():
        summed[(queue, status)] = summed.get((queue, status), 0) + n
    return summed


def assert_counters_exact(db: psycopg.Connection) -> None:
    """Both counter tables agree with COUNT(*) of tasks."""
    real = real_counts(db)
    assert counter_counts(db) == real
    assert queue_counts(db) == by_queue(real)


def test_every_kind_of_write_is_counted(db):
    ann = make_user(db, "ann")
    ids = insert_tasks(db, 30, user_id=ann, queue="q1")
    insert_tasks(db, 5, task_type="echo")
    assert_counters_exact(db)
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", (ids[:20],))
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY(%s)", (ids[:10],))
    db.execute("UPDATE tasks SET queue = 'q2', task_type = 'echo' WHERE id = ANY(%s)", (ids[5:25],))
    db.execute("UPDATE tasks SET lease_expires_at = now() WHERE id = ANY(%s)", (ids,))  # no key
    db.execute("DELETE FROM tasks WHERE id = ANY(%s)", (ids[:3],))
    assert_counters_exact(db)
    assert roll_up_task_counts(db) > 0
    assert db.execute("SELECT count(*) AS n FROM task_count_deltas").fetchone()["n"] == 0
    assert_counters_exact(db)
    db.execute("DELETE FROM users WHERE id = %s", (ann,))  # its tasks go by cascade
    roll_up_task_counts(db)
    assert_counters_exact(db)
    assert forget_empty_task_counts(db) > 0
    assert db.execute("SELECT count(*) AS n FROM task_counts WHERE tasks = 0").fetchone()["n"] == 0
    db.execute("TRUNCATE tasks")
    assert counter_counts(db) == {} and queue_counts(db) == {}


def test_transitions_into_a_status_are_the_rates_of_queue_stats(db):
    ids = insert_tasks(db, 4, queue="rates")
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = ANY(%s)", (ids[:3],))
    db.execute("UPDATE tasks SET status = 'FAILED' WHERE id = %s", (ids[3],))
    db.execute("UPDATE tasks SET metadata = '{}' WHERE id = ANY(%s)", (ids,))  # no transition

    def rates() -> tuple:
        row = db.execute("SELECT * FROM queue_stats WHERE queue = 'rates'").fetchone()
        return row["waiting"], row["completed_last_minute"], row["failed_last_minute"]

    assert rates() == (0, 3, 1)  # pending deltas
    roll_up_task_counts(db)
    assert rates() == (0, 3, 1)  # rolled up into status_entries
    history = db.execute(
        "SELECT count(*) AS n FROM task_history WHERE to_status IN ('COMPLETED', 'FAILED')"
    ).fetchone()["n"]
    assert history == 4


def write_once(conn: psycopg.Connection, rng: random.Random) -> None:
    """One random insert, transition, move or delete, in its own transaction."""
    choice = rng.random()
    if choice < 0.3:
        insert_tasks(conn, rng.randint(1, 40), queue=rng.choice(["a", "b"]))
    elif choice < 0.6:
        conn.execute(
            "UPDATE tasks SET status = %s WHERE id IN "
            "(SELECT id FROM tasks ORDER BY random() LIMIT %s)",
            (rng.choice(["PROCESSING", "COMPLETED", "FAILED", "PENDING"]), rng.randint(1, 30)),
        )
    elif choice < 0.8:
        conn.execute(
            "UPDATE tasks SET queue = %s WHERE id IN "
            "(SELECT id FROM tasks ORDER BY random() LIMIT 10)",
            (rng.choice(["a", "b", "c"]),),
        )
    else:
        conn.execute(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks ORDER BY random() LIMIT %s)",
            (rng.randint(1, 20),),
        )


def writer(database_url: str, seed: int, rounds: int, errors: list) -> None:
    """``rounds`` random writes; a deadlock between two of them is Postgres doing its job."""
    rng = random.Random(seed)
    try:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            for _ in range(rounds):
                # One of two overlapping UPDATEs rolled back: nothing to count.
                with contextlib.suppress(psycopg.errors.DeadlockDetected):
                    write_once(conn, rng)
    except Exception as exc:  # reported by the test
        errors.append(exc)


def roller(database_url: str, stop: threading.Event, errors: list, batch: int) -> None:
    """Roll up in small batches until told to stop."""
    try:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            while not stop.is_set():
                roll_up_task_counts(conn, batch=batch, batches=3)
    except Exception as exc:  # reported by the test
        errors.append(exc)


def test_roll_ups_racing_writers_and_each_other_lose_and_double_nothing(database_url, db):
    errors: list = []
    stop = threading.Event()
    rollers = [
        threading.Thread(target=roller, args=(database_url, stop, errors, batch))
        for batch in (3, 7)
    ]
    writers = [
        threading.Thread(target=writer, args=(database_url, seed, 150, errors)) for seed in range(4)
    ]
    for thread in rollers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in rollers:
        thread.join()
    assert errors == []
    assert real_counts(db)  # the workload left tasks to count
    assert_counters_exact(db)
    roll_up_task_counts(db)
    assert db.execute("SELECT count(*) AS n FROM task_count_deltas").fetchone()["n"] == 0
    assert_counters_exact(db)


@pytest.mark.slow
def test_counters_equal_count_after_a_mixed_workload_with_real_workers(
    client, make_account, database_url, db
):
    ann = make_account("ann")
    bob = make_account("bob")
    root = make_account("root", admin=True)
    for account in (ann, bob):
        batch = [{"title": f"n{i}", "task_type": "noop", "queue": "q2" if i % 3 else "default"}
                 for i in range(150)]  # fmt: skip
        batch += [{"title": f"later {i}", "scheduled_at": "2099-01-01T00:00:00Z"}
                  for i in range(20)]  # fmt: skip
        response = client.post(f"{API}/tasks/batch", json=batch, headers=account.headers)
        assert response.status_code == 201
    # Tasks no worker knows: two attempts each, then FAILED (and a dead letter).
    insert_tasks(db, 40, task_type="unknown_type", max_retries=1, retry_delay=0, user_id=ann.id)
    workers = [
        start_worker(
            database_url, "--queues", "default,q2", "--concurrency", "2",
            TASKQ_COUNTS_INTERVAL="0.05",
        )
        for _ in range(2)
    ]  # fmt: skip
    errors: list = []
    stop = threading.Event()
    racer = threading.Thread(target=roller, args=(database_url, stop, errors, 5))
    racer.start()
    try:
        later = [
            t["id"]
            for t in client.get(
                f"{API}/tasks?search=later&page_size=100", headers=ann.headers
            ).get_json()["results"]
        ]
        for task_id in later[:5]:
            assert (
                client.post(f"{API}/tasks/{task_id}/cancel", headers=ann.headers).status_code == 200
            )
        for task_id in later[5:8]:
            assert client.delete(f"{API}/tasks/{task_id}", headers=ann.headers).status_code == 200
        # An operator's UPDATEs in psql: move tasks of bob to another queue and type.
        db.execute(
            "UPDATE tasks SET queue = 'parked', task_type = 'echo' "
            "WHERE user_id = %s AND title LIKE 'later %%'",
            (bob.id,),
        )

        def drained() -> bool:
            row = db.execute(
                "SELECT count(*) AS n FROM tasks WHERE status IN ('PENDING', 'RETRYING', "
                "'PROCESSING') AND run_at < '2098-01-01' AND queue IN ('default', 'q2')"
            ).fetchone()
            return row["n"] == 0

        wait_for(drained, 120, "the workers to drain the due tasks")
        failed = db.execute(
            "SELECT id FROM tasks WHERE status = 'FAILED' AND user_id = %s", (ann.id,)
        ).fetchall()
        assert len(failed) == 40
        for row in failed[:10]:
            retried = client.post(f"{API}/tasks/{row['id']}/retry", headers=ann.headers)
            assert retried.status_code == 200
        done = db.execute(
            "SELECT id FROM tasks WHERE status = 'COMPLETED' AND user_id = %s LIMIT 30", (bob.id,)
        ).fetchall()
        for row in done:
            assert client.delete(f"{API}/tasks/{row['id']}", headers=bob.headers).status_code == 200
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE title LIKE 'later 1%%'")
        wait_for(drained, 120, "the retried tasks to fail again")
        assert_counters_exact(db)
        # What the API answers is the same COUNT.
        real = real_counts(db)
        for account in (ann, bob):
            stats = client.get(f"{API}/tasks/stats", headers=account.headers).get_json()
            mine = {}
            for (user_id, _, _, status), n in real.items():
                if user_id == account.id:
                    mine[status] = mine.get(status, 0) + n
            assert {s["status"]: s["count"] for s in stats["stats"] if s["count"]} == mine
            assert stats["total"] == sum(mine.values())
        listing = client.get(f"{API}/admin/tasks?queue=q2&status=completed", headers=root.headers)
        expected = by_queue(real).get(("q2", "COMPLETED"), 0)
        assert listing.get_json()["count"] == expected and listing.get_json()["count_exact"]
        # The leader rolls the rest up: nothing stays pending for long.
        wait_for(
            lambda: db.execute("SELECT count(*) AS n FROM task_count_deltas").fetchone()["n"] == 0,
            30,
            "the leader's roll-up",
        )
        assert_counters_exact(db)
    finally:
        stop.set()
        racer.join()
        outputs = [stop_worker(w) for w in workers]
    assert errors == []
    assert [code for code, _ in outputs] == [0, 0], outputs
