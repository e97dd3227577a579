"""Cookie sessions (the dashboard): HttpOnly cookies, double-submit CSRF, refresh, logout.

Bearer-header clients are the other half: they must not notice any of it.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest

from tests.conftest import close_app, register_account
from tests.integration.test_auth import assert_error

API = "/api/v1"
PASSWORD = "Sturdy-Lamp-42"
CSRF_MESSAGE = "Missing or wrong CSRF token"


def set_cookies(response) -> dict[str, dict[str, str]]:
    """The Set-Cookie headers of a response: {name: {value, attribute: value, ...}}."""
    found = {}
    for header in response.headers.getlist("Set-Cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            found[name] = {
                "value": morsel.value,
                "path": morsel["path"],
                "samesite": morsel["samesite"],
                "httponly": bool(morsel["httponly"]),
                "secure": bool(morsel["secure"]),
            }
    return found


def cookie_login(client, username: str = "ann"):
    """Log in with ``cookies: true``; the response (the client keeps the cookies)."""
    response = client.post(
        f"{API}/auth/login", json={"username": username, "password": PASSWORD, "cookies": True}
    )
    assert response.status_code == 200, response.get_json()
    return response


def csrf(client, name: str = "csrf_access_token") -> dict[str, str]:
    """The double-submit header: the readable CSRF cookie's value."""
    cookie = client.get_cookie(name, path="/")
    assert cookie is not None, f"no {name} cookie"
    return {"X-CSRF-TOKEN": cookie.value}


def test_cookie_login_sets_httponly_strict_cookies_and_no_tokens_in_the_body(client):
    register_account(client, "ann", PASSWORD)
    response = cookie_login(client)
    body = response.get_json()
    assert set(body) == {"user", "message"}  # the page never sees a token
    assert body["user"]["username"] == "ann"
    cookies = set_cookies(response)
    for name in ("access_token_cookie", "refresh_token_cookie"):
        assert cookies[name]["httponly"] is True, name
        assert cookies[name]["samesite"] == "Strict", name
        assert cookies[name]["secure"] is False  # TASKQ_ENV=test: plain http allowed
    for name in ("csrf_access_token", "csrf_refresh_token"):
        assert cookies[name]["httponly"] is False  # the page reads these to send them back
    assert cookies["refresh_token_cookie"]["path"] == "/api/v1/auth/"
    profile = client.get(f"{API}/auth/profile")  # a read needs no CSRF header
    assert profile.status_code == 200
    assert profile.get_json()["user"]["username"] == "ann"


def test_a_cookie_write_without_the_csrf_header_is_refused_in_the_error_shape(client, db):
    register_account(client, "ann", PASSWORD)
    cookie_login(client)
    task = {"title": "by cookie", "task_type": "echo"}
    missing = assert_error(client.post(f"{API}/tasks", json=task), 401)
    assert missing["error"].startswith(CSRF_MESSAGE)
    wrong = client.post(f"{API}/tasks", json=task, headers={"X-CSRF-TOKEN": "not-it"})
    assert assert_error(wrong, 401)["error"].startswith(CSRF_MESSAGE)
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 0
    created = client.post(f"{API}/tasks", json=task, headers=csrf(client))
    assert created.status_code == 201, created.get_json()
    # The other state-changing methods are guarded the same way.
    task_id = created.get_json()["task"]["id"]
    assert_error(client.delete(f"{API}/tasks/{task_id}"), 401)
    assert_error(client.post(f"{API}/events/token"), 401)
    assert client.post(f"{API}/events/token", headers=csrf(client)).status_code == 200
    assert client.delete(f"{API}/tasks/{task_id}", headers=csrf(client)).status_code == 200


def test_bearer_clients_need_no_csrf_header_even_beside_a_cookie(app, client):
    ann = register_account(client, "ann", PASSWORD)
    task = {"title": "by header", "task_type": "echo"}
    assert client.post(f"{API}/tasks", json=task, headers=ann.headers).status_code == 201
    # A browser-style client with someone's cookies still authenticates by its header.
    register_account(client, "bob", PASSWORD)
    cookie_login(client, "bob")
    response = client.post(f"{API}/tasks", json=task, headers=ann.headers)
    assert response.status_code == 201
    assert response.get_json()["task"]["user_id"] == ann.id
    # And the body keeps the tokens for them.
    login = client.post(f"{API}/auth/login", json={"username": "ann", "password": PASSWORD})
    assert set(login.get_json()["tokens"]) == {"access", "refresh"}
    assert "access_token_cookie" not in set_cookies(login)


