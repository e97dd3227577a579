"""The supervisor: starts N child processes and keeps their leases alive; nothing else.

Each child claims for itself (its own connection and LISTEN), so a task
reaches a process without a hop through the supervisor. The supervisor holds
no task: it keeps the children's leases alive (one UPDATE per heartbeat for
all of them, also while they drain), kills a child whose task passed its
hard time limit, has the tasks of a child that died settled (the running one
counts as a failed attempt and is due again at once, the others go back),
and replaces it. Maintenance runs beside it, in a thread, when this worker
is elected. Children are started with ``spawn``: a clean interpreter, no
inherited connections or threads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import psycopg

from sql import queries
from taskq.connections import SUPERVISOR, application_name
from worker import child as child_process
from worker import metrics
from worker.completer import NO_BACKOFF, settle_worker_tasks
from worker.config import WorkerConfig
from worker.db import connect
from worker.maintenance import Maintenance
from worker.runner import SLOT_DEADLINE_MS, SLOT_DONE, SLOT_SIZE, SLOT_TASK

log = logging.getLogger("taskq.worker.supervisor")


def extend_leases(conn: psycopg.Connection, worker_ids: list[str], lease_seconds: float) -> None:
    """Heartbeat: extend the leases of ``worker_ids``' tasks and mark them alive."""
    with conn.transaction():
        params = {"worker_ids": worker_ids, "lease_seconds": lease_seconds}
        conn.execute(queries["extend_leases"], params)
        conn.execute(queries["touch_workers"], params)


@dataclass
class ChildProcess:
    """A running child: its process, shared slot and worker id."""

    index: int
    process: Any
    slot: Any
    worker_id: str
    started: float


