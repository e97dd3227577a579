"""The one home of the tests' helpers: waiting, databases, the API app, real servers.

Worker processes (start, stop, kill) live in ``tests/worker_helpers.py``; the task
types the worker tests register live in ``tests/worker_tasks.py``. No test module
imports another test module: what two of them share lives here.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import requests
from psycopg import sql
from psycopg.types.json import Jsonb

from bench.dashboard_latency import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Sturdy-Lamp-42"  # the browser tests' accounts
API = "/api/v1"
PGBOUNCER_POOL = 6  # server connections per database of the tests' transaction-mode PgBouncer

# ---------------------------------------------------------------- waiting


def wait_for(predicate: Callable[[], Any], timeout: float, message: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; its value. AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http_ok(url: str, timeout: float) -> requests.Response:
    """GET ``url`` until it answers 200; AssertionError after ``timeout`` seconds."""

    def answered() -> requests.Response | None:
        try:
            response = requests.get(url, timeout=2)
        except requests.RequestException:
            return None
        return response if response.status_code == 200 else None

    return wait_for(answered, timeout, f"{url} to answer 200")


class Receiver:
    """A webhook receiver on 127.0.0.1 answering with the given status codes in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = (
                    receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


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


# ---------------------------------------------------------------- databases


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead."""
    return urlsplit(url)._replace(path="/" + dbname).geturl()


def admin_execute(server_url: str, statement: str) -> None:
    """Run one statement in autocommit (CREATE/DROP DATABASE) on ``server_url``."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def template_copy(server_url: str, template: str, prefix: str) -> Iterator[str]:
    """A database copied from ``template`` for a module's servers; its URL, dropped after."""
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield with_database(server_url, name)
    finally:
        admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def api_server(
    server_url: str,
    template: str,
    prefix: str,
    secret: str,
    workers: int,
    pgbouncer_port: int | None = None,
    **env: str,
) -> Iterator[tuple[str, str]]:
    """``(url, database_url)`` of a real ``taskq api`` on a template copy of its own.

    With ``pgbouncer_port``, its DATABASE_URL goes through that PgBouncer and its
    LISTEN straight to Postgres; ``database_url`` is the direct one either way.
    """
    from bench.pgbouncer import pooled_url
    from bench.sse_latency import start_api

    with template_copy(server_url, template, prefix) as database_url:
        if pgbouncer_port is not None:
            env = {"DATABASE_URL": pooled_url(database_url, pgbouncer_port),
                   "TASKQ_LISTEN_DATABASE_URL": database_url, **env}  # fmt: skip
        url, proc = start_api(database_url, secret, workers=workers, **env)
        try:
            yield url, database_url
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def make_user(db: psycopg.Connection, name: str = "ann") -> int:
    """A user row made in SQL; its id."""
    return db.execute(
        "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, 'x') RETURNING id",
        (name, f"{name}@example.com"),
    ).fetchone()["id"]


def insert_tasks(db: psycopg.Connection, count: int = 1, **fields: Any) -> list[int]:
    """Insert ``count`` tasks with ``fields`` in one statement; their ids in order."""
    values = {"title": "t", "task_type": "noop", "payload": {}, **fields}
    if isinstance(values["payload"], dict | list):
        values["payload"] = Jsonb(values["payload"])
    names = list(values)
    columns = ", ".join(names)
    placeholders = ", ".join(f"%({n})s" for n in names)
    rows = db.execute(
        f"INSERT INTO tasks ({columns}) SELECT {placeholders} FROM generate_series(1, %(n)s) "
        "ORDER BY 1 RETURNING id",
        {**values, "n": count},
    ).fetchall()
    return sorted(r["id"] if isinstance(r, dict) else r[0] for r in rows)


def status_counts(db: psycopg.Connection) -> dict[str, int]:
    """{status: count} over all tasks."""
    rows = db.execute("SELECT status::text AS s, count(*) AS n FROM tasks GROUP BY 1").fetchall()
    return {r["s"]: r["n"] for r in rows}


def set_status(db, task_id: int, status: str, **columns) -> None:
    """An operator's UPDATE of a task's status (and other columns)."""
    assignments = [sql.SQL("status = %(status)s")]
    assignments += [sql.SQL("{} = %({})s").format(sql.Identifier(c), sql.SQL(c)) for c in columns]
    statement = sql.SQL("UPDATE tasks SET {} WHERE id = %(id)s").format(
        sql.SQL(", ").join(assignments)
    )
    db.execute(statement, {"status": status, "id": task_id, **columns})


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


def counted_in(snapshot: str, event: dict) -> bool | None:
    """Whether a read in ``snapshot`` (``xmin:xmax:xip,…``, as GET /tasks/stats gives it)
    already counted an /events transition (``id`` and parsed ``data``): the dashboard's rule
    (app/static/dashboard/js/snapshot.js). None when the snapshot cannot tell."""
    if not event["data"].get("place_is_writer"):
        return None
    xact = int(event["id"].split("-")[0])
    xmin, xmax, xip = snapshot.split(":")
    in_progress = {int(xid) for xid in xip.split(",") if xid}
    return xact < int(xmin) or (xact < int(xmax) and xact not in in_progress)


def last_history_id(conn: psycopg.Connection, task_id: int) -> int:
    """The newest history id of a task that ``conn`` sees."""
    return conn.execute(
        "SELECT max(id) FROM task_history WHERE task_id = %s", (task_id,)
    ).fetchone()[0]


# ---------------------------------------------------------------- the API app

# The rate limits the limit tests run under: small, with one trusted proxy hop.
LIMITS = {
    "RATELIMIT_ENABLED": True,
    "TASKQ_PROXY_HOPS": 1,
    "TASKQ_RATELIMIT_DEFAULT": "5/minute",
    "TASKQ_RATELIMIT_AUTH": "3/minute",
}


def close_app(application) -> None:
    """Release what an app opened: its pool and, when started, its notifier and stream guard."""
    from app.db import close_pool

    guard = application.extensions.get("taskq_stream_guard")
    if guard is not None:
        guard.stop()
    close_pool(application)
    notifier = application.extensions.get("taskq_notifier")
    if notifier is not None:
        notifier.stop()


class Account:
    """A registered user of the test app and its tokens."""

    def __init__(self, user: dict, tokens: dict, password: str) -> None:
        self.id = user["id"]
        self.username = user["username"]
        self.user = user
        self.password = password
        self.access = tokens["access"]
        self.refresh = tokens["refresh"]

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of this account's access token."""
        return {"Authorization": f"Bearer {self.access}"}


def registration(username: str, password: str) -> dict[str, str]:
    """The body of POST /auth/register for ``username`` (an example.com address)."""
    return {"username": username, "email": f"{username}@example.com",
            "password": password, "password2": password}  # fmt: skip


def register_over_http(url: str, username: str, password: str) -> dict:
    """Register ``username`` with the API running at ``url``; its tokens."""
    response = requests.post(f"{url}{API}/auth/register", json=registration(username, password),
                             timeout=10)  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["tokens"]


def register_account(client, username: str = "ann", password: str = "Sturdy-Lamp-42") -> Account:
    """Register ``username`` through the API of ``client``; the account and its tokens."""
    response = client.post(f"{API}/auth/register", json=registration(username, password))
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    return Account(data["user"], data["tokens"], password)


def account(application, database_url: str, username: str) -> dict[str, str]:
    """A user made in SQL (no register call spends the auth quota) and its bearer header."""
    from werkzeug.security import generate_password_hash

    from app.auth import issue_tokens

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.row_factory = psycopg.rows.dict_row
        user = conn.execute(
            "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, %s) RETURNING *",
            (username, f"{username}@example.com", generate_password_hash("Sturdy-Lamp-42")),
        ).fetchone()
    with application.app_context():
        return {"Authorization": f"Bearer {issue_tokens(user)['access']}"}


def login(client, username: str, ip: str, password: str = "wrong-password"):
    """POST /auth/login as if from ``ip`` (behind the one trusted proxy hop)."""
    return client.post(
        f"{API}/auth/login",
        json={"username": username, "password": password},
        headers={"X-Forwarded-For": ip},
    )


def create(client, account, expected: int = 201, **body):
    """POST /tasks and return the task."""
    body.setdefault("title", "a task")
    body.setdefault("task_type", "echo")
    response = client.post(f"{API}/tasks", json=body, headers=account.headers)
    assert response.status_code == expected, response.get_json()
    return response.get_json()["task"]


def assert_error(response, status: int, *fields: str) -> dict:
    """The response is an error of ``status`` in the contract's shape, naming ``fields``."""
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "field_errors"}
    assert isinstance(body["error"], str) and body["error"]
    for name in fields:
        assert name in body["field_errors"], body
    return body


