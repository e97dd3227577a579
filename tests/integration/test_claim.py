"""The claim, completion, failure and hand-back queries against a real Postgres."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from sql import queries
from tests.helpers import insert_tasks, status_counts, wait_for
from worker.claim import (
    ClaimPipe,
    Outcomes,
    claim_tasks,
    connect,
    exchange,
    reap_expired_leases,
    settle_worker_tasks,
)


def finish(conn: psycopg.Connection, outcomes: Outcomes, delay: float = 3600) -> dict[int, str]:
    """Write outcomes only; the failed tasks' new statuses."""
    return exchange(
        conn, outcomes, worker_id="w", queues=["default"], limit=0, lease_seconds=30,
        max_retry_delay=delay,
    )[1]  # fmt: skip


def test_claim_uses_the_partial_index_not_a_seq_scan(db: psycopg.Connection, database_url: str):
    insert_tasks(db, 10_000, status="COMPLETED")
    insert_tasks(db, 5, queue="default")
    insert_tasks(db, 5, queue="other")
    db.execute("ANALYZE tasks")
    params = {"queues": ["default", "other"], "limit": 10, "worker_id": "w", "lease_seconds": 30}
    with psycopg.connect(database_url) as conn, psycopg.ClientCursor(conn) as cur:
        cur.execute("EXPLAIN " + queries["claim_tasks"], params)
        plan = "\n".join(row[0] for row in cur.fetchall())
        conn.rollback()
    assert "Seq Scan on tasks" not in plan, plan
    assert "ix_tasks_claim" in plan, plan


def test_claim_order_queues_due_time_and_limit(db: psycopg.Connection, database_url: str) -> None:
    low = insert_tasks(db, 2, priority=1)
    high = insert_tasks(db, 1, priority=20)
    insert_tasks(db, 1, priority=50, run_at=db.execute("SELECT now() + interval '1 hour' AS t")
                 .fetchone()["t"])  # fmt: skip
    insert_tasks(db, 1, priority=50, queue="elsewhere")
    retrying = insert_tasks(db, 1, priority=5, status="RETRYING", attempts=1)
    with connect(database_url) as conn:
        rows = claim_tasks(conn, worker_id="w1", queues=["default"], limit=3)
        assert [r.id for r in rows] == [*high, *retrying, low[0]]
        assert [r.attempts for r in rows] == [1, 2, 1]
        rest = claim_tasks(conn, worker_id="w1", queues=["default"], limit=10)
        assert [r.id for r in rest] == [low[1]]  # the future and the other queue's stay
    held = db.execute(
        "SELECT count(*) AS n FROM tasks WHERE status = 'PROCESSING' AND worker_id = 'w1' "
        "AND lease_expires_at > now() AND lease_token IS NOT NULL AND started_at IS NOT NULL"
    ).fetchone()["n"]
    assert held == 4


def test_two_workers_race_for_one_task(db: psycopg.Connection, database_url: str) -> None:
    (task_id,) = insert_tasks(db, 1)
    with connect(database_url) as a, connect(database_url) as b:
        with a.transaction():
            got_a = a.execute(
                queries["claim_tasks"],
                {"queues": ["default"], "limit": 1, "worker_id": "a", "lease_seconds": 30},
            ).fetchall()
            # b runs while a still holds the row lock: skipped, not waited on
            got_b = claim_tasks(b, worker_id="b", queues=["default"], limit=1)
        assert [r["id"] for r in got_a] == [task_id]
        assert got_b == []
        assert claim_tasks(b, worker_id="b", queues=["default"], limit=1) == []
    assert db.execute("SELECT worker_id FROM tasks").fetchone()["worker_id"] == "a"


def test_concurrent_claimers_take_each_task_once(db: psycopg.Connection, database_url: str):
    ids = insert_tasks(db, 600)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def claimer(index: int) -> None:
        with connect(database_url) as conn:
            while rows := claim_tasks(conn, worker_id=f"w{index}", queues=["default"], limit=7):
                claimed[index].extend(r.id for r in rows)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [task_id for part in claimed for task_id in part]
    assert sorted(everything) == ids


