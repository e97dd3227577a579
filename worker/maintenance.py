"""Maintenance on the elected leader only: the reaper and the periodic enqueuer.

It runs in a thread of the supervisor (start/stop), a round every tenth of
a second; each round paces itself. Leadership is a session advisory lock
held on a dedicated connection: when the leader dies, or its connection
does, Postgres releases the lock and the next worker to try takes over. The
periodic enqueuer is safe even with two leaders: each tick's row in
``periodic_ticks`` has a primary key, and the task is inserted in the same
transaction as the tick (clean-up of old finished tasks is itself a periodic
task, ``cleanup_old_tasks``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from sql import queries
from worker import metrics
from worker.completer import NO_BACKOFF, Outcomes, write_outcomes
from worker.config import PeriodicSchedule, WorkerConfig, cron_ticks
from worker.db import connect

log = logging.getLogger("taskq.worker.maintenance")

LEADER_LOCK_KEY = 0x7461736B71  # "taskq"
ROUND = 0.1  # seconds between rounds


def reap_expired_leases(conn: psycopg.Connection, limit: int = 1000) -> int:
    """Return the tasks of dead workers to the queue, counting the attempt; how many.

    A returned task is due again at once (no backoff: its worker died, the task
    did not fail), or FAILED when that was its last attempt.
    """
    outcomes = Outcomes()
    with conn.transaction():
        rows = conn.execute(queries["expired_leases"], {"limit": limit}).fetchall()
        for row in rows:
            outcomes.fail(
                row["id"], row["lease_token"], f"lease expired: worker {row['worker_id']} lost"
            )
        write_outcomes(conn, outcomes, NO_BACKOFF)
    return len(outcomes)


def enqueue_tick(
    conn: psycopg.Connection, schedule: PeriodicSchedule, tick_at: datetime
) -> int | None:
    """Enqueue ``schedule``'s task for ``tick_at`` unless that tick already was; the task id."""
    with conn.transaction():
        claimed = conn.execute(
            queries["insert_periodic_tick"], {"name": schedule.name, "tick_at": tick_at}
        ).fetchone()
        if claimed is None:
            return None
        task_id = conn.execute(
            queries["enqueue_periodic_task"],
            {
                "title": f"{schedule.name} @ {tick_at.isoformat()}",
                "task_type": schedule.task_type,
                "payload": Jsonb(schedule.payload),
                "queue": schedule.queue,
                "priority": schedule.priority,
                "max_retries": schedule.max_retries,
                "timeout": schedule.timeout,
                "metadata": Jsonb({"periodic": schedule.name, "tick_at": tick_at.isoformat()}),
            },
        ).fetchone()["id"]
        conn.execute(
            queries["set_tick_task"],
            {"task_id": task_id, "name": schedule.name, "tick_at": tick_at},
        )
    return task_id


def latest_tick(schedule: str, now: datetime) -> datetime:
    """The most recent tick of cron ``schedule`` at or before ``now`` (UTC)."""
    itr = cron_ticks(schedule, now + timedelta(microseconds=1))
    return itr.get_prev(datetime)


class Maintenance:
    """Try to lead; while leading, reap expired leases and enqueue due periodic ticks."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.lock_conn: psycopg.Connection | None = None
        self.conn: psycopg.Connection | None = None
        self.leader = False
        self.next_attempt = 0.0
        self.next_reap = 0.0
        self.last_tick: dict[str, datetime] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Run rounds in a thread until ``stop``."""
        self.stopping.clear()
        self.thread = threading.Thread(target=self.run_rounds, name="taskq-maintenance",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def stop(self) -> None:
        """End the rounds; release leadership and connections."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)  # a round waits for Postgres at most that long
        self.step_down()

    def run_rounds(self) -> None:
        """``step`` until stopped (the thread's body)."""
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception:  # a bug must not end maintenance for this worker's lifetime
                log.exception("maintenance round failed; stepping down")
                self.step_down()
            self.stopping.wait(ROUND)

    def step(self) -> None:
        """One round (call it often; it paces itself); never raises on a lost database."""
        now = time.monotonic()
        try:
            if not self.leader and now >= self.next_attempt:
                self.next_attempt = now + self.config.reaper_interval
                self.try_lead()
            elif self.leader:
                self.check_lock()
            if not self.leader:
                return
            if now >= self.next_reap:
                self.next_reap = now + self.config.reaper_interval
                count = reap_expired_leases(self.db())
                metrics.record_reaped(count)
                if count:
                    log.info("reaper returned %d tasks with expired leases", count)
            self.enqueue_periodic(datetime.now(UTC))
        except psycopg.Error as exc:
            log.warning("maintenance: database error (%s); stepping down", exc)
            self.step_down()

    def db(self) -> psycopg.Connection:
        """The maintenance connection (not the lock's: that one only holds the lock)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(self.config.database_url)
        return self.conn

    def try_lead(self) -> None:
        """Take the advisory lock if nobody holds it."""
        if self.lock_conn is None or self.lock_conn.closed or self.lock_conn.broken:
            self.lock_conn = connect(self.config.database_url)
        row = self.lock_conn.execute(
            queries["try_leader_lock"], {"key": LEADER_LOCK_KEY}
        ).fetchone()
        if row["leader"]:
            self.leader = True
            log.info("this worker leads maintenance (reaper, periodic tasks)")

    def check_lock(self) -> None:
        """Our lock lives as long as its connection: make sure it still does."""
        assert self.lock_conn is not None
        self.lock_conn.execute("SELECT 1")

    def step_down(self) -> None:
        """Give up leadership (closing the lock connection releases the lock)."""
        self.leader = False
        for conn in (self.lock_conn, self.conn):
            if conn is not None:
                conn.close()
        self.lock_conn = self.conn = None

    def enqueue_periodic(self, now: datetime) -> None:
        """Enqueue each schedule's latest tick, if recent and not enqueued yet."""
        for schedule in self.config.periodic:
            tick = latest_tick(schedule.schedule, now)
            if self.last_tick.get(schedule.name) == tick:
                continue
            if (now - tick).total_seconds() <= self.config.periodic_catchup:
                task_id = enqueue_tick(self.db(), schedule, tick)
                if task_id is not None:
                    log.info(
                        "periodic %s: tick %s enqueued as task %s", schedule.name, tick, task_id
                    )
            self.last_tick[schedule.name] = tick
