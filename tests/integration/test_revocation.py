"""Kept token states (``app.revocation``): kept only while listening, dropped by
``taskq_credentials``, never kept over a revocation that raced the read."""

from __future__ import annotations

import psycopg
import pytest

import app.revocation as revocation
from app.events import get_notifier
from app.revocation import get_token_states
from tests.helpers import API, register_account, wait_for


@pytest.fixture
def listening_app(make_app):
    """The API with its LISTEN connection up, keeping token states for 300 s."""
    application = make_app(TASKQ_TOKEN_STATE_SECONDS=300)
    with application.app_context():
        assert get_notifier(application).start()
    return application


def profile_status(client, account) -> int:
    return client.get(f"{API}/auth/profile", headers=account.headers).status_code


def test_a_kept_state_serves_until_a_notification_drops_it(listening_app, database_url):
    client = listening_app.test_client()
    ann = register_account(client)
    states = get_token_states(listening_app)
    assert profile_status(client, ann) == 200
    reads = states.reads
    assert profile_status(client, ann) == 200
    assert states.reads == reads  # kept: no query
    drops = states.drops
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET is_active = false WHERE id = %s", (ann.id,))
    wait_for(lambda: states.drops > drops, 5, "the credentials notification")
    assert profile_status(client, ann) == 401
    assert states.reads == reads + 1


def test_without_the_listener_every_request_reads_postgres(make_app):
    application = make_app(TASKQ_TOKEN_STATE_SECONDS=300)  # nobody starts its notifier
    client = application.test_client()
    ann = register_account(client)
    states = get_token_states(application)
    reads = states.reads
    for _ in range(3):
        assert profile_status(client, ann) == 200
    assert states.reads == reads + 3


def test_a_zero_lifetime_reads_every_time_even_while_listening(make_app):
    application = make_app(TASKQ_TOKEN_STATE_SECONDS=0)
    with application.app_context():
        assert get_notifier(application).start()
    client = application.test_client()
    ann = register_account(client)
    states = get_token_states(application)
    reads = states.reads
    assert profile_status(client, ann) == 200
    assert profile_status(client, ann) == 200
    assert states.reads == reads + 2


def test_a_revocation_committed_during_the_read_is_not_kept(
    listening_app, database_url, monkeypatch
):
    client = listening_app.test_client()
    ann = register_account(client)
    states = get_token_states(listening_app)
    real_fetch = revocation.fetch_one
    armed = [True]

    def read_then_revoke(name, params):
        row = real_fetch(name, params)  # still active in this snapshot
        if armed:
            armed.clear()
            drops = states.drops
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE users SET is_active = false WHERE id = %s", (ann.id,))
            wait_for(lambda: states.drops > drops, 5, "the credentials notification")
        return row

    monkeypatch.setattr(revocation, "fetch_one", read_then_revoke)
    assert profile_status(client, ann) == 200  # read before the revocation committed
    assert profile_status(client, ann) == 401  # that read was not kept
