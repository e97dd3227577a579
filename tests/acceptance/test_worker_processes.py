"""``taskq worker`` as real processes: many workers, kills, lost backends, shutdown, limits."""

from __future__ import annotations

import json
import os
import signal
import time

import psycopg
import pytest

from sql import queries
from tests.helpers import insert_tasks, status_counts, wait_for
from tests.worker_helpers import (
    claim_connection,
    completed,
    kill_group,
    start_worker,
    stop_worker,
    write,
)
from worker.completer import Outcomes

pytestmark = pytest.mark.slow
IMPORTS = {"TASKQ_IMPORTS": "tests.worker_tasks"}


def test_many_workers_run_every_task_exactly_once(ledger_db: psycopg.Connection, database_url):
    ids = insert_tasks(ledger_db, 300, task_type="ledger")
    workers = [start_worker(database_url, "--concurrency", "2", **IMPORTS) for _ in range(2)]
    try:
        wait_for(lambda: completed(ledger_db, 300), 60, "300 completions")
    finally:
        outputs = [stop_worker(w) for w in workers]
    assert [code for code, _ in outputs] == [0, 0], outputs
    assert status_counts(ledger_db) == {"COMPLETED": 300}
    runs = ledger_db.execute(
        "SELECT task_id, count(*) AS n FROM ledger WHERE phase = 'end' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [r["task_id"] for r in runs] == ids and {r["n"] for r in runs} == {1}
    assert ledger_db.execute("SELECT count(DISTINCT pid) AS n FROM ledger").fetchone()["n"] >= 2
    assert ledger_db.execute("SELECT count(*) AS n FROM workers").fetchone()["n"] == 0


def test_sigkill_mid_task_another_worker_finishes_and_the_late_write_is_refused(
    ledger_db: psycopg.Connection, database_url: str
) -> None:
    (task_id,) = insert_tasks(ledger_db, 1, task_type="ledger", payload={"sleep": 1.0},
                              retry_delay=0)  # fmt: skip
    first = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1.5", **IMPORTS)
    try:
        wait_for(lambda: ledger_db.execute("SELECT 1 FROM ledger").fetchone(), 20, "start")
        stale = ledger_db.execute("SELECT lease_token FROM tasks").fetchone()["lease_token"]
    finally:
        kill_group(first)  # the whole machine is gone: no settling by its supervisor
    second = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1.5", **IMPORTS)
    try:
        wait_for(lambda: completed(ledger_db, 1), 20, "completion by the second worker")
    finally:
        assert stop_worker(second)[0] == 0
    task = ledger_db.execute("SELECT attempts, lease_token, result FROM tasks").fetchone()
    assert task["attempts"] == 2 and task["lease_token"] != stale
    phases = ledger_db.execute("SELECT attempt, phase FROM ledger ORDER BY id").fetchall()
    assert [(p["attempt"], p["phase"]) for p in phases] == [(1, "start"), (2, "start"), (2, "end")]
    with claim_connection(database_url, "x") as exchange:  # the dead worker's late result
        late = Outcomes()
        late.complete(task_id, stale, json.dumps("late"))
        write(exchange, late)
    assert ledger_db.execute("SELECT result FROM tasks").fetchone() == {"result": task["result"]}
    history = ledger_db.execute(
        "SELECT to_status::text AS s, error FROM task_history ORDER BY id"
    ).fetchall()
    assert [h["s"] for h in history] == ["PENDING", "PROCESSING", "RETRYING", "PROCESSING",
                                         "COMPLETED"]  # fmt: skip
    assert "lease expired" in history[2]["error"]


def test_a_killed_workers_task_is_due_at_the_reap_and_rerun_by_another_worker(
    ledger_db: psycopg.Connection, database_url: str
) -> None:
    # retry_delay of an hour: a reaped task that waited for its backoff would never rerun here.
    (task_id,) = insert_tasks(ledger_db, 1, task_type="ledger", payload={"sleep": 1.0},
                              retry_delay=3600)  # fmt: skip
    first = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1.5", **IMPORTS)
    try:
        wait_for(lambda: ledger_db.execute("SELECT 1 FROM ledger").fetchone(), 20, "start")
    finally:
        kill_group(first)
    second = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1.5", **IMPORTS)
    try:
        wait_for(lambda: completed(ledger_db, 1), 30, "the rerun by the second worker")
    finally:
        assert stop_worker(second)[0] == 0
    task = ledger_db.execute("SELECT attempts, run_at FROM tasks").fetchone()
    history = ledger_db.execute(
        "SELECT to_status::text AS s, attempt, error, created_at AS at FROM task_history "
        "WHERE task_id = %s ORDER BY id",
        [task_id],
    ).fetchall()
    assert [h["s"] for h in history] == ["PENDING", "PROCESSING", "RETRYING", "PROCESSING",
                                         "COMPLETED"]  # fmt: skip
    claimed, reaped, reclaimed = history[1], history[2], history[3]
    assert task["attempts"] == 2 and reaped["attempt"] == 1  # the lost attempt counted
    assert "lease expired" in reaped["error"]
    # Due at the reap itself (the reap's transaction time), not retry_delay after it.
    assert claimed["at"] < task["run_at"] <= reaped["at"] <= reclaimed["at"]
    pids = ledger_db.execute("SELECT attempt, pid FROM ledger WHERE phase = 'start' ORDER BY id")
    (first_run, second_run) = pids.fetchall()
    assert (first_run["attempt"], second_run["attempt"]) == (1, 2)
    assert first_run["pid"] != second_run["pid"]


def test_a_task_that_kills_its_worker_every_time_ends_failed(
    ledger_db: psycopg.Connection, database_url: str
) -> None:
    (task_id,) = insert_tasks(ledger_db, 1, task_type="kill_worker", max_retries=1,
                              retry_delay=3600)  # fmt: skip

    def status() -> str:
        return ledger_db.execute("SELECT status::text FROM tasks").fetchone()["status"]

    # Each worker reaps the previous one's task and runs it again, which kills it; the
    # worker after the last attempt finds the attempts spent.
    for _ in range(3):
        worker = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1.5",
                              **IMPORTS)  # fmt: skip
        try:
            wait_for(lambda w=worker: w.poll() is not None or status() == "FAILED", 30,
                     "the task to kill the worker or to fail")  # fmt: skip
        finally:
            kill_group(worker)
        if status() == "FAILED":
            break
    task = ledger_db.execute("SELECT status::text, attempts, error FROM tasks").fetchone()
    assert task["status"] == "FAILED" and task["attempts"] == 2
    assert "lease expired" in task["error"]
    runs = ledger_db.execute("SELECT attempt FROM ledger ORDER BY id").fetchall()
    assert [r["attempt"] for r in runs] == [1, 2]
    dead = ledger_db.execute("SELECT task_id, attempts FROM dead_letters").fetchall()
    assert dead == [{"task_id": task_id, "attempts": 2}]


