"""Maintenance on the elected leader only: the reaper, the periodic enqueuer, the
roll-up of the task counters (``taskq.counters``) and the history partitions.

It runs in a thread of the supervisor (start/stop), a round every tenth of
a second; each round paces itself. Leadership (``worker.leader``) is a
session advisory lock on a direct connection: when the leader dies, or its
connection does, Postgres releases the lock and the next worker to try takes
over. The work itself runs on the pooled URL. No decision reads this host's
clock: leases expire by the database's ``now()``, and the periodic enqueuer
follows the database's clock too (``database_time``), so hosts whose clocks
disagree agree on every tick. The periodic enqueuer is safe even with two
leaders: each tick's row in ``periodic_ticks`` has a primary key, and the task
is inserted in the same transaction as the tick (clean-up of old finished
tasks is itself a periodic task, ``cleanup_old_tasks``).
Every ten minutes the leader creates the ``task_history`` partitions of the
next days and drops the whole days older than TASKQ_HISTORY_DAYS (migration
0010): retention is a catalog change; when a long reader holds the table, the
short lock wait gives up and a later round tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from sql import queries
from taskq.connections import LEADER, MAINTENANCE, application_name
from taskq.counters import forget_empty_task_counts, roll_up_task_counts
from worker import metrics
from worker.completer import NO_BACKOFF, Outcomes, write_outcomes
from worker.config import PeriodicSchedule, WorkerConfig, cron_ticks
from worker.db import connect
from worker.leader import Leader

log = logging.getLogger("taskq.worker.maintenance")

ROUND = 0.1  # seconds between rounds
FORGET_EMPTY_COUNTS = 3600.0  # seconds between sweeps of counters at zero
HISTORY_DAYS_AHEAD = 3  # daily history partitions made ahead (the default one catches the rest)
HISTORY_INTERVAL = 600.0  # seconds between partition rounds
HISTORY_RETRY = 60.0  # seconds before a partition round that met a busy table tries again
CLOCK_READ = 1.0  # seconds between reads of the database's clock


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


def maintain_history_partitions(conn: psycopg.Connection, keep_days: int) -> tuple[int, int]:
    """Create the history partitions of the next days, drop those older than ``keep_days``.

    Returns (created, dropped); raises ``psycopg.errors.LockNotAvailable`` when a
    long transaction held ``task_history`` past the functions' lock_timeout.
    """
    with conn.transaction():
        made = conn.execute(
            queries["add_history_partitions"], {"days_ahead": HISTORY_DAYS_AHEAD}
        ).fetchone()["made"]
    with conn.transaction():
        dropped = conn.execute(
            queries["drop_history_partitions"], {"keep_days": keep_days}
        ).fetchone()["dropped"]
    return made, dropped


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
        self.leadership = Leader(
            config.listen_database_url,
            application_name(LEADER, config.hostname),
            check_every=min(1.0, config.reaper_interval),
        )
        self.conn: psycopg.Connection | None = None
        self.clock: tuple[datetime, float] | None = None  # (database now(), monotonic then)
        self.next_attempt = 0.0
        self.next_reap = 0.0
        self.next_roll_up = 0.0
        self.next_forget = 0.0
        self.next_partitions = 0.0
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

    @property
    def is_leader(self) -> bool:
        """This worker leads maintenance right now."""
        return self.leadership.is_leader

    def step(self) -> None:
        """One round (call it often; it paces itself); never raises on a lost database."""
        now = time.monotonic()
        try:
            if not self.is_leader and now >= self.next_attempt:
                self.next_attempt = now + self.config.reaper_interval
                self.leadership.elect()
            elif self.is_leader:
                self.leadership.check()
            if not self.is_leader:
                return
            if now >= self.next_reap:
                self.next_reap = now + self.config.reaper_interval
                count = reap_expired_leases(self.db())
                metrics.record_reaped(count)
                if count:
                    log.info("reaper returned %d tasks with expired leases", count)
            if now >= self.next_partitions:
                self.maintain_partitions(now)
            if self.config.periodic:
                self.enqueue_periodic(self.database_time())
            self.roll_up_counts(now)
        except psycopg.Error as exc:
            log.warning("maintenance: database error (%s); stepping down", exc)
            self.step_down()

    def maintain_partitions(self, now: float) -> None:
        """A partition round; one that met a busy table is tried again a minute later."""
        try:
            made, dropped = maintain_history_partitions(self.db(), self.config.history_days)
        except psycopg.errors.LockNotAvailable:
            log.info("history partitions: task_history busy, trying again shortly")
            self.next_partitions = now + HISTORY_RETRY
            return
        self.next_partitions = now + HISTORY_INTERVAL
        if made or dropped:
            log.info("history partitions: %d created, %d dropped", made, dropped)

    def db(self) -> psycopg.Connection:
        """The maintenance connection, pooled (not the lock's: that one only holds the lock)."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(
                self.config.database_url,
                application_name(MAINTENANCE, self.config.hostname),
                self.config.database_pooled,
            )
        return self.conn

    def database_time(self) -> datetime:
        """The database's ``now()``: read once a second, carried forward on the monotonic clock.

        A host whose wall clock is wrong still enqueues each tick when the
        database's clock says it is due, like every other host.
        """
        mono = time.monotonic()
        if self.clock is None or mono - self.clock[1] >= CLOCK_READ:
            now = self.db().execute(queries["database_now"]).fetchone()["now"]
            self.clock = (now.astimezone(UTC), mono)  # cron schedules are in UTC
        read_at, read_mono = self.clock
        return read_at + timedelta(seconds=mono - read_mono)

    def step_down(self) -> None:
        """Give up leadership (closing the lock connection releases the lock)."""
        self.leadership.step_down()
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.clock = None

    def roll_up_counts(self, now: float) -> None:
        """Fold the pending counter deltas every TASKQ_COUNTS_INTERVAL; sweep zeros hourly."""
        if now < self.next_roll_up:
            return
        self.next_roll_up = now + self.config.counts_interval
        roll_up_task_counts(self.db())
        if now >= self.next_forget:
            self.next_forget = now + FORGET_EMPTY_COUNTS
            forget_empty_task_counts(self.db())

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