def test_complete_is_fenced_by_the_lease_token(db: psycopg.Connection, database_url: str):
    (task_id,) = insert_tasks(db, 1, max_retries=3)
    with connect(database_url) as conn:
        (first,) = claim_tasks(conn, worker_id="dead", queues=["default"], limit=1)
        db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
        assert reap_expired_leases(conn) == 1
        (second,) = claim_tasks(conn, worker_id="alive", queues=["default"], limit=1)
        assert second.attempts == 2 and second.lease_token != first.lease_token
        stale = Outcomes()
        stale.complete(task_id, first.lease_token, '"late"')
        finish(conn, stale)
        assert db.execute("SELECT status::text FROM tasks").fetchone()["status"] == "PROCESSING"
        fresh = Outcomes()
        fresh.complete(task_id, second.lease_token, '"ok"')
        finish(conn, fresh)
    row = db.execute("SELECT status::text, result, attempts FROM tasks").fetchone()
    assert row == {"status": "COMPLETED", "result": "ok", "attempts": 2}
    history = db.execute(
        "SELECT to_status::text AS s FROM task_history WHERE task_id = %s ORDER BY id", [task_id]
    ).fetchall()
    assert [h["s"] for h in history] == [
        "PENDING", "PROCESSING", "RETRYING", "PROCESSING", "COMPLETED",
    ]  # fmt: skip


def test_a_reaped_task_is_due_at_once_and_its_attempt_counts(db: psycopg.Connection, database_url):
    (task_id,) = insert_tasks(db, 1, retry_delay=3600, max_retries=1)
    with connect(database_url) as conn:
        for attempt in (1, 2):
            (row,) = claim_tasks(conn, worker_id=f"dead{attempt}", queues=["default"], limit=1)
            assert (row.id, row.attempts) == (task_id, attempt)
            db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
            assert reap_expired_leases(conn) == 1
            if attempt == 1:  # back at once: due at the reap, not retry_delay (an hour) later
                reaped = db.execute(
                    "SELECT t.status::text, t.attempts, t.run_at, h.created_at AS reaped_at "
                    "FROM tasks t JOIN task_history h ON h.task_id = t.id "
                    "AND h.to_status = 'RETRYING'"
                ).fetchone()
                assert (reaped["status"], reaped["attempts"]) == ("RETRYING", 1)
                assert reaped["run_at"] <= reaped["reaped_at"]
    row = db.execute("SELECT status::text, attempts, error FROM tasks").fetchone()
    assert row == {"status": "FAILED", "attempts": 2, "error": "lease expired: worker dead2 lost"}
    dead = db.execute("SELECT task_id, attempts FROM dead_letters").fetchall()
    assert dead == [{"task_id": task_id, "attempts": 2}]