def test_workers_survive_terminated_backends(ledger_db: psycopg.Connection, database_url: str):
    ids = insert_tasks(ledger_db, 400, task_type="ledger", payload={"sleep": 0.005},
                       retry_delay=0, max_retries=5)  # fmt: skip
    worker = start_worker(database_url, "--concurrency", "2", **IMPORTS)
    dbname = ledger_db.info.dbname
    try:

        def runs() -> int:
            return ledger_db.execute("SELECT count(*) AS n FROM ledger").fetchone()["n"]

        for _ in range(3):
            before = runs()  # every kill lands after fresh progress since the last one
            wait_for(lambda before=before: runs() > before + 20, 20, "progress")
            ledger_db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [dbname],
            )
        wait_for(lambda: completed(ledger_db, 400), 60, "all completions")
    finally:
        code, out = stop_worker(worker)
    assert code == 0, out
    assert status_counts(ledger_db) == {"COMPLETED": 400}
    runs = ledger_db.execute(
        "SELECT task_id, attempt, count(*) AS n FROM ledger WHERE phase = 'end' GROUP BY 1, 2"
    ).fetchall()
    assert sorted({r["task_id"] for r in runs}) == ids  # nothing lost
    assert {r["n"] for r in runs} == {1}  # no attempt ran twice
    # a second run of a task happens only after a visible failed attempt
    rerun = {r["task_id"] for r in runs if r["attempt"] > 1}
    failed_attempts = {
        r["task_id"]
        for r in ledger_db.execute(
            "SELECT DISTINCT task_id FROM task_history WHERE to_status = 'RETRYING'"
        ).fetchall()
    }
    assert rerun <= failed_attempts


