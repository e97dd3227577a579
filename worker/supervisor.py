"""The supervisor: N child processes, their heartbeat, hard time limits, maintenance, shutdown.

Each child claims for itself (its own connection and LISTEN), so a task
reaches a process without a hop through the supervisor. The supervisor
holds no task: it keeps the children's leases alive (one UPDATE per
heartbeat for all of them), kills a child whose task passed its hard time
limit, settles the tasks of a child that died (the running one counts as a
failed attempt and is due again at once, the others go back), replaces it,
and runs maintenance when elected. Children are started with ``spawn``: a
clean interpreter, no inherited connections or threads.
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
from worker import executor, metrics
from worker.claim import NO_BACKOFF, connect, extend_leases, settle_worker_tasks
from worker.config import WorkerConfig
from worker.maintenance import Maintenance

log = logging.getLogger("taskq.worker.supervisor")


@dataclass
class ChildProcess:
    """A running child: its process, shared slot and worker id."""

    index: int
    process: Any
    slot: Any
    worker_id: str
    started: float


class Supervisor:
    """Start, watch, replace and stop the children."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.mp = multiprocessing.get_context("spawn")
        self.children: dict[int, ChildProcess] = {}
        self.stopping = False
        self.stop_deadline = 0.0
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
                self.stop_deadline = 0.0
            return
        self.stop_requested = time.monotonic()
        log.info("stopping: no new claims; running tasks get %.0fs", self.config.shutdown_grace)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_grace
        for child in self.children.values():
            if child.process.is_alive():
                os.kill(child.process.pid, signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped; the exit code."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        if self.config.metrics_port:
            metrics.serve_metrics(self.config.metrics_port)
        for index in range(self.config.concurrency):
            self.spawn(index)
        log.info(
            "worker up: %d processes on queues %s",
            self.config.concurrency,
            ",".join(self.config.queues),
        )
        try:
            while self.children or not self.stopping:
                self.watch()
                if self.stopping:
                    if time.monotonic() >= self.stop_deadline:
                        self.kill_all("shutdown grace period over")
                    continue
                self.respawn()
                self.enforce_time_limits()
                self.heartbeat()
                self.maintenance.step()
        finally:
            self.maintenance.close()
            if self.conn is not None:
                self.conn.close()
        log.info("worker stopped")
        return 0

    def spawn(self, index: int) -> None:
        """Start child ``index``."""
        slot = self.mp.Array("q", executor.SLOT_SIZE, lock=False)
        process = self.mp.Process(
            target=executor.child_main,
            args=(self.config.to_dict(), slot, os.getpid()),
            name=f"taskq-worker-{index}",
            daemon=False,
        )
        process.start()
        self.children[index] = ChildProcess(
            index, process, slot, executor.worker_id_for(process.pid), time.monotonic()
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
        task_id = int(child.slot[executor.SLOT_TASK])
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
                     child.slot[executor.SLOT_DONE])  # fmt: skip
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
        """Replace children that exited."""
        now = time.monotonic()
        for index, when in list(self.restart_after.items()):
            if now >= when:
                del self.restart_after[index]
                self.spawn(index)

    def enforce_time_limits(self) -> None:
        """Kill a child whose task passed its hard limit; its task fails, the child is replaced."""
        now_ms = time.time() * 1000
        for child in list(self.children.values()):
            deadline = child.slot[executor.SLOT_DEADLINE_MS]
            task_id = child.slot[executor.SLOT_TASK]
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
            self.conn = connect(self.config.database_url)
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
    return Supervisor(config).run()
