"""Stream credentials: a stream token dies with its login; the guard's check of open streams."""

from __future__ import annotations

import pytest

from app.auth import password_version
from app.events import create_stream_token
from app.streamguard import Binding, get_guard
from tests.integration.test_auth import assert_error

API = "/api/v1"


def stream_token(client, account) -> str:
    response = client.post(f"{API}/events/token", headers=account.headers)
    assert response.status_code == 200
    return response.get_json()["token"]


def open_status(client, path: str, token: str) -> int:
    """The status an events endpoint answers with (the stream itself is not read)."""
    response = client.get(path, query_string={"token": token})
    status = response.status_code
    response.close()
    return status


@pytest.mark.parametrize("path", ["/events", "/tasks/{task}/events"])
def test_a_stream_token_minted_before_logout_is_refused(client, make_account, path):
    ann = make_account("ann")
    task = client.post(f"{API}/tasks", json={"title": "t"}, headers=ann.headers).get_json()
    path = API + path.format(task=task["task"]["id"])
    token = stream_token(client, ann)
    assert open_status(client, path, token) == 200
    assert client.post(f"{API}/auth/logout", headers=ann.headers).status_code == 200
    body = assert_error(client.get(path, query_string={"token": token}), 401)
    assert "revoked" in body["error"]


def test_a_stream_token_minted_before_a_password_change_is_refused(client, make_account):
    ann = make_account("ann")
    token = stream_token(client, ann)
    new = "Brand-New-Kettle-7"
    body = {"old_password": ann.password, "new_password": new, "new_password2": new}
    changed = client.post(f"{API}/auth/change-password", json=body, headers=ann.headers)
    assert changed.status_code == 200
    assert_error(client.get(f"{API}/events", query_string={"token": token}), 401)
    fresh = {"Authorization": f"Bearer {changed.get_json()['tokens']['access']}"}
    again = client.post(f"{API}/events/token", headers=fresh).get_json()["token"]
    assert open_status(client, f"{API}/events", again) == 200


def test_a_stream_token_without_its_login_is_refused(app, client, make_account):
    """A token that names no access token (as minted before this check) cannot open a stream."""
    import jwt

    from app.events import STREAM_SCOPE, stream_token_key

    ann = make_account("ann")
    claims = {"sub": str(ann.id), "scope": STREAM_SCOPE, "exp": 2**31}
    bare = jwt.encode(claims, stream_token_key(app.config["JWT_SECRET_KEY"]), "HS256")
    assert_error(client.get(f"{API}/events", query_string={"token": bare}), 401)


def test_the_guard_closes_exactly_the_revoked_streams_in_one_check(app, client, make_account, db):
    ann, bob, cid, dan = (make_account(name) for name in ("ann", "bob", "cid", "dan"))

    def binding(account, jti: str | None = None, pv_delta: int = 0) -> Binding:
        row = db.execute(
            "SELECT password_changed_at FROM users WHERE id = %s", (account.id,)
        ).fetchone()
        pv = password_version(row["password_changed_at"]) + pv_delta
        return Binding(account.id, jti or f"jti-{account.username}", pv)

    streams = {
        "ann live": binding(ann),
        "ann live, second stream": binding(ann),
        "ann logged out": binding(ann, jti="jti-revoked"),
        "bob live": binding(bob),
        "bob old password": binding(bob, pv_delta=-1),
        "cid inactive": binding(cid),
        "dan deleted": binding(dan),
    }
    db.execute(
        "INSERT INTO token_blocklist (jti, token_type, user_id, expires_at) "
        "VALUES ('jti-revoked', 'access', %s, now() + interval '1 hour')",
        (ann.id,),
    )
    db.execute("UPDATE users SET is_active = false WHERE id = %s", (cid.id,))
    db.execute("DELETE FROM users WHERE id = %s", (dan.id,))
    closed: list[str] = []
    guard = get_guard(app)
    watched = {name: (b, lambda name=name: closed.append(name)) for name, b in streams.items()}
    guard.check(watched)
    assert sorted(closed) == ["ann logged out", "bob old password", "cid inactive", "dan deleted"]
    assert guard.checks == 1


def test_stream_tokens_name_their_login(app, make_account):
    """The claims a stream token carries: its user, the access token's jti and pv."""
    import jwt

    from app.events import decode_stream_token, stream_token_key

    ann = make_account("ann")
    with app.test_request_context():
        token = create_stream_token(Binding(ann.id, "abc", 42), 60)
        claims = jwt.decode(
            token, stream_token_key(app.config["JWT_SECRET_KEY"]), algorithms=["HS256"]
        )
        assert (claims["sub"], claims["atj"], claims["pv"]) == (str(ann.id), "abc", 42)
        assert decode_stream_token(token) == Binding(ann.id, "abc", 42)
