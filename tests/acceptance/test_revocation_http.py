"""A revoked token is refused by every API process, within seconds, though none asks Postgres
on every request (``app.revocation``).

``taskq api`` with 2 gunicorn processes whose kept token states would be trusted
for 300 s (``TASKQ_TOKEN_STATE_SECONDS``): only the ``taskq_credentials``
notifications (migration 0015), the revoking process's own drop, and the loss of
the LISTEN connection can make a process refuse sooner. Each check talks to
both processes on connections pinned to each (found by their socket's owner).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest

from taskq.connections import NOTIFIER
from tests.helpers import api_server, register_over_http, wait_for

pytestmark = pytest.mark.slow

SECRET = "revocation-acceptance-secret-0123456789"
PASSWORD = "Sturdy-Lamp-42"
SOON = 10.0  # seconds: a notification's delivery on a loaded machine, far below the 300 s


@pytest.fixture(scope="module")
def api(pg_server_url: str, template_database: str) -> Iterator[tuple[str, str]]:
    """``(url, database_url)`` of a 2-process API keeping token states for 300 s."""
    with api_server(
        pg_server_url, template_database, "taskq_revoke", SECRET, 2,
        TASKQ_TOKEN_STATE_SECONDS="300",
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def short_api(pg_server_url: str, template_database: str) -> Iterator[tuple[str, str]]:
    """The same with token states kept for 1 s (the backstop)."""
    with api_server(
        pg_server_url, template_database, "taskq_revoke_ttl", SECRET, 2,
        TASKQ_TOKEN_STATE_SECONDS="1",
    ) as running:  # fmt: skip
        yield running


def api_processes(port: int) -> list[psutil.Process]:
    """The gunicorn master and workers serving ``port``."""
    bind = f"127.0.0.1:{port}"
    return [
        p for p in psutil.process_iter(["cmdline"]) if bind in " ".join(p.info["cmdline"] or [])
    ]


def pinned(url: str) -> dict[int, http.client.HTTPConnection]:
    """One fresh keep-alive connection to each API worker process: pid -> connection."""
    port = urlsplit(url).port
    assert port is not None
    processes = api_processes(port)
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        conn.getresponse().read()  # accepted and served: the owner holds the socket now
        local = conn.sock.getsockname()[1]
        owners = [
            p.pid
            for p in processes
            for c in p.net_connections("tcp")
            if c.raddr and c.raddr.port == local and c.laddr.port == port
        ]
        if not owners or owners[0] in found:
            conn.close()
        else:
            found[owners[0]] = conn
        if len(found) == 2:
            return found
    close_all(found)
    raise AssertionError("could not reach both API processes")


def close_all(conns: dict[int, http.client.HTTPConnection]) -> None:
    for conn in conns.values():
        conn.close()


def call(
    conn: http.client.HTTPConnection, method: str, path: str, token: str, body: dict | None = None
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else {}


def statuses(url: str, token: str) -> set[int]:
    """The status of ``GET /auth/profile`` with ``token`` in each API process."""
    conns = pinned(url)
    try:
        return {call(conn, "GET", "/api/v1/auth/profile", token)[0] for conn in conns.values()}
    finally:
        close_all(conns)


def register(url: str, username: str) -> dict:
    return register_over_http(url, username, PASSWORD)


def warmed(url: str, token: str) -> None:
    """Both processes have accepted ``token`` (so each keeps its state)."""
    assert statuses(url, token) == {200}
    assert statuses(url, token) == {200}


def refused_everywhere(url: str, token: str) -> bool:
    return statuses(url, token) == {401}


def quietly(database_url: str, statement: str) -> None:
    """Run ``statement`` with triggers off: a change no process is told about."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement)


def test_logout_in_one_process_is_refused_at_once_there_and_soon_in_the_other(api):
    url, _ = api
    tokens = register(url, "ann")
    warmed(url, tokens["access"])
    conns = pinned(url)
    try:
        first = next(iter(conns.values()))
        status, _ = call(first, "POST", "/api/v1/auth/logout", tokens["access"])
        assert status == 200
        # The process that logged out refuses on the very next request.
        status, body = call(first, "GET", "/api/v1/auth/profile", tokens["access"])
        assert (status, body["error"]) == (401, "Token has been revoked.")
    finally:
        close_all(conns)
    wait_for(lambda: refused_everywhere(url, tokens["access"]), SOON, "logout heard")


def test_password_change_is_refused_by_every_process(api):
    url, _ = api
    tokens = register(url, "bob")
    warmed(url, tokens["access"])
    new = "Other-Lamp-43"
    body = {"old_password": PASSWORD, "new_password": new, "new_password2": new}
    conns = pinned(url)
    try:
        conn = next(iter(conns.values()))
        status, reply = call(conn, "POST", "/api/v1/auth/change-password", tokens["access"], body)
        assert status == 200, reply
    finally:
        close_all(conns)
    wait_for(lambda: refused_everywhere(url, tokens["access"]), SOON, "password change heard")
    assert statuses(url, reply["tokens"]["access"]) == {200}


def test_deactivation_in_psql_is_refused_by_every_process(api):
    url, database_url = api
    tokens = register(url, "cid")
    warmed(url, tokens["access"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET is_active = false WHERE username = 'cid'")
    wait_for(lambda: refused_everywhere(url, tokens["access"]), SOON, "deactivation heard")


def test_losing_the_listen_connection_falls_back_to_postgres_at_once(api):
    url, database_url = api
    tokens = register(url, "dee")
    warmed(url, tokens["access"])
    quietly(database_url, "UPDATE users SET is_active = false WHERE username = 'dee'")
    # Nobody was told: the kept states still hold (this is what a lost notification costs).
    assert statuses(url, tokens["access"]) == {200}
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (NOTIFIER,),
        )
    wait_for(lambda: refused_everywhere(url, tokens["access"]), SOON, "listener loss noticed")


def test_an_unannounced_revocation_is_refused_once_the_kept_state_is_old(short_api):
    url, database_url = short_api
    tokens = register(url, "eve")
    warmed(url, tokens["access"])
    quietly(database_url, "UPDATE users SET is_active = false WHERE username = 'eve'")
    wait_for(lambda: refused_everywhere(url, tokens["access"]), SOON, "backstop")