# ---------------------------------------------------------------- rows without a database

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def task_row(**changes):
    """A full tasks row as the database returns it, with ``changes``."""
    row = {
        "id": 7,
        "user_id": 3,
        "title": "t",
        "description": "",
        "task_type": "echo",
        "payload": {"a": 1},
        "queue": "default",
        "priority": 5,
        "status": "PENDING",
        "scheduled_at": None,
        "run_at": NOW,
        "attempts": 0,
        "max_retries": 3,
        "retry_delay": 60,
        "timeout": None,
        "result": None,
        "error": None,
        "tags": ["x"],
        "metadata": {},
        "idempotency_key": "k",
        "worker_id": None,
        "lease_token": 99,
        "lease_expires_at": None,
        "callback_url": "https://example.com/h",
        "callback_events": ["task.failed"],
        "callback_headers": {"Authorization": "Bearer secret-header"},
        "callback_secret": "hmac-key",
        "callback_max_attempts": 5,
        "created_at": NOW,
        "started_at": None,
        "completed_at": None,
        "updated_at": NOW,
        "idempotency_fingerprint": None,
        "unique_key": None,
        "unique_for": None,
        "unique_window": None,
        "snoozes": 0,
        "progress": None,
        "progress_message": None,
        "progress_at": None,
        "depends_on": None,
        "pending_parents": 0,
        "has_dependents": False,
    }
    row.update(changes)
    return row


