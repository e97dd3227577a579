"""What the API refuses it does not store: a request answered 4xx/5xx leaves no rows behind.

Each test forces the failure with real Postgres (a lock held by another session, test-only
settings of the test's own database) and checks that the refused request stored nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests.helpers import API, assert_error


def count_tasks(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"]


@contextmanager
def queues_locked(database_url: str) -> Iterator[None]:
    """Another session holds ``queues`` (a migration, a psql session) until the block ends."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE queues IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_a_create_whose_queue_warnings_cannot_be_read_gets_503_and_stores_nothing(
    client, make_account, db, database_url
):
    # Test-only: the app's sessions (opened after this) give up on a lock after 200 ms, so a
    # read of ``queues`` fails (503) while another session holds it; a task's insert does
    # not touch that table. The create's warnings read it (queue_service).
    name = sql.Identifier(db.info.dbname)
    db.execute(sql.SQL("ALTER DATABASE {} SET lock_timeout = '200ms'").format(name))
    ann = make_account("ann")
    one = {"title": "one", "task_type": "echo"}
    keyed = {"title": "keyed", "task_type": "echo", "unique_key": "k"}
    requests = [("/tasks", one), ("/tasks/batch", [one, one]), ("/tasks/batch", [keyed, one])]
    with queues_locked(database_url):
        for path, body in requests:
            assert_error(client.post(f"{API}{path}", json=body, headers=ann.headers), 503)
            assert count_tasks(db) == 0, path
    # Once the lock is gone, the same requests create their tasks.
    for path, body in requests:
        assert client.post(f"{API}{path}", json=body, headers=ann.headers).status_code == 201
    assert count_tasks(db) == 5
