"""Rate limits: per user on the API, per IP on login, failed logins per account; Redis gone."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from taskq.lockout import Locked, LoginFailures, account_key
from tests.helpers import LIMITS, account, free_port, login, wait_for


@pytest.fixture
def app_with_limits(make_app, redis_url: str):
    """The API with the test limits on and their counters in Redis."""
    return make_app(REDIS_URL=redis_url, **LIMITS)


def assert_429(response) -> None:
    assert response.status_code == 429
    body = response.get_json()
    assert set(body) == {"error", "field_errors"} and "Too many requests" in body["error"]
    assert int(response.headers["Retry-After"]) >= 0
    assert response.headers["X-RateLimit-Limit"]
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_default_limit_is_per_user(app_with_limits, database_url):
    client = app_with_limits.test_client()
    ann, bob = (
        account(app_with_limits, database_url, "ann"),
        account(app_with_limits, database_url, "bob"),
    )
    for _ in range(5):
        ok = client.get("/api/v1/tasks", headers=ann)
        assert ok.status_code == 200
        assert ok.headers["X-RateLimit-Limit"] == "5"
        assert "Retry-After" not in ok.headers  # only a 429 or a 503 says "wait, then again"
    assert_429(client.get("/api/v1/tasks", headers=ann))
    assert client.get("/api/v1/tasks", headers=bob).status_code == 200
    assert client.get("/healthz").status_code == 200  # outside /api: never limited


def test_headers_count_down_from_the_hit_itself(app_with_limits, database_url):
    """The window in the headers is the one the hit saw (one Redis call gives both)."""
    client = app_with_limits.test_client()
    ann = account(app_with_limits, database_url, "ann")
    before = time.time()
    remaining = []
    for _ in range(5):
        ok = client.get("/api/v1/tasks", headers=ann)
        remaining.append(ok.headers["X-RateLimit-Remaining"])
        reset = int(ok.headers["X-RateLimit-Reset"])
        assert before + 59 <= reset <= time.time() + 61  # the oldest hit's time + 1 minute
    assert remaining == ["4", "3", "2", "1", "0"]
    assert_429(client.get("/api/v1/tasks", headers=ann))


@pytest.fixture
def host_clock(monkeypatch) -> list[float]:
    """This process's clock set off by ``host_clock[0]`` seconds: an API host whose clock
    is wrong. The limits run on Redis's clock, so it must not matter."""
    skew = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew[0])
    return skew


def test_api_hosts_whose_clocks_differ_share_one_request_window(
    app_with_limits, database_url, host_clock
):
    client = app_with_limits.test_client()
    ann = account(app_with_limits, database_url, "ann")
    for skew in (-1200.0, -1200.0, -1200.0, 0.0, 0.0):  # a host 20 minutes slow, then one on time
        host_clock[0] = skew
        assert client.get("/api/v1/tasks", headers=ann).status_code == 200
    for skew in (0.0, -1200.0):  # the host clocks stamped the hits before: the 6th went through
        host_clock[0] = skew
        limited = client.get("/api/v1/tasks", headers=ann)
        assert_429(limited)
        assert 0 <= int(limited.headers["Retry-After"]) <= 60  # counted on the host's own clock


def test_api_hosts_whose_clocks_differ_share_one_login_failure_budget(redis_url, host_clock):
    failures = LoginFailures(redis_url, [(4, 900.0)])
    key = account_key(1)
    for skew in (-1200.0, -1200.0, 0.0, 0.0):
        host_clock[0] = skew
        failures.reserve(key)
    for skew in (0.0, -1200.0, 1200.0):  # before, the host on time dropped the slow one's failures
        host_clock[0] = skew
        with pytest.raises(Locked) as locked:
            failures.reserve(key)
        assert 0 < locked.value.retry_after <= 900


