"""The LISTEN connection: one wake-up per transaction and queue, cancels, reconnects."""

from __future__ import annotations

import threading
import time

import psycopg

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
