"""Reaper, leader election, periodic ticks and clean-up against a real Postgres."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.helpers import insert_tasks, wait_for
from tests.worker_helpers import claim, claim_connection
from worker.builtins import cleanup_old_tasks
from worker.config import PeriodicSchedule, WorkerConfig, check_schedule
from worker.db import connect
from worker.maintenance import Maintenance, enqueue_tick, latest_tick
from worker.registry import TaskContext

EVERY_SECOND = PeriodicSchedule(name="tick", schedule="* * * * * *", task_type="noop")


def config(url: str, **changes: object) -> WorkerConfig:
    return replace(WorkerConfig(database_url=url, reaper_interval=0.05), **changes)


def test_reaper_returns_expired_tasks_counting_the_attempt(db: psycopg.Connection, database_url):
    again, spent, alive = insert_tasks(db, 3, max_retries=1, retry_delay=0)
    db.execute("UPDATE tasks SET max_retries = 0 WHERE id = %s", [spent])
    for worker_id, count in (("lost", 2), ("alive", 1)):
        with claim_connection(database_url, worker_id) as exchange:
            claim(exchange, count)
    db.execute(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 s' WHERE worker_id = 'lost'"
    )
    assert db.execute("SELECT count(*) AS n FROM stuck_tasks").fetchone()["n"] == 2
    leader = Maintenance(config(database_url))
    try:
        leader.step()
        assert leader.is_leader
    finally:
        leader.stop()
    rows = db.execute("SELECT id, status::text, attempts, error FROM tasks ORDER BY id").fetchall()
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [
        (again, "RETRYING", 1), (spent, "FAILED", 1), (alive, "PROCESSING", 1),
    ]  # fmt: skip
    assert rows[0]["error"] == "lease expired: worker lost lost"
    assert db.execute("SELECT task_id FROM dead_letters").fetchall() == [{"task_id": spent}]


def test_maintenance_runs_its_rounds_in_a_thread_until_stopped(db, database_url) -> None:
    insert_tasks(db, 1, max_retries=1, retry_delay=0)
    with claim_connection(database_url, "lost") as exchange:
        claim(exchange, 1)
    maintenance = Maintenance(config(database_url))
    maintenance.start()
    try:
        db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 s'")
        wait_for(lambda: db.execute("SELECT status::text AS s FROM tasks").fetchone()["s"]
                 == "RETRYING", 5, "the reaper's round")  # fmt: skip
        assert maintenance.is_leader
    finally:
        maintenance.stop()
    assert not maintenance.thread.is_alive() and not maintenance.is_leader
    # Leadership released: the lock goes when the server has ended the closed session.
    held = (
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
    )
    wait_for(lambda: db.execute(held).fetchone()["n"] == 0, 10, "the leader lock to go")


def test_one_leader_and_takeover_when_it_dies(db: psycopg.Connection, database_url: str):
    first, second = Maintenance(config(database_url)), Maintenance(config(database_url))
    try:
        first.step()
        second.step()
        assert first.is_leader and not second.is_leader
        # The server probes the lock's client: a vanished host frees the lock in seconds.
        show = first.leadership.conn.execute("SHOW tcp_keepalives_idle").fetchone()
        assert show == {"tcp_keepalives_idle": "5"}
        db.execute("SELECT pg_terminate_backend(%s)", [first.leadership.conn.info.backend_pid])
        first.leadership.next_check = 0
        first.step()  # notices its lock connection is gone
        assert not first.is_leader

        def second_leads() -> bool:
            second.next_attempt = 0
            second.step()
            return second.is_leader

        wait_for(second_leads, 5, "takeover")
        first.next_attempt = 0
        first.step()
        assert not first.is_leader
    finally:
        first.stop()
        second.stop()


def test_each_tick_is_enqueued_once_by_racing_leaders(db: psycopg.Connection, database_url):
    tick = datetime(2030, 1, 1, tzinfo=UTC)
    results: list[int | None] = []

    def race() -> None:
        with connect(database_url) as conn:
            results.append(enqueue_tick(conn, EVERY_SECOND, tick))

    threads = [threading.Thread(target=race) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    tasks = db.execute("SELECT id, task_type, user_id, metadata FROM tasks").fetchall()
    assert tasks == [{"id": winners[0], "task_type": "noop", "user_id": None,
                      "metadata": {"periodic": "tick", "tick_at": tick.isoformat()}}]  # fmt: skip
    assert db.execute("SELECT task_id FROM periodic_ticks").fetchone()["task_id"] == winners[0]


def test_periodic_enqueuer_follows_the_cron(db: psycopg.Connection, database_url: str) -> None:
    leader = Maintenance(config(database_url, periodic=(EVERY_SECOND,)))
    try:
        now = datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
        for step in range(4):  # four calls within two distinct seconds
            leader.enqueue_periodic(now + timedelta(seconds=step // 2, milliseconds=step))
    finally:
        leader.stop()
    ticks = db.execute("SELECT tick_at FROM periodic_ticks ORDER BY 1").fetchall()
    assert [t["tick_at"].second for t in ticks] == [0, 1]
    assert latest_tick("0 0 * * *", now) == datetime(2030, 1, 1, tzinfo=UTC)
    # six fields: seconds first (Quartz, Spring, node-cron), not croniter's seconds-last
    assert latest_tick("30 59 11 * * *", now) == datetime(2030, 1, 1, 11, 59, 30, tzinfo=UTC)
    assert latest_tick("*/20 * * * * *", now) == datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_periodic_ticks_follow_the_database_clock_in_utc(db, database_url) -> None:
    # The database's sessions run 14 hours ahead (UTC+14): the ticks are still UTC instants
    # of the database's clock, the same for every host whatever its own clock and zone.
    db.execute("SELECT set_config('timezone', 'Pacific/Kiritimati', false)")
    db.execute(f"ALTER DATABASE {db.info.dbname} SET timezone TO 'Pacific/Kiritimati'")
    leader = Maintenance(config(database_url, periodic=(EVERY_SECOND,)))
    try:
        wait_for(lambda: leader.step() or leader.is_leader, 5, "leadership")
        assert leader.database_time().utcoffset() == timedelta(0)
        wait_for(lambda: leader.step() or db.execute("SELECT 1 FROM periodic_ticks").fetchone(),
                 5, "a tick")  # fmt: skip
        row = db.execute("SELECT min(tick_at) AS tick, now() AS now FROM periodic_ticks").fetchone()
        assert timedelta(0) <= row["now"] - row["tick"] < timedelta(seconds=5)
    finally:
        leader.stop()


def test_schedule_validation() -> None:
    import pytest

    from taskq.settings import SettingError

    assert check_schedule({"name": "c", "schedule": "0 0 * * *", "task_type": "cleanup_old_tasks"})
    for bad in (
        {"name": "x", "schedule": "not cron", "task_type": "noop"},
        {"name": "x", "schedule": "* * * * * * 2030", "task_type": "noop"},  # a year field
        {"name": "x", "schedule": "60 * * * * *", "task_type": "noop"},  # second 60
        {"name": "x", "schedule": "* * * * *", "task_type": "nope"},
        {"name": "x", "schedule": "* * * * *", "task_type": "compute", "payload": {}},
        {"name": "x", "schedule": "* * * * *", "task_type": "noop", "colour": "red"},
    ):
        with pytest.raises(SettingError):
            check_schedule(bad)


def test_deleting_tasks_probes_their_history_and_search_documents_by_key(database_url):
    # Migration 0014: the delete trigger finds a task's rows by the array of the deleted
    # ids. As a join with old_rows, the plan (cached at the first call's size) could hash
    # a scan of all of task_search or task_history: 7 s a clean-up window at 10M tasks.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO tasks (title) SELECT 't ' || i FROM generate_series(1, 20000) i")
        conn.execute("ANALYZE task_search")
        conn.execute("ANALYZE task_history")
        plans: list[str] = []
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error:
            pytest.skip("this Postgres has no auto_explain")
        for setting in ("log_min_duration = 0", "log_nested_statements = on",
                        "log_level = notice"):  # fmt: skip
            conn.execute(f"SET auto_explain.{setting}")
        for _ in range(2):  # the second call runs the plan the first one cached
            conn.execute(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 10)"
            )
    searches = [p for p in plans if "Delete on task_search" in p]
    histories = [p for p in plans if "Delete on task_history" in p]
    assert len(searches) == len(histories) == 2, plans
    for plan in searches + histories:
        # No join at all; the index of the table (of today's partition) finds the rows.
        assert "Join" not in plan and "Index Scan" in plan, plan
    for plan in searches:
        assert "Seq Scan" not in plan, plan


def test_cleanup_deletes_old_finished_tasks_in_batches(db: psycopg.Connection, database_url):
    old = insert_tasks(db, 25, status="COMPLETED")
    old_failed = insert_tasks(db, 5, status="FAILED")
    recent = insert_tasks(db, 3, status="COMPLETED")
    waiting = insert_tasks(db, 2)
    db.execute("UPDATE tasks SET completed_at = now() - interval '40 days',"
               " created_at = now() - interval '41 days' WHERE id = ANY(%s)",
               [old + old_failed])  # fmt: skip
    db.execute("UPDATE tasks SET completed_at = now() WHERE id = ANY(%s)", [recent])
    db.execute("UPDATE tasks SET created_at = now() - interval '60 days' WHERE id = ANY(%s)",
               [waiting])  # fmt: skip
    ctx = TaskContext(task_id=0, attempt=1, queue="default", task_type="cleanup_old_tasks",
                      worker_id="t", database_url=database_url)  # fmt: skip
    assert cleanup_old_tasks({"days": None, "batch_size": 7}, ctx) == {"deleted": 30, "days": 30}
    left = db.execute("SELECT id FROM tasks ORDER BY id").fetchall()
    assert [r["id"] for r in left] == recent + waiting
    orphans = db.execute(
        "SELECT count(*) AS n FROM task_history h WHERE NOT EXISTS "
        "(SELECT 1 FROM tasks t WHERE t.id = h.task_id)"
    ).fetchone()["n"]
    assert orphans == 0


# ------------------------------------------------------------- queue index rebuilds


def rebuild(database_url: str, **payload: float) -> dict:
    from worker.reindex import rebuild_queue_indexes_task

    ctx = TaskContext(task_id=0, attempt=1, queue="default", task_type="rebuild_queue_indexes",
                      worker_id="t", database_url=database_url)  # fmt: skip
    return rebuild_queue_indexes_task({"min_mb": 64.0, "ratio": 4.0, **payload}, ctx)


def index_state(db: psycopg.Connection) -> dict[str, tuple[int, bool]]:
    """Every index of tasks: its size and whether it is valid."""
    rows = db.execute(
        "SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes, i.indisvalid AS valid"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'tasks'::regclass"
    ).fetchall()
    return {r["name"]: (r["bytes"], r["valid"]) for r in rows}


def test_a_drained_backlogs_claim_index_is_rebuilt_while_claims_go_on(db, database_url):
    insert_tasks(db, 60_000)
    db.execute("UPDATE tasks SET status = 'COMPLETED', completed_at = now()")  # drained
    db.execute("VACUUM (ANALYZE) tasks")
    waiting = insert_tasks(db, 400)
    bloated = index_state(db)["ix_tasks_claim"][0]
    assert bloated > 1.5 * 2**20  # the backlog's pages stay, nearly all of them empty
    assert rebuild(database_url)["rebuilt"] == []  # below min_mb: left alone

    claimed, errors, stop = [], [], threading.Event()

    def claim_all() -> None:  # a worker's claims, through the whole rebuild and after it
        deadline = time.monotonic() + 60
        try:
            with claim_connection(database_url, "w") as exchange:
                while (not stop.is_set() or len(claimed) < len(waiting)) and (
                    time.monotonic() < deadline
                ):
                    claimed.extend(row.id for row in claim(exchange, 5))
        except Exception as exc:  # the test reports it
            errors.append(exc)

    claimer = threading.Thread(target=claim_all, daemon=True)
    claimer.start()
    try:
        done = rebuild(database_url, min_mb=1)
    finally:
        stop.set()
        claimer.join(timeout=60)
    assert errors == [] and sorted(claimed) == waiting
    (claim_index,) = done["rebuilt"]
    assert claim_index["index"] == "ix_tasks_claim" and claim_index["before_bytes"] == bloated
    assert claim_index["after_bytes"] < bloated / 20
    assert done["dropped_invalid"] == [] and set(done["checked"]) == {
        "ix_tasks_claim",
        "ix_tasks_lease",
    }
    state = index_state(db)
    assert all(valid for _, valid in state.values()) and "ix_tasks_claim" in state
    assert not any("_cc" in name for name in state)
    assert rebuild(database_url, min_mb=1)["rebuilt"] == []  # nothing left to gain


def test_what_an_interrupted_rebuild_left_is_dropped(db, database_url):
    insert_tasks(db, 2)  # one queue: a unique index on it fails half built, as a killed run
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_tasks_claim_ccnew ON tasks (queue)")
    assert index_state(db)["ix_tasks_claim_ccnew"][1] is False  # invalid, yet kept up to date
    done = rebuild(database_url)
    assert done["dropped_invalid"] == ["ix_tasks_claim_ccnew"] and done["rebuilt"] == []
    assert "ix_tasks_claim_ccnew" not in index_state(db)


def test_a_rebuild_runs_through_a_transaction_pool(db, database_url, pgbouncer_port):
    from bench.pgbouncer import pooled_url
    from worker.reindex import rebuild_queue_indexes

    insert_tasks(db, 10)
    with connect(pooled_url(database_url, pgbouncer_port), "taskq-task", pooled=True) as conn:
        done = rebuild_queue_indexes(conn, 0, 0)  # every queue index, whatever its size
    assert {r["index"] for r in done["rebuilt"]} == {"ix_tasks_claim", "ix_tasks_lease"}
    assert all(valid for _, valid in index_state(db).values())