def assert_locked(response) -> None:
    """429 for the account: the error shape and a Retry-After within the 1-minute window."""
    assert response.status_code == 429, response.get_json()
    body = response.get_json()
    assert set(body) == {"error", "field_errors"} and "failed logins" in body["error"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


@pytest.fixture(params=["redis", "memory"])
def login_app(request, make_app):
    """The limited API with failure counters in Redis, or in memory (no REDIS_URL)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return make_app(REDIS_URL=url, **LIMITS)


def test_login_failures_are_limited_per_account_across_ips(login_app):
    client = login_app.test_client()
    for n in range(3):
        assert login(client, "victim", f"10.0.0.{n}").status_code == 401
    assert_locked(login(client, "victim", "10.0.0.99"))
    assert login(client, "someone-else", "10.0.0.98").status_code == 401


def test_username_and_email_share_one_account_budget(login_app, database_url):
    """Alternating the two names of an account does not buy more guesses."""
    client = login_app.test_client()
    account(login_app, database_url, "ann")
    names = ["ann", "ann@example.com", "ANN@Example.com"]
    for n, name in enumerate(names):
        assert login(client, name, f"10.0.1.{n}").status_code == 401
    for n, name in enumerate(["ann", "Ann", "ann@example.com"]):
        assert_locked(login(client, name, f"10.0.2.{n}"))
    # Locked means locked: the right password waits too, or a guesser would learn it.
    assert_locked(login(client, "ann", "10.0.2.9", password="Sturdy-Lamp-42"))


def test_only_failed_logins_count_against_the_account(login_app, database_url):
    """The owner's own logins never lock the account (only per-IP limits apply to them)."""
    client = login_app.test_client()
    account(login_app, database_url, "ann")
    for n in range(6):
        name = "ann" if n % 2 else "ann@example.com"
        assert login(client, name, f"10.0.3.{n}", password="Sturdy-Lamp-42").status_code == 200
    for n in range(2):
        assert login(client, "ann", f"10.0.4.{n}").status_code == 401
    assert login(client, "ann", "10.0.4.8", password="Sturdy-Lamp-42").status_code == 200
    assert login(client, "ann", "10.0.4.9").status_code == 401  # the 3rd failure
    assert_locked(login(client, "ann", "10.0.5.1", password="Sturdy-Lamp-42"))


def test_register_does_not_spend_an_accounts_login_budget(app_with_limits, database_url):
    """A stranger registering the owner's name (400: taken) cannot lock the owner out."""
    client = app_with_limits.test_client()
    account(app_with_limits, database_url, "ann")
    body = {"username": "ann", "email": "x@example.com", "password": "Sturdy-Lamp-42"}
    for n in range(5):
        response = client.post(
            "/api/v1/auth/register",
            json={**body, "password2": body["password"]},
            headers={"X-Forwarded-For": f"10.0.6.{n}"},
        )
        assert response.status_code == 400
    assert login(client, "ann", "10.0.6.99", password="Sturdy-Lamp-42").status_code == 200


def test_concurrent_guesses_cannot_overrun_the_account_budget(app_with_limits, database_url):
    """Each check reserves its slot before the password is checked: exactly 3 get through."""
    account(app_with_limits, database_url, "ann")

    def guess(n: int) -> int:
        return login(app_with_limits.test_client(), "ann", f"10.0.7.{n}").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(guess, range(12)))
    assert sorted(statuses) == [401] * 3 + [429] * 9


def test_login_is_limited_per_ip_across_usernames(app_with_limits):
    client = app_with_limits.test_client()
    for n in range(3):
        assert login(client, f"user{n}", "192.0.2.7").status_code == 401
    assert_429(login(client, "user9", "192.0.2.7"))
    # ProxyFix: another client address behind the same proxy has its own budget.
    assert login(client, "user10", "192.0.2.8").status_code == 401


def test_the_dashboards_cookie_login_spends_the_same_login_budget(app_with_limits, database_url):
    """The sign-in form posts to /auth/login with ``cookies: true``: same endpoint, same limits;
    and a cookie session is limited per user, like a bearer client."""
    client = app_with_limits.test_client()
    account(app_with_limits, database_url, "ann")
    account(app_with_limits, database_url, "bob")
    body = {"username": "ann", "password": "Sturdy-Lamp-42", "cookies": True}
    for _ in range(3):
        assert client.post("/api/v1/auth/login", json=body).status_code == 200
    assert_429(client.post("/api/v1/auth/login", json=body))  # the address's budget
    # Failed guesses lock the account for the form as well.
    for n in range(3):
        assert login(client, "bob", f"10.0.3.{n}").status_code == 401
    elsewhere = {"X-Forwarded-For": "10.0.3.9"}
    bob = {**body, "username": "bob"}
    assert_locked(client.post("/api/v1/auth/login", json=bob, headers=elsewhere))
    # The cookies of the logins that passed identify ann for the default, per-user limit:
    # anonymous calls from the same address spend the address's budget, not hers.
    anonymous = app_with_limits.test_client()
    for _ in range(5):
        assert anonymous.get("/api/v1/tasks").status_code == 401
    assert_429(anonymous.get("/api/v1/tasks"))
    for _ in range(5):
        assert client.get("/api/v1/tasks").status_code == 200
    assert_429(client.get("/api/v1/tasks"))


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of this test alone, so the test may kill it (never the shared one)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, 5, f"the private redis-server on port {port}")
    except AssertionError:
        proc.kill()
        raise
    finally:
        client.close()
    yield url, proc
    proc.kill()
    proc.wait()


def test_redis_stopped_mid_test_degrades_cache_and_limits(make_app, database_url, private_redis):
    url, proc = private_redis
    application = make_app(REDIS_URL=url, **{**LIMITS, "TASKQ_RATELIMIT_DEFAULT": "8/minute"})
    client = application.test_client()
    ann = account(application, database_url, "ann")
    created = client.post("/api/v1/tasks", json={"title": "t", "task_type": "echo"}, headers=ann)
    detail = f"/api/v1/tasks/{created.get_json()['task']['id']}"
    assert client.get(detail, headers=ann).get_json()["cached"] is False
    assert client.get(detail, headers=ann).get_json()["cached"] is True
    assert client.get("/readyz").get_json()["checks"]["redis"] == "ok"

    proc.kill()
    proc.wait()

    served = [client.get(detail, headers=ann) for _ in range(5)]
    assert [r.status_code for r in served] == [200] * 5
    assert {r.get_json()["cached"] for r in served} == {False}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["redis"].startswith("unavailable")
    # The in-memory fallback keeps limiting (8/minute, 3 spent before Redis died).
    statuses = [client.get(detail, headers=ann).status_code for _ in range(10)]
    assert statuses.count(200) >= 1 and statuses[-1] == 429
