"""The API's connection pool (psycopg 3) and the one way views reach Postgres."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from flask import Flask, current_app
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from sql import queries


def init_app(app: Flask) -> None:
    """Open the pool lazily (gunicorn forks after create_app) and close it at exit."""
    app.extensions["taskq_pool"] = None


_pool_lock = threading.Lock()


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
            kwargs={"row_factory": dict_row, "autocommit": False},
            check=ConnectionPool.check_connection,
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


def fetch_one(name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run named query ``name`` in its own transaction and return its first row."""
    with get_conn() as conn:
        return conn.execute(queries[name], params or {}).fetchone()


def fetch_all(name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run named query ``name`` in its own transaction and return every row."""
    with get_conn() as conn:
        return conn.execute(queries[name], params or {}).fetchall()


def close_pool(app: Flask) -> None:
    """Close the pool (tests, shutdown)."""
    pool = app.extensions.get("taskq_pool")
    if pool is not None:
        pool.close()
        app.extensions["taskq_pool"] = None
