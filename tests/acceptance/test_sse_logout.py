"""Streams end with the login they came from: logout and password change, over real HTTP.

``taskq api`` with 2 gunicorn processes: a stream and the logout that ends it
may be served by different processes, so each process's guard must notice the
revocation in Postgres.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
import requests

from tests.helpers import api_server, register_over_http, wait_for

pytestmark = pytest.mark.slow

SECRET = "sse-logout-acceptance-secret-0123456789"
PASSWORD = "Sturdy-Lamp-42"


@pytest.fixture(scope="module")
def api(pg_server_url: str, template_database: str) -> Iterator[tuple[str, str]]:
    """``(url, database_url)`` of a 2-process ``taskq api`` on a database of its own."""
    with api_server(
        pg_server_url, template_database, "taskq_sse_logout", SECRET, 2, TASKQ_SSE_KEEPALIVE="0.5"
    ) as running:
        yield running


@dataclass
class Stream:
    """An SSE response read by a thread of its own: its data lines, and whether it ended."""

    response: requests.Response
    data: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("data:"):
                    self.data.append(line)
        except requests.RequestException:
            pass
        finally:
            self.ended.set()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(url: str, username: str) -> dict:
    return register_over_http(url, username, PASSWORD)


def log_in(url: str, username: str, password: str = PASSWORD) -> dict:
    body = {"username": username, "password": password}
    response = requests.post(f"{url}/api/v1/auth/login", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def stream_token(url: str, access: str) -> str:
    response = requests.post(f"{url}/api/v1/events/token", headers=bearer(access), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["token"]


def new_task(url: str, access: str) -> int:
    body = {"title": "watched", "task_type": "echo"}
    response = requests.post(f"{url}/api/v1/tasks", json=body, headers=bearer(access), timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["task"]["id"]


def get_stream(url: str, path: str, token: str | None = None, access: str | None = None):
    """GET an events endpoint with ``?token=`` or a bearer header (not read yet)."""
    return requests.get(
        f"{url}{path}",
        params={"token": token} if token else None,
        headers=bearer(access) if access else None,
        stream=True,
        timeout=(5, 10),
    )


def open_stream(url: str, path: str, **credentials: str) -> Stream:
    response = get_stream(url, path, **credentials)
    assert response.status_code == 200, response.text
    return Stream(response)


def set_status(database_url: str, task_id: int, status: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET status = %s WHERE id = %s", (status, task_id))


def test_logout_ends_the_streams_of_that_login_and_refuses_its_stream_token(api):
    url, database_url = api
    tokens = register(url, "ann")
    other_login = log_in(url, "ann")  # ann on another device: not logged out
    task_id = new_task(url, tokens["access"])
    token = stream_token(url, tokens["access"])
    ended_by_logout = [
        open_stream(url, f"/api/v1/tasks/{task_id}/events", token=token),
        open_stream(url, "/api/v1/events", token=token),
        open_stream(url, "/api/v1/events", access=tokens["access"]),
    ]
    kept = open_stream(url, "/api/v1/events", token=stream_token(url, other_login["access"]))

    logout = requests.post(
        f"{url}/api/v1/auth/logout", headers=bearer(tokens["access"]), timeout=10
    )
    assert logout.status_code == 200
    for stream in ended_by_logout:
        wait_for(stream.ended.is_set, timeout=5, message="the stream to end after logout")

    refused = get_stream(url, "/api/v1/events", token=token)
    assert refused.status_code == 401
    assert set(refused.json()) == {"error", "field_errors"}
    assert get_stream(url, f"/api/v1/tasks/{task_id}/events", token=token).status_code == 401

    # The other login's stream goes on delivering.
    set_status(database_url, task_id, "PROCESSING")
    wait_for(lambda: kept.data, timeout=10, message="the other login's stream to deliver")
    assert not kept.ended.is_set()
    requests.post(f"{url}/api/v1/auth/logout", headers=bearer(other_login["access"]), timeout=10)
    wait_for(kept.ended.is_set, timeout=5, message="the other login's stream to end at its logout")


def test_a_password_change_ends_every_stream_of_the_user(api):
    url, database_url = api
    tokens = register(url, "bob")
    other_login = log_in(url, "bob")
    task_id = new_task(url, tokens["access"])
    token = stream_token(url, tokens["access"])
    streams = [
        open_stream(url, f"/api/v1/tasks/{task_id}/events", token=token),
        open_stream(url, "/api/v1/events", token=stream_token(url, other_login["access"])),
        open_stream(url, "/api/v1/events", access=other_login["access"]),
    ]
    new_password = "Brand-New-Kettle-7"
    changed = requests.post(
        f"{url}/api/v1/auth/change-password",
        json={
            "old_password": PASSWORD,
            "new_password": new_password,
            "new_password2": new_password,
        },
        headers=bearer(tokens["access"]),
        timeout=10,
    )
    assert changed.status_code == 200, changed.text
    for stream in streams:
        wait_for(stream.ended.is_set, timeout=5, message="the stream to end after the change")
    assert get_stream(url, "/api/v1/events", token=token).status_code == 401

    # The new login streams as before.
    fresh = changed.json()["tokens"]["access"]
    live = open_stream(url, f"/api/v1/tasks/{task_id}/events", token=stream_token(url, fresh))
    set_status(database_url, task_id, "PROCESSING")
    wait_for(lambda: len(live.data) >= 2, timeout=10, message="the new login's stream")
    assert not live.ended.is_set()
    requests.post(f"{url}/api/v1/auth/logout", headers=bearer(fresh), timeout=10)
    wait_for(live.ended.is_set, timeout=5, message="the new login's stream to end at its logout")