def test_a_cancelled_task_is_never_overwritten(db: psycopg.Connection, database_url: str):
    (task_id,) = insert_tasks(db, 1)
    with connect(database_url) as conn:
        (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", [task_id])
        late = Outcomes()
        late.complete(task_id, row.lease_token, '"late"')
        late.fail(task_id, row.lease_token, "late")
        finish(conn, late)
    assert db.execute("SELECT status::text, result FROM tasks").fetchone() == {
        "status": "CANCELLED",
        "result": None,
    }


def test_failure_backoff_with_jitter_then_dead_letter(db: psycopg.Connection, database_url: str):
    (task_id,) = insert_tasks(db, 1, retry_delay=10, max_retries=3)
    with connect(database_url) as conn:
        for attempt, (low, high) in enumerate([(7.5, 12.5), (15, 25), (22.5, 37.5)], start=1):
            db.execute("UPDATE tasks SET run_at = now() WHERE id = %s", [task_id])
            (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
            assert row.attempts == attempt
            failure = Outcomes()
            failure.fail(task_id, row.lease_token, f"boom {attempt}")
            # attempt 3 hits the 30 s cap: 30 * (0.75..1.25)
            assert finish(conn, failure, delay=30) == {task_id: "RETRYING"}
            wait = db.execute("SELECT run_at - now() AS d, error FROM tasks").fetchone()
            assert timedelta(seconds=low) <= wait["d"] <= timedelta(seconds=high)
            assert wait["error"] == f"boom {attempt}"
        db.execute("UPDATE tasks SET run_at = now()")
        (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
        failure = Outcomes()
        failure.fail(task_id, row.lease_token, "final")
        assert finish(conn, failure) == {task_id: "FAILED"}
    dead = db.execute("SELECT task_id, attempts, error FROM dead_letters").fetchall()
    assert dead == [{"task_id": task_id, "attempts": 4, "error": "final"}]
    assert db.execute("SELECT completed_at IS NOT NULL AS c FROM tasks").fetchone()["c"]


def test_release_does_not_count_the_attempt(db: psycopg.Connection, database_url: str):
    fresh, retried = insert_tasks(db, 1), insert_tasks(db, 1, status="RETRYING", attempts=1)
    with connect(database_url) as conn:
        rows = claim_tasks(conn, worker_id="w", queues=["default"], limit=2)
        back = Outcomes()
        for row in rows:
            back.release(row.id, row.lease_token)
        finish(conn, back)
    states = db.execute(
        "SELECT id, status::text, attempts, worker_id, lease_expires_at FROM tasks ORDER BY id"
    ).fetchall()
    assert states == [
        {"id": fresh[0], "status": "PENDING", "attempts": 0, "worker_id": None,
         "lease_expires_at": None},
        {"id": retried[0], "status": "RETRYING", "attempts": 1, "worker_id": None,
         "lease_expires_at": None},
    ]  # fmt: skip


def test_settle_a_dead_workers_tasks(db: psycopg.Connection, database_url: str) -> None:
    running, queued = insert_tasks(db, 2, max_retries=0)
    with connect(database_url) as conn:
        claim_tasks(conn, worker_id="gone", queues=["default"], limit=2)
        assert settle_worker_tasks(conn, "gone", failed={running: "killed"}) == 2
    rows = db.execute("SELECT id, status::text, attempts, error FROM tasks ORDER BY id").fetchall()
    assert rows == [
        {"id": running, "status": "FAILED", "attempts": 1, "error": "killed"},
        {"id": queued, "status": "PENDING", "attempts": 0, "error": None},
    ]


def test_heartbeat_extends_only_live_workers(db: psycopg.Connection, database_url: str) -> None:
    from worker.claim import extend_leases

    insert_tasks(db, 2)
    with connect(database_url) as conn:
        claim_tasks(conn, worker_id="live", queues=["default"], limit=1, lease_seconds=1)
        claim_tasks(conn, worker_id="dead", queues=["default"], limit=1, lease_seconds=1)
        conn.execute(
            queries["register_worker"],
            {"id": "live", "hostname": "h", "pid": 1, "queues": ["default"], "concurrency": 1},
        )
        extend_leases(conn, ["live"], 60)
    leases = db.execute(
        "SELECT worker_id, lease_expires_at - now() > interval '30 s' AS long FROM tasks"
    ).fetchall()
    assert {r["worker_id"]: r["long"] for r in leases} == {"live": True, "dead": False}
    assert db.execute("SELECT running FROM live_workers").fetchone()["running"] == 1


@pytest.mark.parametrize("limit", [0, 5])
def test_exchange_writes_and_claims_in_one_transaction(
    db: psycopg.Connection, database_url: str, limit: int
) -> None:
    ids = insert_tasks(db, 3)
    with connect(database_url) as conn:
        (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
        done = Outcomes()
        done.complete(row.id, row.lease_token, '{"n": 1}')
        rows, failed = exchange(conn, done, worker_id="w", queues=["default"], limit=limit,
                                lease_seconds=30, max_retry_delay=60)  # fmt: skip
        assert len(done) == 0 and failed == {}
    assert [r.id for r in rows] == (ids[1:] if limit else [])
    assert db.execute("SELECT result FROM tasks WHERE id = %s", [ids[0]]).fetchone() == {
        "result": {"n": 1}
    }


def test_claim_connection_is_dict_rows(database_url: str) -> None:
    with connect(database_url) as conn:
        assert conn.row_factory is dict_row and conn.autocommit


def test_pipe_commits_before_its_reply_is_read(db: psycopg.Connection, database_url: str) -> None:
    ids = insert_tasks(db, 3, priority=1)
    first = insert_tasks(db, 1, priority=9)
    with connect(database_url) as conn:
        pipe = ClaimPipe(conn)
        assert pipe.send(Outcomes(), worker_id="w", queues=["default"], limit=3,
                         lease_seconds=30, max_retry_delay=60)  # fmt: skip
        assert pipe.busy
        # The worker runs tasks now; the server commits without waiting for it.
        wait_for(lambda: status_counts(db).get("PROCESSING") == 3, 5, "claim committed")
        rows, failed = pipe.receive()
        assert not pipe.busy and failed == {}
        assert [r.id for r in rows] == [*first, *ids[:2]]  # claim order
        assert json.loads(rows[0].payload) == {} and rows[0].attempts == 1
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}  # usable again


def test_pipe_exchange_is_one_transaction_even_on_error(db: psycopg.Connection, database_url):
    ids = insert_tasks(db, 2)
    with connect(database_url) as conn:
        (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
        bad = Outcomes()
        bad.complete(row.id, row.lease_token, "{not json")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            exchange(conn, bad, worker_id="w", queues=["default"], limit=5, lease_seconds=30,
                     max_retry_delay=60)  # fmt: skip
        assert len(bad) == 1  # kept, to be written again
        # Rolled back whole: the claim in the same exchange did not happen.
        assert status_counts(db) == {"PROCESSING": 1, "PENDING": 1}
        good = Outcomes()
        good.complete(row.id, row.lease_token, '"ok"')
        rows, _ = exchange(conn, good, worker_id="w", queues=["default"], limit=5,
                           lease_seconds=30, max_retry_delay=60)  # fmt: skip
    assert [r.id for r in rows] == ids[1:]
    assert status_counts(db) == {"COMPLETED": 1, "PROCESSING": 1}


def test_array_parameters_survive_quotes_and_backslashes(db, database_url: str) -> None:
    (task_id,) = insert_tasks(db, 1, max_retries=0)
    error = 'Bad "quote" \\ back\\slash, {brace} NULL'
    with connect(database_url) as conn:
        (row,) = claim_tasks(conn, worker_id="w", queues=["default"], limit=1)
        failure = Outcomes()
        failure.fail(task_id, row.lease_token, error)
        assert finish(conn, failure) == {task_id: "FAILED"}
    assert db.execute("SELECT error FROM tasks").fetchone() == {"error": error}


def test_a_frozen_server_is_given_up_on_after_the_reply_timeout(db, database_url):
    import os
    import signal
    import time

    insert_tasks(db, 3)
    conn = connect(database_url)
    pipe = ClaimPipe(conn)
    pipe.reply_timeout = 0.5
    backend = conn.info.backend_pid
    os.kill(backend, signal.SIGSTOP)  # the host freezes: no reply, no FIN
    try:
        started = time.monotonic()
        assert pipe.send(Outcomes(), worker_id="w", queues=["default"], limit=3,
                         lease_seconds=30, max_retry_delay=60)  # fmt: skip
        with pytest.raises(psycopg.OperationalError, match="no reply"):
            pipe.receive()
        assert time.monotonic() - started < 5
        assert conn.closed
    finally:
        os.kill(backend, signal.SIGCONT)
    # Whatever the frozen backend does when it wakes, the tasks are not lost: at worst
    # they are claimed under "w" (orphans the reconnect hands back), else still PENDING.
    wait_for(lambda: not db.execute(
        "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", [backend]
    ).fetchone(), timeout=10, message="the woken backend to finish")  # fmt: skip
    assert sum(status_counts(db).values()) == 3
