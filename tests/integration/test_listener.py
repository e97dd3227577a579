"""The LISTEN connection: one wake-up per transaction and queue, cancels, reconnects, pings.

``taskq.listen`` is shared by the worker's listener and the API's notifier:
both reconnect the same way and both find a link that went silent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers import insert_tasks, wait_for
from worker.listener import Listener


class Recorder:
    def __init__(self) -> None:
        self.wakeups: list[str | None] = []
        self.cancels: list[int] = []
        self.event = threading.Event()

    def wakeup(self, queue: str | None) -> None:
        self.wakeups.append(queue)
        self.event.set()

    def cancel(self, task_id: int) -> None:
        self.cancels.append(task_id)


def test_one_wakeup_per_transaction_and_queue(db: psycopg.Connection, database_url: str):
    seen = Recorder()
    listener = Listener(database_url, ["default", "mail"], seen.wakeup, seen.cancel).start()
    try:
        assert listener.connected.wait(5)
        with db.transaction():
            insert_tasks(db, 100)
            insert_tasks(db, 50, queue="mail")
            insert_tasks(db, 5, queue="not-mine")
        # A cancel committed afterwards reaches the one LISTEN connection after every
        # notice of the transaction above (commit order): once it is heard, no more can come.
        (marker,) = insert_tasks(db, 1, status="PROCESSING", queue="not-mine")
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", [marker])
        wait_for(lambda: seen.cancels == [marker], 5, "the marker's cancel")
        assert sorted(seen.wakeups) == ["default", "mail"]
        started = time.monotonic()
        seen.event.clear()
        insert_tasks(db, 1)
        assert seen.event.wait(2)
        assert time.monotonic() - started < 0.5
    finally:
        listener.stop()


def test_cancel_of_a_running_task_is_heard(db: psycopg.Connection, database_url: str) -> None:
    seen = Recorder()
    listener = Listener(database_url, ["default"], seen.wakeup, seen.cancel).start()
    try:
        assert listener.connected.wait(5)
        insert_tasks(db, 1)  # pending: cancelled without a notice
        (running,) = insert_tasks(db, 1, status="PROCESSING")
        db.execute("UPDATE tasks SET status = 'CANCELLED'")
        (marker,) = insert_tasks(db, 1, status="PROCESSING")  # heard after any earlier notice
        db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = %s", [marker])
        wait_for(lambda: marker in seen.cancels, 5, "the marker's cancel")
        assert seen.cancels == [running, marker]  # a pending task needs no interrupting
    finally:
        listener.stop()


def test_listener_reconnects_after_its_backend_is_terminated(
    db: psycopg.Connection, database_url: str
) -> None:
    seen = Recorder()
    listener = Listener(database_url, ["default"], seen.wakeup).start()
    try:
        assert listener.connected.wait(5)
        old_pid = listener.backend_pid()
        db.execute("SELECT pg_terminate_backend(%s)", [old_pid])
        # the reconnect itself reports a wake-up: notifications may have been missed
        wait_for(lambda: None in seen.wakeups, 10, "reconnect")
        assert listener.connected.wait(5)
        assert listener.backend_pid() not in (None, old_pid)
        seen.wakeups.clear()
        insert_tasks(db, 1)
        wait_for(lambda: "default" in seen.wakeups, 5, "wake-up after reconnect")
    finally:
        listener.stop()


@contextlib.contextmanager
def frozen(backend_pid: int) -> Iterator[None]:
    """The server process of a connection stops: no reply and no FIN, as in a partition."""
    os.kill(backend_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(backend_pid, signal.SIGCONT)


def test_listener_pings_a_silent_link_and_reconnects(db: psycopg.Connection, database_url):
    seen = Recorder()
    listener = Listener(database_url, ["default"], seen.wakeup, ping_after=0.3, ping_timeout=0.5)
    listener.start()
    try:
        assert listener.connected.wait(5)
        old_pid = listener.backend_pid()
        with frozen(old_pid):
            # Nothing is sent on a LISTEN connection: only the ping can notice.
            wait_for(lambda: listener.backend_pid() not in (None, old_pid), 10, "a new link")
        assert None in seen.wakeups  # what was notified meanwhile is looked for
        seen.wakeups.clear()
        insert_tasks(db, 1)
        wait_for(lambda: "default" in seen.wakeups, 5, "wake-up on the new link")
    finally:
        listener.stop()


def test_a_ping_delivers_what_arrived_with_it(db: psycopg.Connection, database_url: str):
    from taskq.listen import ping

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN taskq_wakeup")
        insert_tasks(db, 1, queue="mail")  # committed: notified before the ping's reply at latest
        notes = ping(conn, timeout=5)
        assert [(n.channel, n.payload) for n in notes] == [("taskq_wakeup", "mail")]
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection is fine after


@pytest.mark.slow
def test_the_api_notifier_drops_a_frozen_link_and_listens_again(database_url: str) -> None:
    from app.events import Notifier

    notifier = Notifier(database_url)
    try:
        assert notifier.start()
        with psycopg.connect(database_url, autocommit=True) as conn:
            (old_pid,) = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'taskq-notifier' "
                "AND datname = current_database()"
            ).fetchone()
        with frozen(old_pid):
            # The ping after 5 s of silence gets 5 s for its reply; then the link is new.
            wait_for(lambda: not notifier.healthy, 15, "the notifier to give up the link")
            wait_for(lambda: notifier.healthy, 10, "the notifier to listen again")
    finally:
        notifier.stop()
