"""Pooled connections keep no session state: no prepared statements when DATABASE_URL is a pool.

Each connection is asked itself (``pg_prepared_statements`` is per session):
direct, the worker prepares every statement; pooled, none of the API, the
worker or ``ctx.connection()`` does, however often a query runs.
"""

from __future__ import annotations

import contextlib
import gc
import warnings

import psycopg

from taskq.connections import API, CLAIM, PROGRESS, TASK
from taskq.progress import ProgressWriter
from taskq.registry import TaskContext, close_shared_connections, shared_connection
from taskq.settings import TaskSettings
from tests.helpers import insert_tasks
from tests.worker_helpers import claim, claim_connection
from worker.db import connect

PREPARED = "SELECT count(*) AS n FROM pg_prepared_statements"


def prepared(conn: psycopg.Connection) -> int:
    """Server-side prepared statements of ``conn``'s session (asked without preparing)."""
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cursor:
        return cursor.execute(PREPARED, prepare=False).fetchone()[0]


def test_the_worker_prepares_when_direct_and_never_when_pooled(db, database_url) -> None:
    insert_tasks(db, 20)
    for pooled in (False, True):
        with claim_connection(database_url, f"w-{pooled}", database_pooled=pooled) as exchange:
            for _ in range(6):
                claim(exchange, 1)
                exchange.conn.execute("SELECT 1 FROM workers WHERE id = %s", ["x"])
            assert (prepared(exchange.conn) > 0) is not pooled
            assert exchange.conn.info.parameter_status("application_name").startswith(CLAIM)
    with connect(database_url, "t", pooled=True) as conn:
        assert conn.prepare_threshold is None


def test_the_api_pool_prepares_nothing_when_pooled(make_app, database_url) -> None:
    from app.db import fetch_one, get_pool

    for pooled in (False, True):
        application = make_app(DATABASE_POOLED=pooled, DB_POOL_MIN=1, DB_POOL_MAX=1)
        with application.app_context():
            for _ in range(8):  # psycopg prepares after 5 runs of a query unless told not to
                fetch_one("task_cache_version", {"task_id": 1})
            with get_pool().connection() as conn:
                assert (prepared(conn) > 0) is not pooled
                assert conn.execute("SHOW application_name").fetchone()["application_name"] == API


def test_a_task_connection_prepares_nothing_when_pooled(database_url) -> None:
    settings = TaskSettings(database_pooled=True, hostname="host-q")
    ctx = TaskContext(1, 1, "default", "noop", "w", database_url, settings)
    conn = ctx.connection()
    try:
        for _ in range(8):
            conn.execute("SELECT %s::int", [1])
        assert prepared(conn) == 0
        assert conn.execute("SHOW application_name").fetchone()[0] == f"{TASK}@host-q"
    finally:
        conn.close()
    assert shared_connection(database_url, settings) is not conn  # a closed one is reopened
    shared_connection(database_url, settings).close()


def resource_warnings(drop) -> list[str]:
    """The ResourceWarnings raised while ``drop()`` lets go of objects and GC runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drop()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_shared_connections_are_closed_so_none_is_left_to_warn_about(database_url) -> None:
    # The check can see a leak: a connection dropped while open warns.
    leaked = [psycopg.connect(database_url)]
    assert resource_warnings(leaked.clear)
    ctx = TaskContext(1, 1, "default", "noop", "w", database_url, TaskSettings())
    held = [ctx.connection()]
    held[0].execute("SELECT 1")
    close_shared_connections(database_url)  # what a worker child and the test fixtures call
    assert held[0].closed
    assert resource_warnings(held.clear) == []
    again = ctx.connection()  # the next task of the process opens a new one
    assert not again.closed
    close_shared_connections()
    assert again.closed


def test_the_progress_writer_prepares_nothing_when_pooled_and_reopens_a_broken_one(
    db, database_url
) -> None:
    [task_id] = insert_tasks(db, 1)
    writer = ProgressWriter(database_url, TaskSettings(database_pooled=True, hostname="host-q"))
    for percent in range(8):  # psycopg prepares after 5 runs of a query unless told not to
        writer._write((task_id, 1), percent, None)
    conn = writer._conn
    assert prepared(conn) == 0
    assert conn.execute("SHOW application_name").fetchone()[0] == f"{PROGRESS}@host-q"
    db.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    with contextlib.suppress(psycopg.OperationalError):
        writer._write((task_id, 1), 50, None)  # the first use after the kill finds it broken
    writer._write((task_id, 1), 60, None)
    assert writer._conn is not conn and conn.closed
    writer._conn.close()
