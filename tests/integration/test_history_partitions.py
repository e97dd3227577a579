"""task_history partitioned by day (migration 0010): the switch, the leader's partitions,
retention by whole days, and the all-tasks order across partitions."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest

from sql import queries
from taskq.migrate import downgrade, upgrade
from tests.helpers import insert_tasks, make_user, wait_for
from worker.config import WorkerConfig
from worker.db import connect
from worker.maintenance import HISTORY_DAYS_AHEAD, Maintenance, maintain_history_partitions

PARTITIONS = "SELECT partition, is_default FROM task_history_partitions"


def partitions(db: psycopg.Connection) -> list[str]:
    """Partition names, oldest range first, the default last."""
    return [row["partition"] for row in db.execute(PARTITIONS).fetchall()]


def partition_of(db: psycopg.Connection, history_id: int) -> str:
    """The partition a history row lives in."""
    return db.execute(
        "SELECT tableoid::regclass::text AS p FROM task_history WHERE id = %s", (history_id,)
    ).fetchone()["p"]


def days_from_today(db: psycopg.Connection, days: int) -> str:
    """The partition name of the UTC day ``days`` from today."""
    return db.execute(
        "SELECT 'task_history_' || to_char(date_trunc('day', now(), 'UTC') AT TIME ZONE 'UTC'"
        " + make_interval(days => %s), 'YYYYMMDD') AS name",
        (days,),
    ).fetchone()["name"]


def test_the_old_history_becomes_the_past_partition_without_a_rewrite(database_url, db):
    downgrade(database_url, "0008")
    user = make_user(db)
    tasks = insert_tasks(db, 50, user_id=user)
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = ANY(%s)", (tasks[:10],))
    before = db.execute("SELECT max(id) AS id, count(*) AS n FROM task_history").fetchone()
    filenode = db.execute("SELECT pg_relation_filenode('task_history') AS f").fetchone()["f"]

    upgrade(database_url)

    past = db.execute(
        "SELECT pg_relation_filenode('taskq_history.task_history_past') AS f"
    ).fetchone()["f"]
    assert past == filenode  # the same file: attached, not copied
    assert db.execute("SELECT count(*) AS n FROM task_history").fetchone()["n"] == before["n"]
    # Ids go on from the same sequence; the new row lands in a partition of the new table.
    db.execute("UPDATE tasks SET status = 'FAILED', error = 'x' WHERE id = %s", (tasks[0],))
    new = db.execute("SELECT max(id) AS id FROM task_history").fetchone()["id"]
    assert new == before["id"] + 1
    # The views read the partitioned table (they were re-made from their definitions).
    failures = db.execute("SELECT history_id FROM recent_failures").fetchall()
    assert failures == [{"history_id": new}]
    assert db.execute("SELECT count(*) AS n FROM task_history_partitions").fetchone()["n"] >= 3


def test_the_key_holds_the_partition_key_and_one_sequence_gives_the_ids(db):
    # The key holds the partition key; ids stay unique because one sequence gives them.
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.execute("INSERT INTO task_history (task_id, to_status, attempt, created_at)"
                   " VALUES (1, 'PENDING', 0, NULL)")  # fmt: skip
    owner = db.execute("SELECT pg_get_serial_sequence('task_history', 'id') AS seq").fetchone()[
        "seq"
    ]
    assert owner == "public.task_history_id_seq"


def test_days_ahead_are_created_and_rows_the_default_caught_move_in(db):
    made = partitions(db)
    assert days_from_today(db, HISTORY_DAYS_AHEAD) in made
    assert made[-1] == "task_history_default"
    # A row written for a day no partition covers yet lands in the default partition...
    far = HISTORY_DAYS_AHEAD + 2
    row = db.execute(
        "INSERT INTO task_history (task_id, to_status, attempt, created_at)"
        " VALUES (1, 'PENDING', 0, now() + make_interval(days => %s)) RETURNING id, xact_id",
        (far,),
    ).fetchone()
    assert partition_of(db, row["id"]) == "taskq_history.task_history_default"
    # ...and moves, with its id and place, into that day's partition once it is created.
    created = db.execute(queries["add_history_partitions"], {"days_ahead": far}).fetchone()
    assert created["made"] == 2
    assert partition_of(db, row["id"]) == f"taskq_history.{days_from_today(db, far)}"
    again = db.execute("SELECT xact_id FROM task_history WHERE id = %s", (row["id"],)).fetchone()
    assert again["xact_id"] == row["xact_id"]
    assert db.execute(queries["add_history_partitions"], {"days_ahead": far}).fetchone() == {
        "made": 0
    }


def test_retention_drops_whole_days_and_keeps_the_rest(db):
    user = make_user(db)
    (task,) = insert_tasks(db, 1, user_id=user)
    ahead = db.execute(
        "INSERT INTO task_history (task_id, user_id, to_status, attempt, created_at)"
        " VALUES (%s, %s, 'PENDING', 0, now() + interval '3 days') RETURNING id",
        (task, user),
    ).fetchone()["id"]
    # Seen from three days on (a negative horizon): the past and the days before go whole.
    dropped = db.execute(queries["drop_history_partitions"], {"keep_days": -3}).fetchone()
    assert dropped["dropped"] >= 1
    left = partitions(db)
    assert "task_history_past" not in left
    assert "task_history_default" in left
    rows = db.execute("SELECT id FROM task_history").fetchall()
    assert rows == [{"id": ahead}]
    # Writing goes on: today has no partition now, so the default takes today's rows.
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = %s", (task,))
    newest = db.execute("SELECT max(id) AS id FROM task_history").fetchone()["id"]
    assert partition_of(db, newest) == "taskq_history.task_history_default"


def test_the_all_tasks_order_and_resume_run_across_partitions(db):
    user = make_user(db)
    (task,) = insert_tasks(db, 1, user_id=user)
    for days in (2, 3):  # rows of later days, in partitions of their own
        db.execute(
            "INSERT INTO task_history (task_id, user_id, to_status, attempt, created_at)"
            " VALUES (%s, %s, 'PROCESSING', 1, now() + make_interval(days => %s))",
            (task, user, days),
        )
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = %s", (task,))
    every = db.execute(
        "SELECT xact_id, id, tableoid::regclass::text AS p FROM task_history ORDER BY xact_id, id"
    ).fetchall()
    assert len({row["p"] for row in every}) == 3
    start = {"xact_id": "0", "after": 0, "limit": 1000}
    # Final once every older transaction on the server has ended (the snapshot's xmin).

    def final_rows() -> list | None:
        rows = db.execute(queries["all_events_since"], start).fetchall()
        return rows if len(rows) == len(every) else None

    replay = wait_for(final_rows, 30, "the rows to become final")
    assert [(r["xact_id"], r["id"]) for r in replay] == [(r["xact_id"], r["id"]) for r in every]
    middle = every[1]
    rest = db.execute(
        queries["user_events_since"],
        {"user_id": user, "xact_id": middle["xact_id"], "after": middle["id"], "limit": 1000},
    ).fetchall()
    assert [r["id"] for r in rest] == [r["id"] for r in every[2:]]  # no gap, no duplicate
    for row in every:
        place = db.execute(queries["event_position"], {"id": row["id"]}).fetchone()
        assert (place["xact_id"], place["id"]) == (row["xact_id"], row["id"])


def test_the_leader_makes_missing_days_and_waits_out_a_busy_table(database_url, db):
    last = days_from_today(db, HISTORY_DAYS_AHEAD)
    db.execute(f"DROP TABLE taskq_history.{last}")
    config = replace(WorkerConfig(database_url=database_url, reaper_interval=0.05))
    leader = Maintenance(config)
    try:
        leader.step()
        assert leader.is_leader
        assert last in partitions(db)
    finally:
        leader.stop()
    # A reader that keeps task_history open: the drop gives up after its lock_timeout,
    # the writers never queue behind it for long, and the caller hears why.
    holding, release = threading.Event(), threading.Event()

    def reader() -> None:
        with psycopg.connect(database_url) as conn:
            conn.execute("SELECT count(*) FROM task_history")
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        holding.wait(10)
        with (
            connect(database_url) as conn,
            pytest.raises(psycopg.errors.LockNotAvailable),
        ):
            maintain_history_partitions(conn, -3)
        assert "task_history_past" in partitions(db)
    finally:
        release.set()
        thread.join()


def test_table_health_sums_the_partitions(db):
    insert_tasks(db, 20)
    rows = {r["table_name"]: r for r in db.execute("SELECT * FROM table_health").fetchall()}
    assert {"tasks", "task_history", "dead_letters"} <= rows.keys()
    assert rows["task_history"]["partitions"] == len(partitions(db))
    assert rows["tasks"]["table_bytes"] > 0 and rows["tasks"]["index_bytes"] > 0
    options = db.execute("SELECT reloptions FROM pg_class WHERE relname = 'tasks'").fetchone()
    assert "autovacuum_vacuum_scale_factor=0.01" in options["reloptions"]