def test_time_limits_crash_and_cancel(ledger_db: psycopg.Connection, database_url: str) -> None:
    soft = insert_tasks(ledger_db, 1, task_type="sleep", payload={"duration": 30}, timeout=1,
                        max_retries=0)  # fmt: skip
    hard = insert_tasks(ledger_db, 1, task_type="stubborn", payload={"sleep": 30}, timeout=1,
                        max_retries=0)  # fmt: skip
    # A child that dies lost its attempt: the rerun is due at once, not retry_delay later.
    crash = insert_tasks(ledger_db, 1, task_type="crash", max_retries=1, retry_delay=3600)
    worker = start_worker(database_url, "--concurrency", "2", **IMPORTS)
    try:

        def state(task_id: list[int]) -> dict:
            return ledger_db.execute(
                "SELECT status::text, attempts, error FROM tasks WHERE id = %s", task_id
            ).fetchone()

        wait_for(lambda: state(soft)["status"] == "FAILED", 15, "soft limit")
        assert "SoftTimeLimitExceeded" in state(soft)["error"]
        wait_for(lambda: state(hard)["status"] == "FAILED", 15, "hard limit")
        assert "hard time limit" in state(hard)["error"]
        assert ledger_db.execute("SELECT phase FROM ledger WHERE phase = 'ignored'").fetchone()
        wait_for(lambda: state(crash)["status"] == "FAILED", 15, "crash twice")
        assert state(crash)["attempts"] == 2 and "died" in state(crash)["error"]
        assert ledger_db.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 3

        # cancel a running task: it stops within a second, stays CANCELLED, the slot frees
        running = insert_tasks(ledger_db, 1, task_type="sleep", payload={"duration": 30})
        wait_for(lambda: state(running)["status"] == "PROCESSING", 10, "running")
        stubborn = insert_tasks(ledger_db, 1, task_type="stubborn", payload={"sleep": 30})
        wait_for(lambda: state(stubborn)["status"] == "PROCESSING", 10, "stubborn running")
        ledger_db.execute("UPDATE tasks SET status = 'CANCELLED' WHERE id = ANY(%s)",
                          [running + stubborn])  # fmt: skip
        started = time.monotonic()
        after = insert_tasks(ledger_db, 2, task_type="echo", payload={"n": 1})
        wait_for(lambda: completed(ledger_db, 2), 10, "tasks after the cancels")
        assert time.monotonic() - started < 4
        assert state(running)["status"] == "CANCELLED" and state(stubborn)["status"] == "CANCELLED"
        assert all(state([a])["status"] == "COMPLETED" for a in after)
    finally:
        code, out = stop_worker(worker)
    assert code == 0, out


