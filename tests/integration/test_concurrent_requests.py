"""Two requests (or a request and a worker's or an operator's statement) at the same time.

Each race is forced, not hoped for: a second connection holds a row or table lock (or an
open transaction) while a request runs in a thread; once that request waits on the lock
(pg_stat_activity says so), the other side does its part and commits, and the request
goes on with what it read before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from werkzeug.security import generate_password_hash

from sql import queries
from tests.helpers import API, assert_error, create, registration, set_status, wait_for

PASSWORD = "Sturdy-Lamp-42"


class Request:
    """``call(client)`` run in a thread on a test client of its own; ``result()`` its answer."""

    def __init__(self, app: Any, call: Callable[[Any], Any]) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.answer = call(app.test_client())
            except BaseException as exc:  # re-raised in result()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the request never finished"
        if self.error is not None:
            raise self.error
        return self.answer


def lock_waiters(db: psycopg.Connection) -> int:
    """How many sessions of this database wait for a lock now."""
    return db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()["n"]


def wait_blocked(db: psycopg.Connection, n: int = 1) -> None:
    """Until ``n`` sessions wait for a lock (the requests reached the held one)."""
    wait_for(lambda: lock_waiters(db) >= n, 5, f"{n} session(s) waiting for a lock")


@contextmanager
def holding(database_url: str, statement: str, params: Any = None) -> Iterator[psycopg.Connection]:
    """A transaction that ran ``statement`` (taking its locks) and commits when the block
    ends (rolls back when it raises)."""
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        conn.execute(statement, params)
        yield conn


# ------------------------------------------------------------------ dead letters


def test_a_reprocess_that_read_its_letter_before_a_reprocess_and_a_new_failure_is_refused(
    app, client, make_account, db, database_url
):
    """Reprocess A requeues the task, a worker runs it and it fails again (a new letter),
    all while reprocess B, which read the first letter still open, waits for the task's
    row: B must not requeue the task a second time for the first letter (one reprocess per
    dead letter), and the new letter stays open for its own reprocess."""
    ann = make_account("ann")
    task = create(client, ann)
    set_status(db, task["id"], "FAILED", attempts=4, error="boom")
    first = db.execute("SELECT id FROM dead_letters").fetchone()["id"]
    url = f"{API}/dead-letters/{first}/reprocess"
    lock = "SELECT id FROM tasks WHERE id = %s FOR UPDATE"
    with holding(database_url, lock, (task["id"],)) as other:
        late = Request(app, lambda c: c.post(url, headers=ann.headers))
        wait_blocked(db)
        # Reprocess A (its SQL), the claim and the failed attempt, committed together.
        params = {"task_id": task["id"], "user_id": ann.id, "any_owner": False}
        assert other.execute(queries["retry_task"], params).fetchone() is not None
        other.execute(
            "UPDATE tasks SET status = 'PROCESSING', attempts = 1 WHERE id = %s", (task["id"],)
        )
        other.execute(
            "UPDATE tasks SET status = 'FAILED', error = 'again' WHERE id = %s", (task["id"],)
        )
    refused = assert_error(late.result(), 409)
    assert "already reprocessed" in refused["error"]
    row = db.execute("SELECT status::text AS s FROM tasks WHERE id = %s", (task["id"],)).fetchone()
    assert row["s"] == "FAILED"
    letters = db.execute("SELECT id, reprocessed_at FROM dead_letters ORDER BY id").fetchall()
    assert [(r["id"] == first, r["reprocessed_at"] is None) for r in letters] == [
        (True, False),
        (False, True),
    ]
    # The new letter is reprocessed by its own request, once.
    second = letters[1]["id"]
    answer = client.post(f"{API}/dead-letters/{second}/reprocess", headers=ann.headers)
    assert answer.status_code == 200, answer.get_json()


def test_two_reprocesses_of_one_letter_at_once_requeue_it_once(
    app, client, make_account, db, database_url
):
    ann = make_account("ann")
    task = create(client, ann)
    set_status(db, task["id"], "FAILED")
    letter = db.execute("SELECT id FROM dead_letters").fetchone()["id"]
    url = f"{API}/dead-letters/{letter}/reprocess"
    with holding(database_url, "SELECT id FROM tasks WHERE id = %s FOR UPDATE", (task["id"],)):
        racers = [Request(app, lambda c: c.post(url, headers=ann.headers)) for _ in range(2)]
        wait_blocked(db, 2)
    answers = sorted((r.result() for r in racers), key=lambda a: a.status_code)
    assert answers[0].status_code == 200
    assert_error(answers[1], 409)
    history = db.execute(
        "SELECT count(*) AS n FROM task_history WHERE task_id = %s AND to_status = 'PENDING'",
        (task["id"],),
    ).fetchone()["n"]
    assert history == 2  # the create, and one requeue


# ------------------------------------------------------------------ credentials


def test_a_refresh_racing_a_password_change_gets_no_tokens_of_the_new_password(
    app, make_account, client, db, database_url
):
    """The refresh token was good when the refresh read it; the password changed before the
    rotation wrote: the refresh must not answer with tokens the change did not revoke."""
    ann = make_account("ann")
    refresh = {"refresh": ann.refresh}
    with holding(database_url, "LOCK TABLE token_blocklist IN SHARE MODE"):
        late = Request(app, lambda c: c.post(f"{API}/auth/token/refresh", json=refresh))
        wait_blocked(db)
        body = {"old_password": PASSWORD, "new_password": "Quiet-Harbor-77",
            "new_password2": "Quiet-Harbor-77"}  # fmt: skip
        changed = client.post(f"{API}/auth/change-password", json=body, headers=ann.headers)
        assert changed.status_code == 200, changed.get_json()
    assert_error(late.result(), 401)
    # Refused: the rotation stored nothing.
    assert db.execute("SELECT count(*) AS n FROM token_blocklist").fetchone()["n"] == 0


def test_a_password_change_whose_old_password_was_changed_meanwhile_is_refused(
    app, make_account, db, database_url
):
    """Change A checked the old password against the hash it read; change B committed a
    new password before A wrote: A must not overwrite B's password (nor answer 200 to a
    caller whose token B revoked)."""
    ann = make_account("ann")
    body = {"old_password": PASSWORD, "new_password": "Quiet-Harbor-77",
            "new_password2": "Quiet-Harbor-77"}  # fmt: skip
    lock = "SELECT id FROM users WHERE id = %s FOR UPDATE"
    with holding(database_url, lock, (ann.id,)) as other:
        late = Request(
            app, lambda c: c.post(f"{API}/auth/change-password", json=body, headers=ann.headers)
        )
        wait_blocked(db)
        other.execute(
            "UPDATE users SET password_hash = %s, password_changed_at = clock_timestamp()"
            " WHERE id = %s",
            (generate_password_hash("Other-Window-31", method="scrypt"), ann.id),
        )
    assert_error(late.result(), 401)
    client = app.test_client()
    login = {"username": "ann", "password": "Other-Window-31"}
    assert client.post(f"{API}/auth/login", json=login).status_code == 200


def test_two_registrations_of_one_username_at_once_give_one_account(app, db, database_url):
    def register(n: int) -> Callable[[Any], Any]:
        body = {**registration("ann", PASSWORD), "email": f"ann{n}@example.com"}
        return lambda c: c.post(f"{API}/auth/register", json=body)

    # A table lock lets both inserts start before either commits.
    with holding(database_url, "LOCK TABLE users IN SHARE MODE"):
        racers = [Request(app, register(n)) for n in range(2)]
        wait_blocked(db, 2)
    answers = sorted((r.result() for r in racers), key=lambda a: a.status_code)
    assert answers[0].status_code == 201
    refused = assert_error(answers[1], 400, "username")
    assert "already exists" in refused["field_errors"]["username"][0]
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 1


def test_one_refresh_token_used_twice_at_once_rotates_once(app, make_account, db, database_url):
    ann = make_account("ann")
    refresh = {"refresh": ann.refresh}
    with holding(database_url, "LOCK TABLE token_blocklist IN SHARE MODE"):
        racers = [
            Request(app, lambda c: c.post(f"{API}/auth/token/refresh", json=refresh))
            for _ in range(2)
        ]
        wait_blocked(db, 2)
    answers = sorted((r.result() for r in racers), key=lambda a: a.status_code)
    assert answers[0].status_code == 200
    assert_error(answers[1], 401)
    assert db.execute("SELECT count(*) AS n FROM token_blocklist").fetchone()["n"] == 1


# ------------------------------------------------------------------ creates


def test_two_creates_with_one_idempotency_key_at_once_make_one_task(
    app, make_account, db, database_url
):
    ann = make_account("ann")
    headers = {**ann.headers, "Idempotency-Key": "req-1"}
    body = {"title": "t", "task_type": "echo"}
    with holding(database_url, "LOCK TABLE tasks IN SHARE MODE"):
        racers = [
            Request(app, lambda c: c.post(f"{API}/tasks", json=body, headers=headers))
            for _ in range(2)
        ]
        wait_blocked(db, 2)
    answers = sorted((r.result() for r in racers), key=lambda a: a.status_code)
    assert [a.status_code for a in answers] == [200, 201]
    assert answers[0].get_json()["task"]["id"] == answers[1].get_json()["task"]["id"]
    assert db.execute("SELECT count(*) AS n FROM tasks").fetchone()["n"] == 1
