"""The migrated schema: triggers, notifications, models in step with migrations."""

from __future__ import annotations

import json

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from app.models import metadata
from taskq.migrate import downgrade, upgrade
from taskq.settings import sqlalchemy_url


def make_user(db, name: str = "ann") -> int:
    return db.execute(
        "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, 'x') RETURNING id",
        (name, f"{name}@example.com"),
    ).fetchone()["id"]


def test_models_match_migrations(database_url):
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    # COMMENT ON lives in the migration only: psql users read it, Python does not.
    flat = [d for group in diff for d in (group if isinstance(group, list) else [group])]
    assert [d for d in flat if "comment" not in d[0]] == []


def test_downgrade_then_upgrade(database_url, db):
    downgrade(database_url)
    tables = db.execute("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")
    assert tables.fetchone()["n"] == 1  # alembic_version only
    upgrade(database_url)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0


def test_psql_update_writes_history_and_notifies(database_url, db):
    user = make_user(db)
    task = db.execute(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id", (user,)
    ).fetchone()["id"]
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq_events")
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", (task,))
        note = next(listener.notifies(timeout=5, stop_after=1))
    payload = json.loads(note.payload)
    history = db.execute(
        "SELECT id, from_status, to_status FROM task_history WHERE task_id = %s ORDER BY id",
        (task,),
    ).fetchall()
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "PENDING"),
        ("PENDING", "CANCELLED"),
    ]
    assert payload == {"s": "CANCELLED", "e": [[history[-1]["id"], task, user]]}


def test_batch_insert_wakes_each_queue_once(database_url, db):
    user = make_user(db)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskq_wakeup")
        with db.transaction():
            for queue in ("a", "b", "a"):
                db.execute(
                    "INSERT INTO tasks (user_id, title, queue) SELECT %s, 't', %s"
                    " FROM generate_series(1, 300)",
                    (user, queue),
                )
        wakes = [n.payload for n in listener.notifies(timeout=1)]
    assert sorted(wakes) == ["a", "b"]


def test_failed_task_enters_dead_letters(db):
    user = make_user(db)
    task = db.execute(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id", (user,)
    ).fetchone()["id"]
    db.execute("UPDATE tasks SET status = 'FAILED', error = 'boom' WHERE id = %s", (task,))
    dead = db.execute("SELECT task_id, error FROM dead_letters").fetchall()
    assert dead == [{"task_id": task, "error": "boom"}]


def test_every_table_and_column_is_commented(db):
    missing = db.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v')
              AND c.relname <> 'alembic_version' AND obj_description(c.oid) IS NULL"""
    ).fetchall()
    assert missing == []


def test_0005_places_old_history_first_without_rewriting_the_table(database_url, db):
    downgrade(database_url, "0004")
    user = make_user(db)
    old = db.execute(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id", (user,)
    ).fetchone()["id"]
    filenode = db.execute("SELECT pg_relation_filenode('task_history') AS f").fetchone()["f"]
    upgrade(database_url)
    assert (
        db.execute("SELECT pg_relation_filenode('task_history') AS f").fetchone()["f"] == filenode
    )
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = %s", (old,))
    rows = db.execute(
        "SELECT xact_id::text AS xact_id FROM task_history WHERE task_id = %s ORDER BY id", (old,)
    ).fetchall()
    assert rows[0]["xact_id"] == "0"  # written before 0005: the oldest place
    assert int(rows[1]["xact_id"]) > 0
