"""Accounts and tokens through the real API on a real Postgres."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from flask_jwt_extended import create_access_token, decode_token

from app.auth import password_version
from app.db import fetch_one
from tests.helpers import assert_error, wait_for

API = "/api/v1/auth"


def test_register_returns_user_and_working_tokens(client, db):
    body = {
        "username": "john_doe",
        "email": "john@example.com",
        "password": "SecurePass123!",
        "password_confirm": "SecurePass123!",
        "first_name": "John",
        "last_name": "Doe",
    }
    response = client.post(f"{API}/register/", json=body)
    assert response.status_code == 201
    data = response.get_json()
    assert data["message"] == "User registered successfully"
    assert set(data["tokens"]) == {"access", "refresh"}
    user = data["user"]
    assert {k: user[k] for k in ("username", "email", "first_name", "last_name", "is_admin")} == {
        "username": "john_doe",
        "email": "john@example.com",
        "first_name": "John",
        "last_name": "Doe",
        "is_admin": False,
    }
    assert "password" not in str(data["user"])
    stored = db.execute("SELECT password_hash FROM users WHERE id = %s", (user["id"],)).fetchone()
    assert stored["password_hash"].startswith("scrypt:")
    headers = {"Authorization": f"Bearer {data['tokens']['access']}"}
    profile = client.get(f"{API}/profile", headers=headers)
    assert profile.status_code == 200
    assert profile.get_json()["user"]["id"] == user["id"]


BAD_REGISTRATIONS = [
    ({"password2": "Different-Lamp-42"}, ["password2"]),
    ({"username": "ANN"}, ["username"]),
    ({"email": "Ann@Example.com"}, ["email"]),
    ({"username": "Ann", "email": "ANN@example.com"}, ["username", "email"]),
    ({"password": "short1", "password2": "short1"}, ["password"]),
    ({"password": "1234567890123", "password2": "1234567890123"}, ["password"]),
    ({"password": "password123", "password2": "password123"}, ["password"]),
    ({"password": "bobby_tables9", "password2": "bobby_tables9"}, ["password"]),
    ({"username": None}, ["username"]),
    ({"email": "not-an-email"}, ["email"]),
    ({"username": "has space"}, ["username"]),
    ({"nickname": "x"}, ["nickname"]),
]


def test_register_refuses_bad_data(client, make_account, db):
    make_account("ann")
    for changes, fields in BAD_REGISTRATIONS:
        body = {
            "username": "bobby_tables",
            "email": "bobby@example.com",
            "password": "Sturdy-Lamp-42",
            "password2": "Sturdy-Lamp-42",
            **changes,
        }
        body = {k: v for k, v in body.items() if v is not None}
        assert_error(client.post(f"{API}/register", json=body), 400, *fields)
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1


def test_login_by_username_or_email_and_token_alias(client, make_account):
    ann = make_account("ann")
    for path, login in ((f"{API}/login", "ANN"), (f"{API}/token", "ann@example.com")):
        response = client.post(path, json={"username": login, "password": ann.password})
        assert response.status_code == 200
        data = response.get_json()
        assert data["user"]["id"] == ann.id and data["message"] == "Login successful"
        assert (
            client.get(f"{API}/profile", headers=bearer(data["tokens"]["access"])).status_code
            == 200
        )


def test_login_refuses_wrong_credentials(client, make_account):
    ann = make_account("ann")
    wrong = client.post(f"{API}/login", json={"username": "ann", "password": "nope-nope-1"})
    assert_error(wrong, 401)
    nobody = client.post(f"{API}/login", json={"username": "zed", "password": ann.password})
    assert_error(nobody, 401)
    assert_error(client.post(f"{API}/login", json={"username": "ann"}), 400, "password")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_refresh_rotates_and_refuses_reuse(client, make_account):
    ann = make_account("ann")
    first = client.post(f"{API}/token/refresh", json={"refresh": ann.refresh})
    assert first.status_code == 200
    tokens = first.get_json()["tokens"]
    assert tokens["refresh"] != ann.refresh
    assert client.get(f"{API}/profile", headers=bearer(tokens["access"])).status_code == 200
    # The old refresh token was revoked by the rotation.
    assert_error(client.post(f"{API}/token/refresh", json={"refresh": ann.refresh}), 401)
    # The new one works once.
    assert (
        client.post(f"{API}/token/refresh", json={"refresh": tokens["refresh"]}).status_code == 200
    )


def test_refresh_refuses_access_tokens_and_garbage(client, make_account):
    ann = make_account("ann")
    assert_error(client.post(f"{API}/token/refresh", json={"refresh": ann.access}), 401, "refresh")
    assert_error(client.post(f"{API}/token/refresh", json={"refresh": "x.y.z"}), 401, "refresh")
    assert_error(client.post(f"{API}/token/refresh", json={}), 400, "refresh")


def test_verify(client, make_account):
    ann = make_account("ann")
    response = client.post(f"{API}/token/verify", json={"token": ann.access})
    assert response.status_code == 200
    data = response.get_json()
    assert data["valid"] is True and data["token_type"] == "access" and data["user_id"] == ann.id
    assert_error(client.post(f"{API}/token/verify", json={"token": "garbage"}), 401, "token")
    assert_error(client.post(f"{API}/token/verify", json={"token": 5}), 400, "token")


def test_logout_revokes_access_and_refresh(client, make_account, db):
    ann = make_account("ann")
    response = client.post(f"{API}/logout", json={"refresh": ann.refresh}, headers=ann.headers)
    assert response.status_code == 200
    assert response.get_json() == {"message": "Successfully logged out"}
    rows = db.execute("SELECT token_type FROM token_blocklist ORDER BY token_type").fetchall()
    assert [r["token_type"] for r in rows] == ["access", "refresh"]
    body = assert_error(client.get(f"{API}/profile", headers=ann.headers), 401)
    assert "revoked" in body["error"]
    assert_error(client.post(f"{API}/token/refresh", json={"refresh": ann.refresh}), 401)
    assert_error(client.post(f"{API}/token/verify", json={"token": ann.access}), 401)


def test_logout_errors(client, make_account):
    ann = make_account("ann")
    bob = make_account("bob")
    assert_error(client.post(f"{API}/logout"), 401)
    not_mine = client.post(f"{API}/logout", json={"refresh": bob.refresh}, headers=ann.headers)
    assert_error(not_mine, 400, "refresh")
    # Without a body only the access token is revoked.
    assert client.post(f"{API}/logout", headers=ann.headers).status_code == 200
    assert client.post(f"{API}/token/refresh", json={"refresh": ann.refresh}).status_code == 200


def test_profile_get_and_patch(client, make_account):
    ann = make_account("ann")
    make_account("bob")
    changes = {"first_name": "Ann", "last_name": "Lee", "email": "ann.lee@example.com"}
    response = client.patch(f"{API}/profile", json=changes, headers=ann.headers)
    assert response.status_code == 200
    user = response.get_json()["user"]
    assert {k: user[k] for k in changes} == changes
    assert client.get(f"{API}/profile", headers=ann.headers).get_json()["user"] == user
    taken = client.patch(f"{API}/profile", json={"email": "BOB@example.com"}, headers=ann.headers)
    assert_error(taken, 400, "email")
    assert_error(client.patch(f"{API}/profile", json={"username": "x"}, headers=ann.headers), 400)
    assert_error(client.get(f"{API}/profile"), 401)


def test_change_password_revokes_older_tokens(client, make_account):
    ann = make_account("ann")
    body = {
        "old_password": ann.password,
        "new_password": "Brand-New-Kettle-7",
        "new_password_confirm": "Brand-New-Kettle-7",
    }
    response = client.post(f"{API}/change-password", json=body, headers=ann.headers)
    assert response.status_code == 200
    tokens = response.get_json()["tokens"]
    assert_error(client.get(f"{API}/profile", headers=ann.headers), 401)
    assert_error(client.post(f"{API}/token/refresh", json={"refresh": ann.refresh}), 401)
    assert client.get(f"{API}/profile", headers=bearer(tokens["access"])).status_code == 200
    old_login = client.post(f"{API}/login", json={"username": "ann", "password": ann.password})
    assert_error(old_login, 401)
    login = {"username": "ann", "password": "Brand-New-Kettle-7"}
    assert client.post(f"{API}/login", json=login).status_code == 200


def test_change_password_errors(client, make_account):
    ann = make_account("ann")
    wrong_old = {"old_password": "nope", "new_password": "Brand-New-Kettle-7"}
    wrong_old["new_password2"] = wrong_old["new_password"]
    response = client.post(f"{API}/change-password", json=wrong_old, headers=ann.headers)
    assert_error(response, 400, "old_password")
    weak = {"old_password": ann.password, "new_password": "12345678", "new_password2": "12345678"}
    assert_error(
        client.post(f"{API}/change-password", json=weak, headers=ann.headers), 400, "new_password"
    )
    assert_error(client.post(f"{API}/change-password", json=weak), 401)


def test_expired_and_orphaned_tokens_get_401(app, client, make_account, db):
    ann = make_account("ann")
    with app.app_context():
        expired = create_access_token(str(ann.id), expires_delta=timedelta(seconds=-5))
    body = assert_error(client.get(f"{API}/profile", headers=bearer(expired)), 401)
    assert "expired" in body["error"]
    assert_error(client.get(f"{API}/profile", headers=bearer("not.a.jwt")), 401)
    assert_error(client.get(f"{API}/profile", headers={"Authorization": "Token abc"}), 401)
    assert_error(client.get(f"{API}/profile", headers=bearer(ann.refresh)), 401)
    db.execute("DELETE FROM users WHERE id = %s", (ann.id,))
    assert_error(client.get(f"{API}/profile", headers=ann.headers), 401)


@pytest.mark.slow
def test_a_token_decoded_once_still_expires_on_time(app, client, make_account):
    ann = make_account("ann")
    with app.app_context():
        user = fetch_one("get_user", {"user_id": ann.id})
        claims = {"pv": password_version(user["password_changed_at"])}
        token = create_access_token(
            str(ann.id), expires_delta=timedelta(seconds=1), additional_claims=claims
        )
        expires = decode_token(token)["exp"]
    assert client.get(f"{API}/profile", headers=bearer(token)).status_code == 200
    assert client.get(f"{API}/profile", headers=bearer(token)).status_code == 200  # cached claims
    wait_for(lambda: time.time() > expires + 0.1, 5, "the token's expiry to pass")
    body = assert_error(client.get(f"{API}/profile", headers=bearer(token)), 401)
    assert "expired" in body["error"]
