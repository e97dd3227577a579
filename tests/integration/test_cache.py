"""The Redis detail cache of GET /tasks/{id}: hits, invalidation by every transition, races."""

from __future__ import annotations

import threading

import psycopg
import pytest

from app.cache import DELETED_VERSION, cache_key, get_cache
from app.events import get_notifier
from tests.helpers import register_account, wait_for


@pytest.fixture
def cache_app(make_app, redis_url: str):
    """The API with the shared test Redis as cache, limits off."""
    return make_app(REDIS_URL=redis_url)


def create_task(client, account, **fields) -> dict:
    """A task of ``account`` made through the API."""
    body = {"title": "t", "task_type": "echo", "payload": {"x": 1}, **fields}
    response = client.post("/api/v1/tasks", json=body, headers=account.headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["task"]


def cached_task(cache_app):
    """A registered client and a task whose detail is now in the cache."""
    client = cache_app.test_client()
    account = register_account(client)
    task = create_task(client, account)
    url = f"/api/v1/tasks/{task['id']}"
    client.get(url, headers=account.headers)
    assert client.get(url, headers=account.headers).get_json()["cached"] is True
    return client, account, task, url


def transition(database_url: str, task_id: int, status: str) -> None:
    """An operator's UPDATE in psql: the trigger writes history and notifies."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET status = %s, attempts = attempts + 1 WHERE id = %s",
            (status, task_id),
        )


def test_detail_is_cached_then_invalidated_by_a_psql_transition(cache_app, database_url):
    client = cache_app.test_client()

    account = register_account(client)
    task = create_task(client, account)
    url = f"/api/v1/tasks/{task['id']}"

    first = client.get(url, headers=account.headers).get_json()
    second = client.get(url, headers=account.headers).get_json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["task"]["status"] == "PENDING"

    batches = get_notifier(cache_app).batches
    transition(database_url, task["id"], "PROCESSING")
    wait_for(lambda: get_notifier(cache_app).batches > batches, 5, "the next notification batch")
    fresh = client.get(url, headers=account.headers).get_json()
    assert fresh == {"task": fresh["task"], "cached": False}
    assert fresh["task"]["status"] == "PROCESSING"
    # A running task is read fresh every time: its progress changes without a transition.
    assert client.get(url, headers=account.headers).get_json()["cached"] is False

    batches = get_notifier(cache_app).batches
    transition(database_url, task["id"], "COMPLETED")
    wait_for(lambda: get_notifier(cache_app).batches > batches, 5, "the next notification batch")
    done = client.get(url, headers=account.headers).get_json()
    assert done["cached"] is False and done["task"]["status"] == "COMPLETED"
    assert client.get(url, headers=account.headers).get_json()["cached"] is True


def test_another_users_read_is_404_even_when_cached(cache_app):
    client = cache_app.test_client()
    owner, other = register_account(client, "owner"), register_account(client, "other")
    task = create_task(client, owner)
    url = f"/api/v1/tasks/{task['id']}"
    client.get(url, headers=owner.headers)
    assert client.get(url, headers=owner.headers).get_json()["cached"] is True
    response = client.get(url, headers=other.headers)
    assert response.status_code == 404
    assert set(response.get_json()) == {"error", "field_errors"}


def test_a_read_that_raced_a_transition_cannot_write_back_the_older_version(cache_app):
    cache = get_cache(cache_app)
    with cache_app.app_context():
        from app.events import Change

        cache.invalidate([Change(history_id=10, task_id=7, user_id=1, status="COMPLETED")])
        # A read that took version 9 before the transition and loaded the PROCESSING row:
        assert cache.fill(7, 9, {"id": 7, "user_id": 1, "status": "PROCESSING"}) is False
        assert cache.get(7) is None
        assert cache.fill(7, 10, {"id": 7, "user_id": 1, "status": "COMPLETED"}) is True
        assert cache.get(7)["status"] == "COMPLETED"
        # An older invalidation arriving late does not tombstone the newer entry.
        cache.invalidate([Change(history_id=9, task_id=7, user_id=1, status="PROCESSING")])
        assert cache.get(7)["status"] == "COMPLETED"


def test_delete_invalidates_for_good(cache_app, database_url):
    client, account, task, url = cached_task(cache_app)
    assert client.delete(url, headers=account.headers).status_code == 200
    raw = get_cache(cache_app).client
    wait_for(
        lambda: (raw.get(cache_key(task["id"])) or b"").startswith(b"%d|" % DELETED_VERSION),
        5,
        "the delete's tombstone",
    )
    response = client.get(url, headers=account.headers)
    assert response.status_code == 404
    assert response.get_json()["error"]


def test_no_stale_read_after_the_event_is_seen(cache_app, database_url):
    """Readers hammer the detail while transitions commit; once the SSE subscriber of the
    same process has seen transition k, no read that starts afterwards returns older data."""
    client_app = cache_app
    account = register_account(client_app.test_client())
    task = create_task(client_app.test_client(), account)
    url = f"/api/v1/tasks/{task['id']}"
    notifier = get_notifier(client_app)
    with client_app.test_request_context():
        assert notifier.start()
        sub = notifier.subscribe(task_id=task["id"])
    seen = {"attempts": 0}
    stop = threading.Event()
    stale: list[tuple[int, int]] = []
    reads = [0]

    def reader() -> None:
        client = client_app.test_client()
        while not stop.is_set():
            floor = seen["attempts"]
            body = client.get(url, headers=account.headers).get_json()
            reads[0] += 1
            if body["task"]["attempts"] < floor:
                stale.append((floor, body["task"]["attempts"]))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for k in range(1, 21):
                status = "PROCESSING" if k % 2 else "RETRYING"
                conn.execute(
                    "UPDATE tasks SET status = %s, attempts = %s WHERE id = %s",
                    (status, k, task["id"]),
                )
                event = sub.get(timeout=30)
                assert event.status == status
                seen["attempts"] = k
                done = reads[0]
                wait_for(lambda done=done: reads[0] > done, 10, f"a read after transition {k}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        notifier.unsubscribe(sub)
    assert stale == []


def test_listener_killed_ends_streams_drops_the_cache_and_listens_again(cache_app, database_url):
    client, account, task, url = cached_task(cache_app)
    notifier = get_notifier(cache_app)
    with cache_app.test_request_context():
        sub = notifier.subscribe(task_id=task["id"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'taskq-notifier' AND datname = current_database()"
        ).fetchone()[0]
    assert killed == 1
    from app.events import CLOSE

    assert sub.get(timeout=5) is CLOSE  # the stream ends; its client resumes with Last-Event-ID
    wait_for(lambda: notifier.healthy, 10, "the notifier to listen again")
    assert client.get(url, headers=account.headers).get_json()["cached"] is False
    with cache_app.test_request_context():
        sub = notifier.subscribe(task_id=task["id"])
    transition(database_url, task["id"], "PROCESSING")
    assert sub.get(timeout=5).status == "PROCESSING"
    notifier.unsubscribe(sub)
