"""The migrated schema: triggers, notifications, models and views in step with migrations."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sqlalchemy import create_engine, pool

from sql import read_sql_file
from taskq.migrate import alembic_config, current_revision, downgrade, head_revision, upgrade
from taskq.models import metadata
from taskq.representation import DEFAULT_CALLBACK_EVENTS, EVENTS_FOR_STATUS
from taskq.settings import sqlalchemy_url
from tests.helpers import make_user

# The catalog of the public schema, as lists of rows a test can compare: what
# pg_dump --schema-only would print, minus Alembic's own bookkeeping table.
SCHEMA_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.reloptions, obj_description(c.oid, 'pg_class') AS comment
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%'
         ORDER BY c.relname""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid) AS default,
               col_description(c.oid, a.attnum) AS comment
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND a.attnum > 0
           AND NOT a.attisdropped AND c.relname <> 'alembic_version'
         ORDER BY c.relname, a.attnum""",
    "constraints": """
        SELECT conrelid::regclass::text AS relation, conname, pg_get_constraintdef(oid) AS def
          FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
           AND conrelid <> to_regclass('public.alembic_version')
         ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY indexname""",
    "triggers": """
        SELECT tgrelid::regclass::text AS relation, tgname, pg_get_triggerdef(oid) AS def
          FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
               pg_get_functiondef(p.oid) AS def, obj_description(p.oid, 'pg_proc') AS comment
          FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY viewname""",
    "types": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels,
               obj_description(t.oid, 'pg_type') AS comment
          FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
         WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.oid, t.typname ORDER BY 1""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, cycle
          FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1""",
}


def schema_of(url: str) -> dict[str, list[dict[str, Any]]]:
    """The public schema of the database at ``url``, section by section."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {name: conn.execute(query).fetchall() for name, query in SCHEMA_QUERIES.items()}


def schema_differences(got: dict, expected: dict) -> dict[str, dict[str, list]]:
    """Per section, the rows only one side has (empty: the same schema)."""
    differences = {}
    for name in SCHEMA_QUERIES:
        extra = [row for row in got[name] if row not in expected[name]]
        missing = [row for row in expected[name] if row not in got[name]]
        if extra or missing or got[name] != expected[name]:
            differences[name] = {"extra": extra, "missing": missing}
    return differences


def model_drift(url: str) -> list:
    """What Alembic autogenerate would change to make the database at ``url`` the models."""
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    # COMMENT ON lives in the migration only: psql users read it, Python does not.
    flat = [d for group in diff for d in (group if isinstance(group, list) else [group])]
    return [d for d in flat if "comment" not in d[0]]


def test_models_match_migrations(database_url):
    assert model_drift(database_url) == []


def test_every_revision_walks_up_and_down(empty_database_url):
    # One step at a time from an empty database: up to each revision, back down
    # to the one before (which must leave the schema exactly as it was there),
    # and up again (exactly as the first time).
    script = ScriptDirectory.from_config(alembic_config(empty_database_url))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions[-1] == head_revision()
    previous = "base"
    seen = {"base": schema_of(empty_database_url)}
    assert all(rows == [] for rows in seen["base"].values())
    for revision in revisions:
        upgrade(empty_database_url, revision)
        seen[revision] = schema_of(empty_database_url)
        assert seen[revision] != seen[previous], f"{revision} changed nothing"
        downgrade(empty_database_url, previous)
        assert current_revision(empty_database_url) == (None if previous == "base" else previous)
        after = schema_differences(schema_of(empty_database_url), seen[previous])
        assert after == {}, f"downgrade {revision} -> {previous}"
        upgrade(empty_database_url, revision)
        again = schema_differences(schema_of(empty_database_url), seen[revision])
        assert again == {}, f"upgrade {previous} -> {revision} again"
        previous = revision
    assert current_revision(empty_database_url) == head_revision()
    assert model_drift(empty_database_url) == []


def test_a_database_that_ran_0002_as_it_first_landed_ends_like_a_fresh_one(
    empty_database_url, database_url
):
    # 0002 as it landed (9653e0b) did not create taskq_enqueue_webhook_deliveries();
    # b781496 added it to the same revision. Whatever else that version made,
    # 0003 dropped and replaced, so such a database at 0004 is a fresh one without it.
    upgrade(empty_database_url, "0004")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION taskq_enqueue_webhook_deliveries(bigint[])")
    upgrade(empty_database_url)
    assert schema_differences(schema_of(empty_database_url), schema_of(database_url)) == {}


def test_views_at_head_are_the_ones_sql_views_sql_documents(db):
    # sql/views.sql created in a schema of its own, beside the migrated views.
    views = """
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid) AS definition,
               obj_description(c.oid, 'pg_class') AS comment
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'v' AND n.nspname IN ('public', 'documented')
         ORDER BY c.relname"""
    with db.transaction(force_rollback=True):
        db.execute("CREATE SCHEMA documented")
        db.execute("SET LOCAL search_path = documented, public")
        db.execute(read_sql_file("views.sql"))
        db.execute("SET LOCAL search_path = public")
        rows = db.execute(views).fetchall()
    by_schema: dict[str, dict] = {"public": {}, "documented": {}}
    for row in rows:
        by_schema[row["nspname"]][row["relname"]] = (row["definition"], row["comment"])
    assert by_schema["public"]
    assert by_schema["documented"] == by_schema["public"]


