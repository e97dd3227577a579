"""Queue controls against two real ``taskq worker`` processes racing for the same queue.

The limits are kept by the claim statement itself, so the proof is two
supervisors (each with several children) claiming at once: the ledger the
tasks write from inside shows how many ran at the same moment, and the
tasks' ``started_at`` (the claim's time, which the rate log records) shows
how many started in any window.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.helpers import insert_tasks, status_counts, wait_for
from tests.worker_helpers import completed, start_worker, stop_worker

pytestmark = pytest.mark.slow
IMPORTS = {"TASKQ_IMPORTS": "tests.worker_tasks"}


def run_two_workers(db, database_url, count, *args, **env):
    """Two worker processes on queue ``lim`` until ``count`` tasks completed; both exit 0."""
    workers = [
        start_worker(database_url, "--queues", "lim", *args, **IMPORTS, **env) for _ in range(2)
    ]
    try:
        wait_for(lambda: completed(db, count), 120, f"{count} completions")
    finally:
        outputs = [stop_worker(w) for w in workers]
    assert [code for code, _ in outputs] == [0, 0], outputs


def most_at_once(db: psycopg.Connection) -> int:
    """The most tasks that were between their ledger start and end at the same instant."""
    rows = db.execute(
        "SELECT phase, at FROM ledger WHERE phase IN ('start', 'end') ORDER BY at, phase = 'start'"
    ).fetchall()
    running = peak = 0
    for row in rows:  # an end and a start at the same instant: the end first
        running += 1 if row["phase"] == "start" else -1
        peak = max(peak, running)
    return peak


def test_a_concurrency_limit_holds_across_two_worker_processes(ledger_db, database_url):
    ledger_db.execute("INSERT INTO queues (name, concurrency) VALUES ('lim', 3)")
    insert_tasks(ledger_db, 24, task_type="ledger", queue="lim", payload={"sleep": 0.3})
    run_two_workers(ledger_db, database_url, 24, "--concurrency", "3")  # 6 children in all
    assert status_counts(ledger_db) == {"COMPLETED": 24}
    peak = most_at_once(ledger_db)
    assert 2 <= peak <= 3, peak
    children = ledger_db.execute("SELECT count(DISTINCT pid) AS n FROM ledger").fetchone()["n"]
    assert children >= 2


def test_a_rate_limit_holds_in_every_window_across_two_worker_processes(ledger_db, database_url):
    ledger_db.execute(
        "INSERT INTO queues (name, rate_limit, rate_period) VALUES ('lim', 5, '1 second')"
    )
    insert_tasks(ledger_db, 20, task_type="ledger", queue="lim")
    run_two_workers(ledger_db, database_url, 20, "--concurrency", "2")
    starts = [
        r["started_at"]
        for r in ledger_db.execute("SELECT started_at FROM tasks ORDER BY started_at").fetchall()
    ]
    window = timedelta(seconds=1)
    # Any window of one second holds at most 5 starts: check the one opening at each start.
    worst = max(sum(1 for s in starts if t <= s < t + window) for t in starts)
    assert worst <= 5, worst
    assert starts[-1] - starts[0] >= 3 * window  # 20 starts at 5 per second need 3 s at least
    workers = ledger_db.execute("SELECT count(DISTINCT pid) AS n FROM ledger").fetchone()["n"]
    assert workers >= 2


def test_pause_stops_claims_running_tasks_finish_and_a_psql_resume_wakes_the_workers(
    ledger_db, database_url
):
    # A poll interval far longer than the test: only the queues trigger's NOTIFY can wake them.
    args = ("--queues", "lim", "--concurrency", "1")
    workers = [
        start_worker(database_url, *args, TASKQ_POLL_INTERVAL="300", **IMPORTS) for _ in range(2)
    ]
    try:
        wait_for(lambda: ledger_db.execute("SELECT count(*) AS n FROM workers").fetchone()["n"]
                 == 2, 30, "two workers")  # fmt: skip
        insert_tasks(ledger_db, 6, task_type="ledger", queue="lim", payload={"sleep": 2.0})
        wait_for(lambda: started(ledger_db) == 2, 30, "two tasks running")
        ledger_db.execute("INSERT INTO queues (name, paused) VALUES ('lim', true)")  # as psql
        paused_at = ledger_db.execute("SELECT updated_at FROM queues").fetchone()["updated_at"]
        wait_for(lambda: completed(ledger_db, 2), 30, "the running tasks to finish")
        # Each worker's completion was written with its next claim: both claimed while paused.
        more = insert_tasks(ledger_db, 2, task_type="ledger", queue="lim")  # creates still work
        assert len(more) == 2
        assert status_counts(ledger_db) == {"COMPLETED": 2, "PENDING": 6}
        ledger_db.execute("UPDATE queues SET paused = false WHERE name = 'lim'")  # as psql
        resumed_at = ledger_db.execute("SELECT updated_at FROM queues").fetchone()["updated_at"]
        wait_for(lambda: completed(ledger_db, 8), 60, "every task after the resume")
    finally:
        outputs = [stop_worker(w) for w in workers]
    assert [code for code, _ in outputs] == [0, 0], outputs
    starts = ledger_db.execute("SELECT started_at FROM tasks ORDER BY started_at").fetchall()
    before = [s["started_at"] for s in starts if s["started_at"] < paused_at]
    after = [s["started_at"] for s in starts if s["started_at"] >= resumed_at]
    assert (len(before), len(after)) == (2, 6)  # none started while the queue was paused


def started(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) AS n FROM ledger WHERE phase = 'start'").fetchone()["n"]
