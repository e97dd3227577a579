"""The claim connection's exchanges, completions, failures and hand-backs on a real Postgres.

Everything goes through ``worker.exchange.Exchange``, the path a worker child uses.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from sql import queries
from tests.helpers import insert_tasks, status_counts, wait_for
from tests.worker_helpers import claim, claim_connection, write
from worker.completer import Outcomes, settle_worker_tasks
from worker.db import connect
from worker.maintenance import reap_expired_leases
from worker.supervisor import extend_leases


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
    with claim_connection(database_url, "w1") as exchange:
        rows = claim(exchange, 3)
        assert [r.id for r in rows] == [*high, *retrying, low[0]]
        assert [r.attempts for r in rows] == [1, 2, 1]
        rest = claim(exchange, 10)
        assert [r.id for r in rest] == [low[1]]  # the future and the other queue's stay
        held = db.execute(
            "SELECT count(*) AS n FROM tasks WHERE status = 'PROCESSING' AND worker_id = 'w1' "
            "AND lease_expires_at > now() AND lease_token IS NOT NULL AND started_at IS NOT NULL"
        ).fetchone()["n"]
    assert held == 4


def test_two_workers_race_for_one_task(db: psycopg.Connection, database_url: str) -> None:
    (task_id,) = insert_tasks(db, 1)
    with connect(database_url) as a, claim_connection(database_url, "b") as b:
        with a.transaction():
            got_a = a.execute(
                queries["claim_tasks"],
                {"queues": ["default"], "limit": 1, "worker_id": "a", "lease_seconds": 30},
            ).fetchall()
            # b runs while a still holds the row lock: skipped, not waited on
            got_b = claim(b, 1)
        assert [r["id"] for r in got_a] == [task_id]
        assert got_b == []
        assert claim(b, 1) == []
    assert db.execute("SELECT worker_id FROM tasks").fetchone()["worker_id"] == "a"


def test_concurrent_claimers_take_each_task_once(db: psycopg.Connection, database_url: str):
    ids = insert_tasks(db, 600)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def claimer(index: int) -> None:
        with claim_connection(database_url, f"w{index}") as exchange:
            while rows := claim(exchange, 7):
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
    with claim_connection(database_url, "dead") as dead, claim_connection(database_url) as alive:
        (first,) = claim(dead, 1)
        db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
        assert reap_expired_leases(db) == 1
        (second,) = claim(alive, 1)
        assert second.attempts == 2 and second.lease_token != first.lease_token
        stale = Outcomes()
        stale.complete(task_id, first.lease_token, '"late"')
        write(dead, stale)
        assert db.execute("SELECT status::text FROM tasks").fetchone()["status"] == "PROCESSING"
        fresh = Outcomes()
        fresh.complete(task_id, second.lease_token, '"ok"')
        write(alive, fresh)
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
    for attempt in (1, 2):
        with claim_connection(database_url, f"dead{attempt}") as dead:
            (row,) = claim(dead, 1)
            assert (row.id, row.attempts) == (task_id, attempt)
            db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
            assert reap_expired_leases(db) == 1
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
    with claim_connection(database_url) as exchange:
        (row,) = claim(exchange, 1)
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", [task_id])
        late = Outcomes()
        late.complete(task_id, row.lease_token, '"late"')
        late.fail(task_id, row.lease_token, "late")
        write(exchange, late)
    assert db.execute("SELECT status::text, result FROM tasks").fetchone() == {
        "status": "CANCELLED",
        "result": None,
    }


def test_failure_backoff_with_jitter_then_dead_letter(db: psycopg.Connection, database_url: str):
    (task_id,) = insert_tasks(db, 1, retry_delay=10, max_retries=3)
    # attempt 3 hits the 30 s cap: 30 * (0.75..1.25)
    with claim_connection(database_url, max_retry_delay=30) as exchange:
        for attempt, (low, high) in enumerate([(7.5, 12.5), (15, 25), (22.5, 37.5)], start=1):
            db.execute("UPDATE tasks SET run_at = now() WHERE id = %s", [task_id])
            (row,) = claim(exchange, 1)
            assert row.attempts == attempt
            failure = Outcomes()
            failure.fail(task_id, row.lease_token, f"boom {attempt}")
            assert write(exchange, failure) == {task_id: "RETRYING"}
            wait = db.execute("SELECT run_at - now() AS d, error FROM tasks").fetchone()
            assert timedelta(seconds=low) <= wait["d"] <= timedelta(seconds=high)
            assert wait["error"] == f"boom {attempt}"
        db.execute("UPDATE tasks SET run_at = now()")
        (row,) = claim(exchange, 1)
        failure = Outcomes()
        failure.fail(task_id, row.lease_token, "final")
        assert write(exchange, failure) == {task_id: "FAILED"}
    dead = db.execute("SELECT task_id, attempts, error FROM dead_letters").fetchall()
    assert dead == [{"task_id": task_id, "attempts": 4, "error": "final"}]
    assert db.execute("SELECT completed_at IS NOT NULL AS c FROM tasks").fetchone()["c"]


def test_release_does_not_count_the_attempt(db: psycopg.Connection, database_url: str):
    fresh, retried = insert_tasks(db, 1), insert_tasks(db, 1, status="RETRYING", attempts=1)
    with claim_connection(database_url) as exchange:
        rows = claim(exchange, 2)
        back = Outcomes()
        for row in rows:
            back.release(row.id, row.lease_token)
        write(exchange, back)
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
    with claim_connection(database_url, "gone") as exchange:
        claim(exchange, 2)
    assert settle_worker_tasks(db, "gone", failed={running: "killed"}) == 2
    rows = db.execute("SELECT id, status::text, attempts, error FROM tasks ORDER BY id").fetchall()
    assert rows == [
        {"id": running, "status": "FAILED", "attempts": 1, "error": "killed"},
        {"id": queued, "status": "PENDING", "attempts": 0, "error": None},
    ]


def test_a_new_claim_connection_hands_back_orphans_but_keeps_what_it_holds(db, database_url):
    kept, orphan = insert_tasks(db, 2)
    with claim_connection(database_url, "w") as first:
        claim(first, 2)  # then the reply of a claim is lost: the child saw only one row
    with claim_connection(database_url, "w", held=lambda: {kept}):
        rows = db.execute("SELECT id, status::text, attempts FROM tasks ORDER BY id").fetchall()
    assert rows == [
        {"id": kept, "status": "PROCESSING", "attempts": 1},
        {"id": orphan, "status": "PENDING", "attempts": 0},  # handed back, not counted
    ]


def test_a_lost_exchange_is_sent_again_on_a_new_connection(db, database_url) -> None:
    first, second, *more = insert_tasks(db, 4)
    with claim_connection(database_url, held=lambda: {second}) as exchange:
        rows = claim(exchange, 2)
        done = Outcomes()
        done.complete(rows[0].id, rows[0].lease_token, '"ok"')
        db.execute("SELECT pg_terminate_backend(%s)", [exchange.conn.info.backend_pid])
        exchange.send(done, 2)  # the server is gone; the reply shows it
        reply = exchange.receive()
        assert reply.failed == {} and [r.id for r in reply.rows] == more
    states = {r["id"]: r["status"] for r in db.execute("SELECT id, status::text FROM tasks")}
    assert states == {first: "COMPLETED", second: "PROCESSING", **dict.fromkeys(more, "PROCESSING")}


def test_heartbeat_extends_only_live_workers(db: psycopg.Connection, database_url: str) -> None:
    insert_tasks(db, 2)
    for worker_id in ("live", "dead"):
        with claim_connection(database_url, worker_id, lease_seconds=1) as exchange:
            claim(exchange, 1)
    db.execute(
        queries["register_worker"],
        {"id": "live", "hostname": "h", "pid": 1, "queues": ["default"], "concurrency": 1},
    )
    extend_leases(db, ["live"], 60)
    leases = db.execute(
        "SELECT worker_id, lease_expires_at - now() > interval '30 s' AS long FROM tasks"
    ).fetchall()
    assert {r["worker_id"]: r["long"] for r in leases} == {"live": True, "dead": False}
    assert db.execute("SELECT running FROM live_workers").fetchone()["running"] == 1


def test_heartbeat_skips_a_row_another_transaction_holds(db, database_url: str) -> None:
    # Waiting for it deadlocked with completion batches that lock rows in another order.
    held, free = insert_tasks(db, 2)
    with claim_connection(database_url, "live", lease_seconds=1) as exchange:
        claim(exchange, 2)
    with psycopg.connect(database_url, autocommit=True) as other, other.transaction():
        other.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", [held])
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as beat:
            beat.execute("SET lock_timeout = '5s'")  # a wait would fail here, not hang
            extend_leases(beat, ["live"], 60)
    leases = db.execute(
        "SELECT id, lease_expires_at - now() > interval '30 s' AS long FROM tasks"
    ).fetchall()
    assert {r["id"]: r["long"] for r in leases} == {held: False, free: True}


@pytest.mark.parametrize("limit", [0, 5])
def test_exchange_writes_and_claims_in_one_transaction(
    db: psycopg.Connection, database_url: str, limit: int
) -> None:
    ids = insert_tasks(db, 3)
    with claim_connection(database_url, max_retry_delay=60) as exchange:
        (row,) = claim(exchange, 1)
        done = Outcomes()
        done.complete(row.id, row.lease_token, '{"n": 1}')
        exchange.send(done, limit)
        reply = exchange.receive()
        assert reply.outcomes is done and reply.failed == {}
    assert [r.id for r in reply.rows] == (ids[1:] if limit else [])
    assert db.execute("SELECT result FROM tasks WHERE id = %s", [ids[0]]).fetchone() == {
        "result": {"n": 1}
    }


def test_claim_connection_is_dict_rows(database_url: str) -> None:
    with connect(database_url) as conn:
        assert conn.row_factory is dict_row and conn.autocommit


def test_exchange_commits_before_its_reply_is_read(db: psycopg.Connection, database_url) -> None:
    ids = insert_tasks(db, 3, priority=1)
    first = insert_tasks(db, 1, priority=9)
    with claim_connection(database_url) as exchange:
        exchange.send(Outcomes(), 3)
        assert exchange.busy and exchange.claiming == 3
        # The worker runs tasks now; the server commits without waiting for it.
        wait_for(lambda: status_counts(db).get("PROCESSING") == 3, 5, "claim committed")
        reply = exchange.receive()
        assert not exchange.busy and reply.failed == {}
        assert [r.id for r in reply.rows] == [*first, *ids[:2]]  # claim order
        assert json.loads(reply.rows[0].payload) == {} and reply.rows[0].attempts == 1
        assert exchange.conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}  # usable again


def test_exchange_is_one_transaction_even_on_error(db: psycopg.Connection, database_url):
    ids = insert_tasks(db, 2)
    with claim_connection(database_url) as exchange:
        (row,) = claim(exchange, 1)
        bad = Outcomes()
        bad.complete(row.id, row.lease_token, "{not json")
        exchange.send(bad, 5)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            exchange.receive()
        assert not exchange.busy
        # Rolled back whole: the claim in the same exchange did not happen.
        assert status_counts(db) == {"PROCESSING": 1, "PENDING": 1}
        good = Outcomes()
        good.complete(row.id, row.lease_token, '"ok"')
        exchange.send(good, 5)
        rows = exchange.receive().rows
    assert [r.id for r in rows] == ids[1:]
    assert status_counts(db) == {"COMPLETED": 1, "PROCESSING": 1}


def test_the_claim_is_prepared_once_per_connection_and_again_after_an_abort(db, database_url):
    ids = insert_tasks(db, 3)

    def prepared(exchange) -> list[str]:
        # psycopg's own (prepare_threshold 0) are _pg3_*; the pipeline's carry the query's name
        rows = exchange.conn.execute(
            "SELECT name FROM pg_prepared_statements WHERE name NOT LIKE '\\_pg3\\_%'"
        )
        return [r["name"] for r in rows]

    with claim_connection(database_url) as exchange:
        bad = Outcomes()
        bad.complete(ids[0], 1, "{not json")
        exchange.send(bad, 1)  # the claim's Parse comes after the failing write: aborted too
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            exchange.receive()
        assert prepared(exchange) == []
        assert [r.id for r in claim(exchange, 1)] == ids[:1]  # parsed now
        assert [r.id for r in claim(exchange, 2)] == ids[1:]  # by name
        assert sorted(prepared(exchange)) == ["claim_tasks", "relax_claim_commit"]
        assert claim(exchange, 1) == []


def test_a_pooled_claim_connection_prepares_nothing(db, database_url):
    # Through a transaction pool the next pipeline may reach another server: no Parse at all.
    ids = insert_tasks(db, 2)
    with claim_connection(database_url, database_pooled=True) as exchange:
        assert [r.id for r in claim(exchange, 1)] == ids[:1]
        assert [r.id for r in claim(exchange, 1)] == ids[1:]
        prepared = exchange.conn.execute("SELECT count(*) AS n FROM pg_prepared_statements")
        assert prepared.fetchone()["n"] == 0


def test_array_parameters_survive_quotes_and_backslashes(db, database_url: str) -> None:
    (task_id,) = insert_tasks(db, 1, max_retries=0)
    error = 'Bad "quote" \\ back\\slash, {brace} NULL'
    with claim_connection(database_url) as exchange:
        (row,) = claim(exchange, 1)
        failure = Outcomes()
        failure.fail(task_id, row.lease_token, error)
        assert write(exchange, failure) == {task_id: "FAILED"}
    assert db.execute("SELECT error FROM tasks").fetchone() == {"error": error}


def test_a_frozen_server_is_given_up_on_after_the_reply_timeout(db, database_url):
    import os
    import signal
    import time

    insert_tasks(db, 3)
    with claim_connection(database_url) as exchange:
        exchange.pipe.reply_timeout = 0.5
        conn = exchange.conn
        backend = conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)  # the host freezes: no reply, no FIN
        try:
            started = time.monotonic()
            exchange.pipe.send(exchange.statements(Outcomes(), 3))
            with pytest.raises(psycopg.OperationalError, match="no reply"):
                exchange.pipe.receive()
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


# Test-local, in this test's own database: a deferred trigger that runs at the commit of
# every transaction updating tasks, notes the commit's synchronous_commit, and fails the
# commit while the test holds advisory lock 1402.
AT_COMMIT = """
CREATE TABLE test_commits (xid bigint PRIMARY KEY, synchronous_commit text);
CREATE FUNCTION test_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1402) THEN
        RAISE EXCEPTION 'commit refused';
    END IF;
    INSERT INTO test_commits VALUES (txid_current(), current_setting('synchronous_commit'))
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_at_commit AFTER UPDATE ON tasks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_at_commit();
"""


def test_a_commit_that_fails_at_the_sync_raises_and_claims_nothing(db, database_url) -> None:
    insert_tasks(db, 1)
    db.execute(AT_COMMIT)
    db.execute("SELECT pg_advisory_lock(1402)")
    with claim_connection(database_url, "w") as exchange:
        exchange.send(Outcomes(), 1)
        with pytest.raises(psycopg.errors.RaiseException, match="commit refused"):
            exchange.receive()  # the rows came, but their transaction rolled back
    assert status_counts(db) == {"PENDING": 1}


def test_a_claim_alone_commits_without_the_flush_and_outcomes_with_it(db, database_url):
    insert_tasks(db, 2)
    db.execute(AT_COMMIT)
    with claim_connection(database_url, "w") as exchange:
        (first,) = claim(exchange, 1)  # an idle pickup: nothing to write
        done = Outcomes()
        done.complete(first.id, first.lease_token, None)
        exchange.send(done, 1)  # an outcome and the next claim: one durable commit
        assert len(exchange.receive().rows) == 1
    commits = [row["synchronous_commit"] for row in db.execute("TABLE test_commits ORDER BY xid")]
    assert commits == ["off", "on"]
    assert status_counts(db) == {"COMPLETED": 1, "PROCESSING": 1}