def test_sigterm_drains_and_hands_back(db: psycopg.Connection, database_url: str) -> None:
    short = insert_tasks(db, 1, task_type="sleep", payload={"duration": 1}, priority=20)
    long = insert_tasks(db, 1, task_type="sleep", payload={"duration": 30}, priority=10)
    waiting = insert_tasks(db, 3, task_type="sleep", payload={"duration": 1})
    worker = start_worker(database_url, "--concurrency", "2", TASKQ_SHUTDOWN_GRACE="2")
    wait_for(lambda: status_counts(db).get("PROCESSING") == 2, 10, "two running")
    started = time.monotonic()
    code, out = stop_worker(worker)
    assert code == 0, out
    assert time.monotonic() - started < 6
    rows = {r["id"]: r for r in db.execute("SELECT id, status::text, attempts FROM tasks")}
    assert rows[short[0]]["status"] == "COMPLETED"  # finished within the grace period
    assert rows[long[0]] == {"id": long[0], "status": "PENDING", "attempts": 0}  # handed back
    assert all(rows[w]["status"] == "PENDING" for w in waiting)


def test_a_draining_worker_keeps_its_running_task_leased(ledger_db, database_url: str) -> None:
    insert_tasks(ledger_db, 1, task_type="ledger", payload={"sleep": 2.5})
    worker = start_worker(database_url, "--concurrency", "1", TASKQ_LEASE_SECONDS="1",
                          TASKQ_SHUTDOWN_GRACE="20", **IMPORTS)  # fmt: skip
    leased: list[bool] = []
    try:
        wait_for(lambda: ledger_db.execute("SELECT 1 FROM ledger").fetchone(), 20, "start")
        worker.send_signal(signal.SIGTERM)
        # Sampled until the task ends: a lapsed lease would let a reaper run it twice.
        while (row := ledger_db.execute(
            "SELECT status::text AS s, lease_expires_at > now() AS leased FROM tasks"
        ).fetchone())["s"] == "PROCESSING":  # fmt: skip
            leased.append(row["leased"])
            time.sleep(0.05)
    finally:
        code, out = stop_worker(worker, signalled=True)
    assert code == 0, out
    assert len(leased) > 20 and all(leased), leased  # about 2 s of draining, never unleased
    assert status_counts(ledger_db) == {"COMPLETED": 1}


def held_samples(db: psycopg.Connection, until, timeout: float, message: str) -> list[int]:
    """PROCESSING counts, one per poll of ``wait_for``, until ``until(samples)`` holds."""
    samples: list[int] = []

    def sample() -> bool:
        samples.append(status_counts(db).get("PROCESSING", 0))
        return until(samples)

    wait_for(sample, timeout, message)
    return samples


def test_sigterm_hands_back_a_prefetched_batch_uncounted(db: psycopg.Connection, database_url):
    # 0.3 s counts as fast here, so the claim grows to 4 and the next batch is prefetched.
    ids = insert_tasks(db, 40, task_type="sleep", payload={"duration": 0.3})
    worker = start_worker(database_url, "--concurrency", "1", TASKQ_BATCH_SIZE="4",
                          TASKQ_FAST_TASK_MS="60000", TASKQ_SHUTDOWN_GRACE="5")  # fmt: skip
    try:
        samples = held_samples(db, lambda s: s[-1] > 4, 15, "a prefetched batch held")
    finally:
        code, out = stop_worker(worker)
    assert code == 0, out
    assert max(samples) > 4, samples  # more than one batch held: a batch was prefetched
    assert max(samples) <= 8, samples  # never more than its batch + one prefetched batch
    rows = db.execute("SELECT id, status::text, attempts FROM tasks ORDER BY id").fetchall()
    assert [r["id"] for r in rows] == ids
    done = [r for r in rows if r["status"] == "COMPLETED"]
    back = [r for r in rows if r["status"] == "PENDING"]
    assert len(done) + len(back) == 40  # nothing left PROCESSING
    assert all(r["attempts"] == 1 for r in done)
    assert len(back) >= 4 and all(r["attempts"] == 0 for r in back)  # not counted
    released = db.execute(
        "SELECT count(*) AS n FROM task_history WHERE from_status = 'PROCESSING' "
        "AND to_status = 'PENDING'"
    ).fetchone()["n"]
    assert released >= 4  # at least the prefetched batch went back


