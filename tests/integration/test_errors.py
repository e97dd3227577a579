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
    ("post", "/tasks/batch", {"tasks": 5}),
    ("post", "/tasks/batch", {"tasks": True}),
    ("post", "/tasks", {"title": "t", "priority": "\u00b2"}),
    ("post", "/tasks", {"title": "t", "priority": "1" * 5000}),
    ("get", "/tasks?priority=\u00b2", None),
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


DEEP_JSON = "[" * 10_000 + "]" * 10_000
# Every route that reads a JSON body; the rest must ignore one (never a 500 either way).
JSON_BODY_ROUTES = {
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/token"),
    ("POST", "/auth/token/refresh"),
    ("POST", "/auth/token/verify"),
    ("POST", "/auth/logout"),
    ("PATCH", "/auth/profile"),
    ("POST", "/auth/change-password"),
    ("POST", "/tasks"),
    ("POST", "/tasks/batch"),
    ("POST", "/tasks/{id}/trigger-webhook"),
}
ANONYMOUS_JSON_ROUTES = [
    "/auth/login",
    "/auth/register",
    "/auth/token/refresh",
    "/auth/token/verify",
]


def test_json_nested_10000_deep_is_400_on_every_route(app, client, make_account, db):
    ann = make_account("ann")
    task = create(client, ann)
    json_type = {"Content-Type": "application/json"}
    for path in ANONYMOUS_JSON_ROUTES:
        body = assert_error(client.post(f"{API}{path}", data=DEEP_JSON, headers=json_type), 400)
        assert "nested deeper than" in body["error"], path
    seen = set()
    for rule in app.url_map.iter_rules():
        route = rule.rule.removeprefix(API)
        for name in rule.arguments:
            route = route.replace(f"<int:{name}>", "{id}").replace(f"<{name}>", "default")
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH"}):
            path = API + route.format(id=task["id"])
            headers = {**ann.headers, **json_type}
            response = client.open(path, method=method, data=DEEP_JSON, headers=headers)
            assert response.status_code < 500, (method, path)
            if (method, route) in JSON_BODY_ROUTES:
                seen.add((method, route))
                assert_error(response, 400)
    assert seen == JSON_BODY_ROUTES
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 1


def test_brackets_inside_strings_do_not_count_as_nesting(client, make_account):
    ann = make_account("ann")
    text = '[{\\"' * 2000
    body = '{"title": "t", "description": "' + text + '", "payload": {"a": [[["x]]]"]]]}}'
    headers = {**ann.headers, "Content-Type": "application/json"}
    response = client.post(f"{API}/tasks", data=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["task"]["description"] == text.replace("\\", "")


NON_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff11"]  # superscript 2, Arabic-Indic 3, fullwidth 1


def test_non_ascii_digits_are_not_numbers(client, make_account, db):
    ann = make_account("ann")
    for digit in NON_ASCII_DIGITS:
        created = client.post(
            f"{API}/tasks", json={"title": "t", "priority": digit}, headers=ann.headers
        )
        assert_error(created, 400, "priority")
        for query, field in [
            ("priority", "priority"),
            ("page", "page"),
            ("page_size", "page_size"),
        ]:
            response = client.get(f"{API}/tasks", query_string={query: digit}, headers=ann.headers)
            assert_error(response, 400, field)
        letters = client.get(
            f"{API}/dead-letters", query_string={"page": digit}, headers=ann.headers
        )
        assert_error(letters, 400, "page")
        stream = client.get(
            f"{API}/events",
            query_string={"last_event_id": digit},
            headers=ann.headers,
            buffered=False,
        )
        try:
            assert_error(stream, 400, "Last-Event-ID")
        finally:
            stream.close()
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    assert create(client, ann, priority="7")["priority"] == 7
    assert client.get(f"{API}/tasks?page=1&page_size=5", headers=ann.headers).status_code == 200


UNSENDABLE_HEADERS = [
    {"X-Token": "a\r\nX-Injected: 1"},
    {"X-Token": "line\nbreak"},
    {"X-Token": "del\x7f"},
    {"X-Token": "\u20ac not latin-1"},
    {"X-Token\r\nX-Injected": "1"},
    {"Bad Name": "v"},
    {"X:Colon": "v"},
    {"\u00e9t\u00e9": "v"},
    {"Host": "internal.example"},
    {"Content-Length": "1"},
    {"Transfer-Encoding": "chunked"},
]


def test_headers_a_request_could_not_send_are_refused_at_create(client, make_account, db):
    ann = make_account("ann")
    for headers in UNSENDABLE_HEADERS:
        hooked = {
            "title": "t",
            "callback_url": "https://example.com/h",
            "callback_headers": headers,
        }
        assert_error(
            client.post(f"{API}/tasks", json=hooked, headers=ann.headers), 400, "callback_headers"
        )
        request = {
            "title": "t",
            "task_type": "http_request",
            "payload": {"url": "https://example.com/", "headers": headers},
        }
        assert_error(
            client.post(f"{API}/tasks", json=request, headers=ann.headers), 400, "payload.headers"
        )
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    fine = {"X-Token": "t", "Authorization": "Bearer x.y", "X-Tab": "a\tb", "X-Latin": "caf\u00e9"}
    task = create(client, ann, callback_url="https://example.com/h", callback_headers=fine)
    row = db.execute("SELECT callback_headers FROM tasks WHERE id = %s", (task["id"],)).fetchone()
    assert row["callback_headers"] == fine


PRIVATE_URLS = [
    "http://127.0.0.1/hook",
    "http://localhost:8000/x",
    "http://localhost./x",
    "http://10.0.0.1/",
    "http://192.168.1.10:8080/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data",
    "http://127.1/",
    "http://0x7f.0.0.1/",
]


def test_private_callback_urls_are_refused_at_create_like_http_request(
    client, make_account, db, monkeypatch
):
    ann = make_account("ann")
    monkeypatch.delenv("TASKQ_ALLOW_PRIVATE_URLS", raising=False)

    def create_both(url: str, expected: int):
        hooked = client.post(
            f"{API}/tasks", json={"title": "t", "callback_url": url}, headers=ann.headers
        )
        request = client.post(
            f"{API}/tasks",
            json={"title": "t", "task_type": "http_request", "payload": {"url": url}},
            headers=ann.headers,
        )
        assert (hooked.status_code, request.status_code) == (expected, expected), url
        return hooked.get_json(), request.get_json()

    for url in PRIVATE_URLS:
        hooked, request = create_both(url, 400)
        # One guard: the same refusal, word for word.
        assert hooked["field_errors"]["callback_url"] == request["field_errors"]["payload.url"]
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    monkeypatch.setenv("TASKQ_ALLOW_PRIVATE_URLS", "1")
    for url in PRIVATE_URLS[:2]:
        create_both(url, 201)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 4


def test_trigger_webhook_refuses_an_event_that_is_not_a_name(client, make_account):
    ann = make_account("ann")
    task = create(client, ann, callback_url="https://example.com/hook")
    path = f"{API}/tasks/{task['id']}/trigger-webhook"
    for event in ({}, [], ["task.failed"], 5, ""):
        response = client.post(path, json={"event": event}, headers=ann.headers)
        assert_error(response, 400, "event")
    assert_error(client.post(path, json=["task.failed"], headers=ann.headers), 400)
    assert client.post(path, json={"event": "task.failed"}, headers=ann.headers).status_code == 202
