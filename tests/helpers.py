"""Helpers shared by tests that run real servers or race real transactions."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import requests

from bench.dashboard_latency import CHROMIUM, CHROMIUM_ARGS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http_ok(url: str, timeout: float) -> requests.Response:
    """GET ``url`` until it answers 200; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return response
            last = response.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s: {last}")


def commit_transition(database_url: str, task_id: int, status: str) -> int:
    """An operator's UPDATE of a task's status, committed; the history id it wrote."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))
        return last_history_id(conn, task_id)


@contextmanager
def held_transition(database_url: str, task_id: int, status: str) -> Iterator[int]:
    """A status change written now and committed only when the block ends; its history id.

    Another transition committed inside the block gets a higher history id yet commits
    first: the out-of-order commit two worker children make all the time.
    """
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))
        yield last_history_id(conn, task_id)
        conn.commit()


def last_history_id(conn: psycopg.Connection, task_id: int) -> int:
    """The newest history id of a task that ``conn`` sees."""
    return conn.execute(
        "SELECT max(id) FROM task_history WHERE task_id = %s", (task_id,)
    ).fetchone()[0]


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; skips the test when it is not installed."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but /usr/bin/chromium is missing")
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