def test_slow_tasks_are_not_prefetched(db: psycopg.Connection, database_url: str) -> None:
    insert_tasks(db, 6, task_type="sleep", payload={"duration": 0.2})
    worker = start_worker(database_url, "--concurrency", "1", TASKQ_BATCH_SIZE="4")
    try:
        # Sampled from before the first claim to the last completion: every batch is seen
        # (each task holds its claim 0.2 s, ten polls).
        samples = held_samples(db, lambda _: completed(db, 6), 60, "six completions")
    finally:
        code, out = stop_worker(worker)
    assert code == 0, out
    assert samples[0] == 0 and 1 in samples, samples  # the whole run was sampled
    assert max(samples) == 1, samples  # one task at a time: neither batched nor prefetched


def test_max_tasks_recycles_children_and_pickup_is_fast(db: psycopg.Connection, database_url):
    worker = start_worker(database_url, "--concurrency", "1", "--max-tasks", "4",
                          "--poll-interval", "5")  # fmt: skip
    try:
        insert_tasks(db, 10, task_type="echo", payload={"pid": 1})
        wait_for(lambda: completed(db, 10), 30, "10 completions")
        pids = db.execute("SELECT count(DISTINCT worker_id) AS n FROM tasks").fetchone()["n"]
        assert pids == 3  # 4 + 4 + 2
        # idle worker, a long poll interval: only NOTIFY can make this fast
        waits = []
        query = "SELECT completed_at, started_at - created_at AS w FROM tasks WHERE id = %s"
        for _ in range(5):
            (task_id,) = insert_tasks(db, 1)

            def done(task_id: int = task_id) -> dict | None:
                row = db.execute(query, [task_id]).fetchone()
                return row if row["completed_at"] else None

            waits.append(wait_for(done, 5, "pickup")["w"].total_seconds())
        assert sorted(waits)[2] < 0.1, waits
    finally:
        assert stop_worker(worker)[0] == 0


def test_periodic_tick_with_three_workers_enqueues_once(db: psycopg.Connection, database_url):
    periodic = json.dumps([{"name": "beat", "schedule": "* * * * * *", "task_type": "noop"}])
    workers = [start_worker(database_url, "--concurrency", "1", TASKQ_PERIODIC=periodic,
                            TASKQ_REAPER_INTERVAL="0.2") for _ in range(3)]  # fmt: skip
    try:
        wait_for(lambda: db.execute("SELECT count(*) AS n FROM periodic_ticks").fetchone()["n"]
                 >= 3, 20, "three ticks")  # fmt: skip
        kill_group(workers[0])  # maybe the leader: the others carry on either way
        before = db.execute("SELECT count(*) AS n FROM periodic_ticks").fetchone()["n"]
        wait_for(lambda: db.execute("SELECT count(*) AS n FROM periodic_ticks").fetchone()["n"]
                 >= before + 2, 20, "ticks after a worker died")  # fmt: skip
    finally:
        for w in workers[1:]:
            stop_worker(w)
    ticks = db.execute("SELECT tick_at, task_id FROM periodic_ticks").fetchall()
    tasks = db.execute("SELECT metadata->>'tick_at' AS t FROM tasks").fetchall()
    assert len(tasks) == len(ticks) == len({t["t"] for t in tasks})
    assert all(t["task_id"] for t in ticks)


def test_children_die_with_their_supervisor(db: psycopg.Connection, database_url: str) -> None:
    worker = start_worker(database_url, "--concurrency", "2")
    try:
        wait_for(lambda: db.execute("SELECT count(*) AS n FROM workers").fetchone()["n"] == 2,
                 20, "children registered")  # fmt: skip
        pids = [r["pid"] for r in db.execute("SELECT pid FROM workers")]
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(lambda: all(gone(p) for p in pids), 5, "children exit")
    assert queries["held_tasks"]
