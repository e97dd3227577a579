"""The API's connection pool (psycopg 3) and the one way views reach Postgres."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

import psycopg
from flask import Flask, current_app
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from sql import queries
from taskq.connections import API, connection_options

T = TypeVar("T")


def init_app(app: Flask) -> None:
    """Open the pool lazily (gunicorn forks after create_app) and close it at exit."""
    app.extensions["taskq_pool"] = None


_pool_lock = threading.Lock()


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """Refuse a pooled connection whose server side is gone, without a round trip.

    A backend that was terminated (pg_terminate_backend, a server restart) sends
    its FATAL message and closes the socket; reading what is already there notices
    it, so the checkout costs a non-blocking read instead of a query
    (``ConnectionPool.check_connection`` cost one round trip per checkout). The pool
    drops a connection this refuses and hands out another.
    """
    pgconn = conn.pgconn
    # Raises OperationalError at the end of the stream. The first read may stop after the
    # FATAL message; the second then meets the end (or, on a live idle session, nothing).
    pgconn.consume_input()
    pgconn.consume_input()
    if pgconn.status != ConnStatus.OK:
        raise psycopg.OperationalError("connection is broken")


def get_pool() -> ConnectionPool:
    """The process's pool, opened on first use (once, however many requests race for it)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    pool = app.extensions.get("taskq_pool")
    if pool is not None:
        return pool
    with _pool_lock:
        pool = app.extensions.get("taskq_pool")
        if pool is not None:
            return pool
        url = app.config["DATABASE_URL"]
        if not url:
            raise RuntimeError("DATABASE_URL is not configured")
        pool = ConnectionPool(
            url,
            min_size=app.config["DB_POOL_MIN"],
            max_size=app.config["DB_POOL_MAX"],
            timeout=app.config["DB_POOL_TIMEOUT"],
            kwargs={
                "row_factory": dict_row,
                "autocommit": False,
                **connection_options(API, app.config["DATABASE_POOLED"]),
            },
            check=check_idle_connection,
            name="taskq-api",
            open=True,
        )
        app.extensions["taskq_pool"] = pool
    return pool


@contextmanager
def get_conn() -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A pooled connection in a transaction: committed on success, rolled back on error."""
    with get_pool().connection() as conn:
        yield conn


@contextmanager
def statement_conn() -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A pooled connection in autocommit: each statement is its own transaction.

    One statement needs no BEGIN and COMMIT of its own (two round trips saved);
    it is exactly as atomic as it was inside them.
    """
    with get_pool().connection() as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            # A broken connection keeps the flag: the pool discards it anyway.
            if conn.pgconn.transaction_status == TransactionStatus.IDLE:
                conn.autocommit = False


@cache
def is_read_only(name: str) -> bool:
    """Named query ``name`` is a plain SELECT: running it twice changes nothing."""
    lines = [line for line in queries[name].splitlines() if not line.lstrip().startswith("--")]
    return " ".join(lines).lstrip()[:7].upper() == "SELECT "


def run_statement(
    name: str, params: dict[str, Any] | None, fetch: Callable[[psycopg.Cursor[Any]], T]
) -> T:
    """Run named query ``name`` as its own transaction; ``fetch`` reads its cursor.

    The checkout check costs no round trip, so a backend killed a moment ago can still
    come out of the pool (its FATAL message not arrived yet). A read that meets one
    has the pool checked and runs again; a write is never run twice, it fails (503).
    """
    retry = is_read_only(name)
    while True:
        with statement_conn() as conn:
            try:
                return fetch(conn.execute(queries[name], params or {}))
            except psycopg.OperationalError:
                if not (retry and conn.broken):
                    raise
        retry = False
        get_pool().check()


def fetch_one(name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run named query ``name`` as its own transaction and return its first row."""
    return run_statement(name, params, psycopg.Cursor.fetchone)


def fetch_all(name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run named query ``name`` as its own transaction and return every row."""
    return run_statement(name, params, psycopg.Cursor.fetchall)


def fetch_view(name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of named query ``name`` over the operator views, planned without JIT or
    parallel workers (``read_plan_settings``, for its transaction only: pooled-safe)."""
    with get_conn() as conn:
        conn.execute(queries["read_plan_settings"])
        return conn.execute(queries[name], params).fetchall()


def close_pool(app: Flask) -> None:
    """Close the pool (tests, shutdown)."""
    pool = app.extensions.get("taskq_pool")
    if pool is not None:
        pool.close()
        app.extensions["taskq_pool"] = None