def test_a_cookie_refresh_rotates_and_the_old_refresh_cookie_is_refused(client):
    register_account(client, "ann", PASSWORD)
    cookie_login(client)
    old_refresh = client.get_cookie("refresh_token_cookie", path="/api/v1/auth/").value
    old_access = client.get_cookie("access_token_cookie").value
    refresh_csrf = csrf(client, "csrf_refresh_token")
    assert_error(client.post(f"{API}/auth/token/refresh"), 401)  # no CSRF header
    response = client.post(f"{API}/auth/token/refresh", headers=refresh_csrf)
    assert response.status_code == 200, response.get_json()
    assert set(response.get_json()) == {"user", "message"}
    new_access = client.get_cookie("access_token_cookie").value
    assert new_access != old_access
    assert client.get(f"{API}/auth/profile").status_code == 200
    # Replaying the old refresh cookie is refused: it was revoked by the rotation.
    client.set_cookie("refresh_token_cookie", old_refresh, path="/api/v1/auth/")
    replay = client.post(f"{API}/auth/token/refresh", headers=refresh_csrf)
    assert assert_error(replay, 401)["error"] == "Token has been revoked."


def test_cookie_logout_clears_the_cookies_and_revokes_both_tokens(client):
    register_account(client, "ann", PASSWORD)
    cookie_login(client)
    access = client.get_cookie("access_token_cookie").value
    refresh = client.get_cookie("refresh_token_cookie", path="/api/v1/auth/").value
    access_csrf, refresh_csrf = csrf(client), csrf(client, "csrf_refresh_token")
    assert_error(client.post(f"{API}/auth/logout"), 401)  # CSRF applies to logout too
    response = client.post(f"{API}/auth/logout", headers=access_csrf)
    assert response.status_code == 200, response.get_json()
    cleared = set_cookies(response)
    for name in ("access_token_cookie", "refresh_token_cookie", "csrf_access_token"):
        assert cleared[name]["value"] == ""
    assert client.get_cookie("access_token_cookie") is None
    assert_error(client.get(f"{API}/auth/profile"), 401)
    # Copies of the cookies kept elsewhere are dead too.
    client.set_cookie("access_token_cookie", access)
    replayed = assert_error(client.get(f"{API}/auth/profile"), 401)
    assert replayed["error"] == "Token has been revoked."
    client.set_cookie("refresh_token_cookie", refresh, path="/api/v1/auth/")
    again = client.post(f"{API}/auth/token/refresh", headers=refresh_csrf)
    assert assert_error(again, 401)["error"] == "Token has been revoked."


def test_register_and_change_password_keep_a_cookie_session_in_cookies(client):
    body = {
        "username": "cat",
        "email": "cat@example.com",
        "password": PASSWORD,
        "password2": PASSWORD,
        "cookies": True,
    }
    response = client.post(f"{API}/auth/register", json=body)
    assert response.status_code == 201, response.get_json()
    assert "tokens" not in response.get_json()
    assert client.get(f"{API}/auth/profile").status_code == 200
    old_access = client.get_cookie("access_token_cookie").value
    change = {
        "old_password": PASSWORD,
        "new_password": "Other-Lamp-77",
        "new_password2": "Other-Lamp-77",
    }
    changed = client.post(f"{API}/auth/change-password", json=change, headers=csrf(client))
    assert changed.status_code == 200, changed.get_json()
    assert "tokens" not in changed.get_json()
    assert client.get_cookie("access_token_cookie").value != old_access
    assert client.get(f"{API}/auth/profile").status_code == 200  # the new cookies work


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_secure_flag_follows_taskq_cookie_secure(database_url, monkeypatch, setting):
    from app import create_app

    monkeypatch.setenv("TASKQ_COOKIE_SECURE", setting)
    application = create_app(
        {"DATABASE_URL": database_url, "TASKQ_ENV": "test", "RATELIMIT_ENABLED": False}
    )
    try:
        client = application.test_client()
        register_account(client, "ann", PASSWORD)
        cookies = set_cookies(cookie_login(client))
        assert cookies["access_token_cookie"]["secure"] is (setting == "1")
        assert cookies["csrf_access_token"]["secure"] is (setting == "1")
    finally:
        close_app(application)
