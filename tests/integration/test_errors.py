"""Every error in the contract's shape, and no 500 for anything a client sends."""

from __future__ import annotations

import psycopg
import pytest
from flask_jwt_extended import create_access_token

from tests.conftest import close_app
from tests.helpers import free_port
from tests.integration.test_auth import assert_error
from tests.integration.test_tasks_api import create

API = "/api/v1"


def test_unknown_route_and_method(client, make_account):
    ann = make_account("ann")
    assert_error(client.get(f"{API}/nothing-here"), 404)
    response = client.put(f"{API}/tasks", json={}, headers=ann.headers)
    assert_error(response, 405)
    assert "POST" in response.headers["Allow"]


def test_malformed_and_non_json_bodies(client, make_account):
    ann = make_account("ann")
    headers = {**ann.headers, "Content-Type": "application/json"}
    assert_error(client.post(f"{API}/tasks", data="{not json", headers=headers), 400)
    assert_error(client.post(f"{API}/tasks", data="[1, 2]", headers=headers), 400)
    assert_error(client.post(f"{API}/tasks", data='"text"', headers=headers), 400)
    nan = client.post(f"{API}/tasks", data='{"title": "t", "payload": {"x": NaN}}', headers=headers)
    assert_error(nan, 400, "payload")
    text = client.post(f"{API}/tasks", data="title=x", headers=ann.headers)
    assert_error(text, 415)
    form = client.post(f"{API}/auth/register", data={"username": "x"})
    assert_error(form, 415)


def test_oversized_body_is_413(app, client, make_account, db):
    ann = make_account("ann")
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = b'{"title": "big", "description": "' + b"x" * limit + b'"}'
    headers = {**ann.headers, "Content-Type": "application/json"}
    assert_error(client.post(f"{API}/tasks", data=body, headers=headers), 413)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0


FUZZ = [
    ("post", "/tasks", {"title": {"nested": "object"}}),
    ("post", "/tasks", {"title": "t", "priority": 10**30}),
    ("post", "/tasks", {"title": "t", "priority": -1}),
    ("post", "/tasks", {"title": "t", "retry_delay": "soon"}),
    ("post", "/tasks", {"title": "t", "scheduled_at": "2024-02-30T00:00:00"}),
    ("post", "/tasks", {"title": "t", "scheduled_at": 12345}),
    ("post", "/tasks", {"title": "t", "tags": [1, 2]}),
    ("post", "/tasks", {"title": "t" * 100_000}),
    ("post", "/tasks", {"title": "\ud800"}),
    ("post", "/tasks", {"title": "t", "callback_headers": {"a": 1}}),
    ("post", "/tasks/batch", {"tasks": "many"}),
    ("post", "/tasks/batch", {"tasks": [None]}),
    ("post", "/tasks/batch", 42),
    ("post", "/auth/register", ["a", "b"]),
    ("post", "/auth/register", {"username": 5, "email": [], "password": None}),
    ("post", "/auth/login", {"username": {"$gt": ""}, "password": "x"}),
    ("post", "/auth/token/verify", {"token": None}),
    ("patch", "/auth/profile", {"email": "a" * 300 + "@example.com"}),
    ("get", "/tasks?priority=99999999999999999999", None),
    ("get", "/tasks?start_date=2020-01-01T25:00:00", None),
    ("get", "/tasks?page_size=abc&page=1e3", None),
    ("get", "/tasks?ordering=-", None),
    ("get", "/dead-letters?page=99999999999", None),
]


def test_fuzzed_inputs_never_500(client, make_account):
    ann = make_account("ann")
    for method, path, body in FUZZ:
        response = getattr(client, method)(API + path, json=body, headers=ann.headers)
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
        assert set(response.get_json()) == {"error", "field_errors"}, (method, path)
    huge = client.get(f"{API}/tasks/{10**25}", headers=ann.headers)
    assert_error(huge, 404)
    big_number = {"title": "t", "payload": {"n": 10**400, "f": -1.5e300}}
    stored = client.post(f"{API}/tasks", json=big_number, headers=ann.headers)
    assert stored.status_code == 201  # jsonb numbers are arbitrary precision
    assert stored.get_json()["task"]["payload"]["n"] == 10**400


def test_postgres_unreachable_is_503():
    from app import create_app

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/taskq"
    app = create_app(
        {"DATABASE_URL": url, "TASKQ_ENV": "test", "REDIS_URL": None, "DB_POOL_TIMEOUT": 0.3}
    )
    app.config["RATELIMIT_ENABLED"] = False
    client = app.test_client()
    try:
        body = {
            "username": "ann",
            "email": "ann@example.com",
            "password": "Sturdy-Lamp-42",
            "password2": "Sturdy-Lamp-42",
        }
        response = client.post(f"{API}/auth/register", json=body)
        assert_error(response, 503)
        assert response.headers["Retry-After"]
        with app.app_context():
            token = create_access_token("1", additional_claims={"pv": 0})
        headers = {"Authorization": f"Bearer {token}"}
        assert_error(client.get(f"{API}/tasks", headers=headers), 503)
        assert_error(client.post(f"{API}/tasks", json={"title": "t"}, headers=headers), 503)
    finally:
        close_app(app)


@pytest.mark.slow
def test_api_recovers_when_its_connections_are_killed(client, make_account, database_url, db):
    ann = make_account("ann")
    task = create(client, ann)
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()["n"]
    assert killed >= 1
    response = client.get(f"{API}/tasks/{task['id']}", headers=ann.headers)
    assert response.status_code == 200
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