class Supervisor:
    """Start the children, keep their leases alive, replace the ones that exit (start/stop)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.mp = multiprocessing.get_context("spawn")
        self.children: dict[int, ChildProcess] = {}
        self.stopping = False
        self.hurry = False  # a second signal: kill the children now
        self.stop_requested = 0.0
        self.conn: psycopg.Connection | None = None
        self.maintenance = Maintenance(config)
        self.next_heartbeat = 0.0
        self.restart_after: dict[int, float] = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: drain. Another one a second later stops at once (tasks go back).

        Ctrl-C under ``taskq up`` delivers SIGINT and then up's SIGTERM together:
        that pair still drains.
        """
        if self.stopping:
            if time.monotonic() - self.stop_requested > 1.0:
                self.hurry = True
            return
        self.stop_requested = time.monotonic()
        self.stopping = True

    def start(self) -> None:
        """Take the signals, start the children, maintenance and the metrics endpoint."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        if self.config.metrics_port:
            metrics.serve_metrics(self.config.metrics_port)
        for index in range(self.config.concurrency):
            self.spawn(index)
        self.maintenance.start()
        log.info(
            "worker up: %d processes on queues %s",
            self.config.concurrency,
            ",".join(self.config.queues),
        )

    def supervise(self) -> None:
        """Until a signal asks to stop: replace children, enforce hard limits, heartbeat."""
        while not self.stopping:
            self.watch()
            self.respawn()
            self.enforce_time_limits()
            self.heartbeat()

    def stop(self) -> None:
        """Drain: the children finish their running task within the grace period, then die.

        The heartbeat goes on meanwhile: a task that runs into the grace
        period is still this worker's, and must not be reaped and run twice.
        """
        self.stopping = True
        log.info("stopping: no new claims; running tasks get %.0fs", self.config.shutdown_grace)
        deadline = time.monotonic() + self.config.shutdown_grace
        for child in self.children.values():
            if child.process.is_alive():
                os.kill(child.process.pid, signal.SIGTERM)
        try:
            while self.children:
                self.watch()
                if self.hurry or time.monotonic() >= deadline:
                    self.kill_all("shutdown grace period over")
                else:
                    self.heartbeat()
        finally:
            self.maintenance.stop()
            if self.conn is not None:
                self.conn.close()
        log.info("worker stopped")

    def spawn(self, index: int) -> None:
        """Start child ``index``."""
        slot = self.mp.Array("q", SLOT_SIZE, lock=False)
        process = self.mp.Process(
            target=child_process.child_main,
            args=(self.config.to_dict(), slot, os.getpid()),
            name=f"taskq-worker-{index}",
            daemon=False,
        )
        process.start()
        self.children[index] = ChildProcess(
            index,
            process,
            slot,
            child_process.worker_id_for(self.config, process.pid),
            time.monotonic(),
        )

    def watch(self) -> None:
        """Wait a little for a child to exit, and settle the ones that did."""
        sentinels = {c.process.sentinel: c for c in self.children.values()}
        for sentinel in wait(list(sentinels), timeout=0.1):
            self.reap_child(sentinels[sentinel])

    def reap_child(self, child: ChildProcess, error: str | None = None) -> None:
        """Settle a finished child's tasks and forget it."""
        child.process.join()
        code = child.process.exitcode
        del self.children[child.index]
        metrics.mark_process_dead(child.process.pid)
        task_id = int(child.slot[SLOT_TASK])
        if code != 0 or task_id:
            reason = error or f"worker process {child.worker_id} died (exit code {code})"
            log.warning("%s while running task %s", reason, task_id or "-")
            failed = {task_id: reason} if task_id and not self.stopping else {}
            # A process that died lost its attempt: due again at once. A hard time
            # limit (``error``) is the task's own failure: the usual backoff.
            delay = self.config.max_retry_delay if error else NO_BACKOFF
            self.settle(child.worker_id, failed, delay)
        elif not self.stopping:
            log.info("worker process %s recycled after %d tasks", child.worker_id,
                     child.slot[SLOT_DONE])  # fmt: skip
        if not self.stopping:
            # A child that dies young waits a second before its replacement (crash loops).
            young = time.monotonic() - child.started < 1.0
            self.restart_after[child.index] = time.monotonic() + (1.0 if young and code else 0.0)

    def settle(self, worker_id: str, failed: dict[int, str], max_retry_delay: float) -> None:
        """Fail the running task of a dead child and hand back its other claims."""
        for attempt in range(3):
            try:
                settle_worker_tasks(
                    self.db(), worker_id, failed=failed, max_retry_delay=max_retry_delay
                )
                self.db().execute(queries["delete_workers"], {"worker_ids": [worker_id]})
                return
            except psycopg.Error as exc:
                self.drop_db()
                log.warning("could not settle %s (%s), attempt %d", worker_id, exc, attempt + 1)
                time.sleep(0.2)
        log.error("tasks of %s left to the reaper (lease expiry)", worker_id)

    def respawn(self) -> None:
        """Replace children that exited (not while stopping)."""
        if self.stopping:
            return
        now = time.monotonic()
        for index, when in list(self.restart_after.items()):
            if now >= when:
                del self.restart_after[index]
                self.spawn(index)

    def enforce_time_limits(self) -> None:
        """Kill a child whose task passed its hard limit; its task fails, the child is replaced."""
        now_ms = time.monotonic() * 1000  # the children's clock: Linux shares it across processes
        for child in list(self.children.values()):
            deadline = child.slot[SLOT_DEADLINE_MS]
            task_id = child.slot[SLOT_TASK]
            if deadline and task_id and now_ms > deadline:
                log.warning(
                    "task %s passed its hard time limit; killing %s", task_id, child.worker_id
                )
                child.process.kill()
                self.reap_child(child, error="hard time limit exceeded; worker process killed")

    def kill_all(self, reason: str) -> None:
        """Kill the remaining children and hand back all their tasks (attempts not counted)."""
        for child in list(self.children.values()):
            log.warning("%s: killing %s", reason, child.worker_id)
            child.process.kill()
            self.reap_child(child)

    def heartbeat(self) -> None:
        """Extend the leases of every live child's tasks and mark the children alive."""
        now = time.monotonic()
        if now < self.next_heartbeat or not self.children:
            return
        self.next_heartbeat = now + self.config.heartbeat_seconds
        ids = [c.worker_id for c in self.children.values()]
        try:
            extend_leases(self.db(), ids, self.config.lease_seconds)
        except psycopg.Error as exc:
            log.warning("heartbeat failed (%s)", exc)
            self.drop_db()
            self.next_heartbeat = now + 0.5

    def db(self) -> psycopg.Connection:
        """The supervisor's connection, reopened when lost."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(
                self.config.database_url,
                application_name(SUPERVISOR, self.config.hostname),
                self.config.database_pooled,
            )
        return self.conn

    def drop_db(self) -> None:
        """Forget a connection that failed."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def run_worker(config: WorkerConfig) -> int:
    """Run a supervised worker pool with ``config`` until SIGTERM; the exit code."""
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    if config.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="taskq-metrics-")
        metrics.enable()
    supervisor = Supervisor(config)
    supervisor.start()
    try:
        supervisor.supervise()
    finally:
        supervisor.stop()
    return 0