def sse_events(response: requests.Response) -> Iterator[dict[str, str]]:
    """The SSE events of a streaming response, as dicts of their fields."""
    fields: dict[str, str] = {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


# ---------------------------------------------------------------- browser tests


@dataclass
class Console:
    """A running API (and worker) of a browser test, and a way to reach them around the browser."""

    url: str
    database_url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def sql(self, statement: str, params=()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def status(self, task_id: int) -> str:
        return self.sql("SELECT status::text FROM tasks WHERE id = %s", (task_id,))[0][0]

    def token(self, username: str) -> str:
        """A bearer token of ``username`` (one login per user: each costs a password hash)."""
        if username not in self.tokens:
            response = requests.post(
                f"{self.url}/api/v1/auth/login",
                json={"username": username, "password": PASSWORD},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["tokens"]["access"]
        return self.tokens[username]

    def act(self, username: str, task_id: int, action: str) -> None:
        """POST /tasks/{id}/{action} as ``username``."""
        requests.post(
            f"{self.url}/api/v1/tasks/{task_id}/{action}",
            headers={"Authorization": f"Bearer {self.token(username)}"},
            timeout=10,
        ).raise_for_status()

    def post_task(self, username: str, **task) -> requests.Response:
        """POST /tasks as ``username`` (``task_type`` echo unless given)."""
        task.setdefault("task_type", "echo")
        return requests.post(
            f"{self.url}/api/v1/tasks",
            json=task,
            headers={"Authorization": f"Bearer {self.token(username)}"},
            timeout=10,
        )

    def create(self, username: str, **task) -> dict:
        """A task created as ``username``."""
        response = self.post_task(username, **task)
        assert response.status_code == 201, response.text
        return response.json()["task"]