def test_webhook_trigger_sends_the_python_event_of_every_status(db):
    statuses = [r["s"] for r in db.execute("SELECT unnest(enum_range(NULL::task_status)) AS s")]
    assert sorted(EVENTS_FOR_STATUS) == sorted(statuses)
    every_event = sorted({e for events in EVENTS_FOR_STATUS.values() for e in events})
    subscriptions = [[event] for event in every_event] + [every_event, None]
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO tasks (title, status, callback_url, callback_events)"
            " VALUES (%(to)s, %(start)s, 'http://hooks.example/t', %(events)s)",
            [
                {
                    "to": to,
                    "start": "PROCESSING" if to == "PENDING" else "PENDING",
                    "events": events,
                }
                for to in statuses
                for events in subscriptions
            ],
        )
    # One statement moves every task to the status its title names.
    db.execute("UPDATE tasks SET status = title::task_status WHERE callback_url IS NOT NULL")
    rows = db.execute(
        """SELECT t.status, t.callback_events,
                  array_agg(w.event) FILTER (WHERE w.id IS NOT NULL) AS sent
             FROM tasks t LEFT JOIN webhook_deliveries w ON w.task_id = t.id
            WHERE t.callback_url IS NOT NULL GROUP BY t.id ORDER BY t.id"""
    ).fetchall()

    def python_event(status: str, subscribed: list[str] | None) -> list[str] | None:
        wanted = subscribed if subscribed is not None else DEFAULT_CALLBACK_EVENTS
        chosen = [e for e in EVENTS_FOR_STATUS[status] if e in wanted][:1]
        return chosen or None

    assert len(rows) == len(statuses) * len(subscriptions)
    assert [(r["status"], r["callback_events"], r["sent"]) for r in rows] == [
        (r["status"], r["callback_events"], python_event(r["status"], r["callback_events"]))
        for r in rows
    ]
    maps = db.execute(
        "SELECT s::text AS status, taskq_webhook_events(s) AS events"
        " FROM unnest(enum_range(NULL::task_status)) s"
    ).fetchall()
    assert {m["status"]: tuple(m["events"]) for m in maps} == EVENTS_FOR_STATUS


def test_downgrade_then_upgrade(database_url, db):
    downgrade(database_url)
    tables = db.execute("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")
    assert tables.fetchone()["n"] == 1  # alembic_version only
    upgrade(database_url)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0


def test_0006_gives_existing_deliveries_their_sender_and_not_a_stray(database_url, db):
    downgrade(database_url, "0005")
    user = make_user(db)
    task = db.execute(
        "INSERT INTO tasks (user_id, title, callback_url) "
        "VALUES (%s, 't', 'https://example.com/h') RETURNING id",
        (user,),
    ).fetchone()["id"]
    # A stray made before the delivery existed, guessing its id: not the sender.
    next_id = db.execute(
        "SELECT setval(seq, nextval(seq), false) AS id "
        "FROM pg_get_serial_sequence('webhook_deliveries', 'id') AS seq"
    ).fetchone()["id"]
    db.execute(
        "INSERT INTO tasks (title, task_type, payload, queue, created_at) "
        "VALUES ('stray', 'deliver_webhook', %s, 'webhooks', now() - interval '1 minute')",
        (Jsonb({"delivery_id": next_id}),),
    )
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE id = %s", (task,))
    sender = db.execute(
        "SELECT id FROM tasks WHERE title = %s", (f"webhook delivery {next_id}",)
    ).fetchone()
    upgrade(database_url)
    rows = db.execute("SELECT id, sender_task_id FROM webhook_deliveries").fetchall()
    assert rows == [{"id": next_id, "sender_task_id": sender["id"]}]


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


def test_0008_places_old_history_first_without_rewriting_the_table(database_url, db):
    downgrade(database_url, "0007")
    user = make_user(db)
    old = db.execute(
        "INSERT INTO tasks (user_id, title) VALUES (%s, 't') RETURNING id", (user,)
    ).fetchone()["id"]
    filenode = db.execute("SELECT pg_relation_filenode('task_history') AS f").fetchone()["f"]
    upgrade(database_url, "0008")
    assert (
        db.execute("SELECT pg_relation_filenode('task_history') AS f").fetchone()["f"] == filenode
    )
    upgrade(database_url)
    db.execute("UPDATE tasks SET status = 'PROCESSING' WHERE id = %s", (old,))
    rows = db.execute(
        "SELECT xact_id::text AS xact_id FROM task_history WHERE task_id = %s ORDER BY id", (old,)
    ).fetchall()
    assert rows[0]["xact_id"] == "0"  # written before 0008: the oldest place
    assert int(rows[1]["xact_id"]) > 0
