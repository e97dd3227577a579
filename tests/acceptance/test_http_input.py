"""Request bodies over real HTTP against ``taskq api`` (gunicorn, gevent): what the test
client cannot show, because it always sends a Content-Length."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import requests

from tests.helpers import API, api_server

pytestmark = pytest.mark.slow

SECRET = "http-input-acceptance-secret-0123456789"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(pg_server_url: str, template_database: str) -> Iterator[tuple[str, str]]:
    """(API URL, database URL) of ``taskq api`` with a 64 KiB body limit."""
    with api_server(
        pg_server_url, template_database, "taskq_body", SECRET, 1, TASKQ_MAX_BODY_BYTES=str(LIMIT)
    ) as running:
        yield running


def chunked(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """``body`` as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def task_count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM tasks").fetchone()[0]


@pytest.fixture(scope="module")
def token(server) -> str:
    url, _ = server
    password = "Sturdy-Lamp-42"
    body = {
        "username": "ann",
        "email": "ann@example.com",
        "password": password,
        "password2": password,
    }
    response = requests.post(f"{url}{API}/auth/register", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["tokens"]["access"]


def test_a_chunked_body_over_the_limit_is_413(server, token):
    url, database_url = server
    before = task_count(database_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = b'{"title": "big", "payload": {"x": "' + b"x" * (2 * LIMIT) + b'"}}'
    response = requests.post(f"{url}{API}/tasks", data=chunked(big), headers=headers, timeout=10)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert set(response.json()) == {"error", "field_errors"}
    anonymous = requests.post(
        f"{url}{API}/auth/login",
        data=chunked(b'{"username": "ann", "password": "' + b"x" * LIMIT + b'"}'),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert anonymous.status_code == 413, anonymous.text
    assert task_count(database_url) == before
    # A chunked body under the limit is read whole and works as any other.
    small = b'{"title": "small", "task_type": "echo", "payload": {"x": "' + b"y" * 1000 + b'"}}'
    created = requests.post(
        f"{url}{API}/tasks", data=chunked(small, 100), headers=headers, timeout=10
    )
    assert created.status_code == 201, created.text
    assert created.json()["task"]["payload"] == {"x": "y" * 1000}
    assert task_count(database_url) == before + 1


def test_json_nested_10000_deep_is_400_over_http(server, token):
    url, database_url = server
    before = task_count(database_url)
    deep = "[" * 10_000 + "]" * 10_000
    for path, headers in [
        ("/auth/login", {}),
        ("/auth/register", {}),
        ("/auth/token/refresh", {}),
        ("/auth/token/verify", {}),
        ("/tasks", {"Authorization": f"Bearer {token}"}),
    ]:
        response = requests.post(
            f"{url}{API}{path}",
            data=deep,
            headers={**headers, "Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, (path, response.text)
        assert "nested deeper than" in response.json()["error"]
    assert task_count(database_url) == before
