"""The API's pool: a checkout costs no round trip, and still never hands out a dead session."""

from __future__ import annotations

import select

import psycopg

from app.db import check_idle_connection, fetch_one, get_pool, is_read_only
from tests.helpers import wait_for


def wait_gone(db, pid: int) -> None:
    """Until backend ``pid`` has exited (its FATAL message and FIN are on the socket)."""
    alive = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
    wait_for(lambda: not db.execute(alive, [pid]).fetchone(), 10, f"backend {pid} to exit")


def refused(conn: psycopg.Connection) -> bool:
    """Whether the checkout check refuses ``conn`` (after waiting up to 0.1 s for its socket)."""
    select.select([conn.fileno()], [], [], 0.1)
    try:
        check_idle_connection(conn)
    except psycopg.OperationalError:
        return True
    return False


def test_checkout_check_refuses_a_killed_backend_and_accepts_a_live_one(app, db):
    with app.app_context():
        pool = get_pool()
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        check_idle_connection(conn)  # idle and alive: no error, no query
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_gone(db, pid)
        # The backend leaves pg_stat_activity a moment before its FATAL and FIN reach
        # our socket: wait for them to arrive, then the check must refuse the session.
        wait_for(lambda: refused(conn), 5, "the check to notice the killed backend")


def test_a_read_on_a_backend_killed_a_moment_ago_runs_again(app, db, make_account):
    ann = make_account("ann")
    with app.app_context():
        with get_pool().connection() as conn:
            pid = conn.info.backend_pid
        for _ in range(5):  # killed just before the checkout: the check may not see it yet
            db.execute("SELECT pg_terminate_backend(%s)", [pid])
            row = fetch_one("get_user", {"user_id": ann.id})
            assert row["username"] == "ann"
            with get_pool().connection() as conn:
                pid = conn.info.backend_pid


def test_only_plain_selects_count_as_reads():
    assert is_read_only("token_state")
    assert is_read_only("get_task")
    assert not is_read_only("insert_task")
    assert not is_read_only("retry_task")  # WITH ... UPDATE
    assert not is_read_only("revoke_token")
