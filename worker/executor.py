"""One worker child: claims tasks for itself, runs them one at a time, writes outcomes in batches.

Slots and batches: a child runs one task at a time, so it claims one task at
a time — unless the tasks it just ran were all fast (under
``fast_task_ms``): then the next claim doubles, up to ``batch_size``. Slow
work is therefore never hoarded by one child while another sits idle, and a
backlog of tiny tasks costs one claim and one completion statement per
batch instead of per task. Claimed-but-unstarted tasks are covered by the
supervisor's heartbeat like the running one and handed back on shutdown.

Prefetch (two deep): while tasks are fast (the claim has grown past one),
the child sends the next exchange — write the previous batch's outcomes,
claim the batch after this one — before it runs the current batch, and reads
the reply after: the commit's round trip and fsync overlap with running
tasks, in one thread. A child therefore holds at most its current batch plus
one prefetched batch (twice ``batch_size``) while tasks are fast, and as soon
as one task is slow the prefetched batch is handed back (attempt not
counted) and prefetch stays off until the claim grows again; with slow
tasks a child holds one task, as before. (Precisely: one slow task stops
prefetching, the second in a row hands the prefetched batch back; see
``adapt``.)

Time limits: the soft limit is a SIGALRM that raises SoftTimeLimitExceeded
inside the task; the hard limit is enforced by the supervisor, which reads
the running task's deadline from shared memory and kills the child.
Cancel: the listener thread hears taskq_cancel and interrupts the main thread
with SIGUSR1 (TaskCancelled); a task that ignores it is killed after
``cancel_grace``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Any

import psycopg
from marshmallow import ValidationError

from sql import queries
from taskq.registry import REGISTRY, SoftTimeLimitExceeded, TaskCancelled, TaskContext
from worker import metrics
from worker.claim import (
    Claim,
    ClaimPipe,
    Outcomes,
    connect,
    encode_result,
    write_outcomes,
)
from worker.config import WorkerConfig
from worker.listener import Listener
from worker.registry import load_task_modules

log = logging.getLogger("taskq.worker")

# Shared-memory slots of a child, read by the supervisor.
SLOT_TASK, SLOT_TOKEN, SLOT_DEADLINE_MS, SLOT_DONE = range(4)
SLOT_SIZE = 4


def worker_id_for(pid: int) -> str:
    """The ``tasks.worker_id`` / ``workers.id`` of the worker process ``pid`` on this host."""
    return f"{socket.gethostname()}:{pid}"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies (a lost worker is lost whole)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_scan_json = json.JSONDecoder().scan_once


def decode_payload(text: str) -> Any:
    """A payload from its JSON text (valid: Postgres produced it), without json.loads' wrappers."""
    return {} if text == "{}" else _scan_json(text, 0)[0]


def format_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded in size."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 4000 else text[:4000] + "…"


class Child:
    """The claim-run-complete loop of one worker process."""

    def __init__(self, config: WorkerConfig, slot: Any = None, parent_pid: int | None = None):
        self.config = config
        self.slot = slot if slot is not None else [0] * SLOT_SIZE
        self.parent_pid = parent_pid
        self.worker_id = worker_id_for(os.getpid())
        self.queues = list(config.queues)
        self.stopping = False
        self.wake = threading.Event()
        self.local: deque[Claim] = deque()
        self.outcomes = Outcomes()
        self.inflight: tuple[Outcomes, dict, int] | None = None  # sent: outcomes, types, limit
        self.metrics = metrics.BatchMetrics()
        self.types: dict[int, tuple[str, str]] = {}
        self.cancelled: set[int] = set()
        self.running: Claim | None = None
        self.cancel_target: int | None = None
        self.done = 0
        self.limit = 1
        self.slow_streak = 0
        self.backlog = False  # the last claim got all it asked for
        self.soft_deadline = 0.0  # monotonic soft limit of the running task
        self.alarm_at: float | None = None  # when the armed SIGALRM timer fires
        self.conn: psycopg.Connection | None = None
        self.pipe: ClaimPipe | None = None
        self.listener: Listener | None = None

    # signals -----------------------------------------------------------------
    def install_signals(self) -> None:
        """SIGTERM drains; SIGINT is the supervisor's business; ALRM/USR1 interrupt the task."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, self.on_alarm)
        signal.signal(signal.SIGUSR1, self.on_cancel_signal)

    def on_term(self, signum: int, frame: Any) -> None:
        """Stop claiming; the running task finishes (the supervisor's grace bounds it)."""
        self.stopping = True

    def on_alarm(self, signum: int, frame: Any) -> None:
        """Soft time limit of the running task; set for an earlier task, it re-arms instead.

        The timer is not disarmed after each task: a batch of fast tasks
        would pay two syscalls per task for it. It fires at the earliest
        deadline it was armed for and moves on to the running task's own.
        """
        running = self.running
        if running is None:
            self.alarm_at = None
            return
        left = self.soft_deadline - time.monotonic()
        if left > 0:
            self.alarm_at = self.soft_deadline
            signal.setitimer(signal.ITIMER_REAL, left)
            return
        self.alarm_at = None
        raise SoftTimeLimitExceeded(f"soft time limit of task {running.id} reached")

    def on_cancel_signal(self, signum: int, frame: Any) -> None:
        """The listener saw the running task cancelled."""
        running = self.running
        if running is not None and running.id == self.cancel_target:
            raise TaskCancelled(f"task {running.id} was cancelled")

    # listener callbacks (listener thread) -------------------------------------
    def on_wakeup(self, queue: str | None) -> None:
        """A task became due in one of our queues (or notifications may have been missed)."""
        self.wake.set()

    def on_cancel(self, task_id: int) -> None:
        """A PROCESSING task was cancelled: drop it if queued here, interrupt it if running."""
        self.cancelled.add(task_id)
        running = self.running
        if running is not None and running.id == task_id:
            self.cancel_target = task_id
            os.kill(os.getpid(), signal.SIGUSR1)
            timer = threading.Timer(self.config.cancel_grace, self.kill_if_still_running, [task_id])
            timer.daemon = True
            timer.start()

    def kill_if_still_running(self, task_id: int) -> None:
        """The task swallowed TaskCancelled: end the process; the supervisor replaces it."""
        running = self.running
        if running is not None and running.id == task_id:
            log.warning("task %s ignored its cancellation; killing worker process", task_id)
            os.kill(os.getpid(), signal.SIGKILL)

    # main loop -----------------------------------------------------------------
    def run(self) -> int:
        """Claim and run tasks until told to stop or ``max_tasks`` is reached; the exit code."""
        load_task_modules(self.config.imports)
        # Imported modules live as long as the process: keep them out of every
        # full collection (a batch of 1,000 rows otherwise triggers one that
        # walks them all, ~50 ms).
        gc.freeze()
        self.listener = Listener(
            self.config.database_url, self.queues, self.on_wakeup, self.on_cancel
        ).start()
        try:
            while not self.stopping:
                if self.config.max_tasks and self.done >= self.config.max_tasks:
                    break
                if not self.local:
                    if self.inflight is not None:
                        self.local.extend(self.receive())
                        continue
                    # Checked per batch, not per task: a syscall; PDEATHSIG covers the rest.
                    if self.parent_gone():
                        break
                    self.refill()
                    continue
                if self.inflight is None:
                    if self.prefetching():
                        self.send(self.next_limit())
                    elif self.outcomes_due():
                        self.send(0)
                elif len(self.local) % 128 == 0:
                    self.poll()
                self.run_one(self.local.popleft())
        finally:
            self.shutdown()
        return 0

    def parent_gone(self) -> bool:
        """The supervisor died: stop (Linux also delivers PDEATHSIG)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def refill(self) -> bool:
        """Write pending outcomes and claim the next batch; False when nothing was claimed."""
        self.wake.clear()
        limit = self.next_limit()
        self.send(limit)
        if self.inflight is not None:
            self.local.extend(self.receive())
        if self.local or limit == 0:
            return bool(self.local)
        # Nothing due: sleep until a notification or the poll interval. The
        # wait is chunked because signal handlers must not touch the Event's
        # lock (SIGTERM only sets a flag).
        deadline = time.monotonic() + self.config.poll_interval
        while not self.stopping and not self.parent_gone():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.wake.wait(min(remaining, 0.25)):
                break
        return False

    def prefetching(self) -> bool:
        """Claim the next batch ahead: only while tasks are fast (the claim grew past one)
        and there is a backlog (the last claim came back full; a trickle gains nothing)."""
        return self.limit > 1 and self.backlog and not self.stopping

    def outcomes_due(self) -> bool:
        """Write results early when many are waiting or the oldest waited ``flush_ms``."""
        if not self.outcomes:
            return False
        if len(self.outcomes) >= self.config.batch_size:
            return True
        return (time.monotonic() - self.first_outcome_at) * 1000 >= self.config.flush_ms

    def send(self, limit: int) -> None:
        """Send pending outcomes and a claim of ``limit`` without waiting (see ``receive``)."""
        if self.inflight is not None:
            self.local.extend(self.receive())
        if limit == 0 and not self.outcomes:
            return
        outcomes, self.outcomes = self.outcomes, Outcomes()
        types, self.types = self.types, {}
        try:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.reconnect()
            sent = self.exchange_args(outcomes, limit)
        except psycopg.OperationalError as exc:
            self.outcomes.merge(outcomes)
            self.types.update(types)
            self.local.extend(self.retry(exc, limit))
            return
        if sent:
            self.inflight = (outcomes, types, limit)

    def exchange_args(self, outcomes: Outcomes, limit: int) -> bool:
        """``ClaimPipe.send`` with this child's settings."""
        return self.pipe.send(
            outcomes,
            worker_id=self.worker_id,
            queues=self.queues,
            limit=limit,
            lease_seconds=self.config.lease_seconds,
            max_retry_delay=self.config.max_retry_delay,
        )

    def receive(self) -> list[Claim]:
        """Wait for the exchange in flight; its claimed rows (not yet queued to run)."""
        outcomes, types, limit = self.inflight
        self.inflight = None
        try:
            rows, failed = self.pipe.receive()
        except psycopg.OperationalError as exc:
            self.outcomes.merge(outcomes)
            self.types.update(types)
            return self.retry(exc, limit)
        self.settled(rows, failed, types, limit)
        return rows

    def poll(self) -> None:
        """Read replies already here (cheap); a lost connection shows up in ``receive``."""
        with contextlib.suppress(psycopg.OperationalError):
            self.pipe.poll()

    def retry(self, exc: Exception, limit: int) -> list[Claim]:
        """After a lost connection: reconnect and exchange again, waiting, until it goes through.

        The lost exchange may have committed: its claims are orphans that
        ``reconnect`` hands back, and its outcomes are written again (fenced).
        """
        pause = 0.05
        while True:
            log.warning("database unreachable (%s); retrying in %.2fs", exc, pause)
            if self.conn is not None:
                self.conn.close()
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            if self.parent_gone():
                return []
            outcomes, types = self.outcomes, self.types
            try:
                self.reconnect()
                if not self.exchange_args(outcomes, limit):
                    return []
                rows, failed = self.pipe.receive()
            except psycopg.OperationalError as again:
                exc = again
                continue
            self.outcomes, self.types = Outcomes(), {}
            self.settled(rows, failed, types, limit)
            return rows

    def settled(self, rows: list[Claim], failed: dict[int, str], types: dict, limit: int) -> None:
        """An exchange committed: count its failures and claims."""
        if limit:
            self.backlog = len(rows) >= limit
        self.metrics.flush(failed, types)
        if metrics.ENABLED:
            for row in rows:
                self.metrics.claimed(row.queue, row.waited)

    def reconnect(self) -> None:
        """Open the claim connection, register this process, and hand back orphaned claims.

        A claim whose commit reached the server but whose reply was lost left
        tasks PROCESSING under our id that we never saw: give them back.
        """
        self.conn = connect(self.config.database_url)
        self.pipe = ClaimPipe(self.conn)
        self.conn.execute(
            queries["register_worker"],
            {
                "id": self.worker_id,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": self.queues,
                "concurrency": 1,
            },
        )
        known = {row.id for row in self.local}
        known.update(self.outcomes.done_ids, self.outcomes.failed_ids, self.outcomes.released_ids)
        if self.running is not None:
            known.add(self.running.id)
        orphans = Outcomes()
        with self.conn.transaction():
            for row in self.conn.execute(
                queries["held_tasks"], {"worker_id": self.worker_id}
            ).fetchall():
                if row["id"] not in known:
                    orphans.release(row["id"], row["lease_token"])
            if orphans:
                write_outcomes(self.conn, orphans, self.config.max_retry_delay)
                log.info("handed back %d orphaned claims", len(orphans))

    def next_limit(self) -> int:
        """How many tasks to claim: one, or more while recent tasks were fast.

        With ``max_tasks``, the tasks already claimed (queued or in flight) count.
        """
        if self.stopping:
            return 0
        if not self.config.max_tasks:
            return self.limit
        ahead = len(self.local) + (self.inflight[2] if self.inflight is not None else 0)
        return max(0, min(self.limit, self.config.max_tasks - self.done - ahead))

    def hand_back_prefetch(self) -> None:
        """A task was slow: give back the prefetched batch at once, so others can run it."""
        if self.inflight is None:
            return
        for row in self.receive():
            self.outcomes_add_release(row)
        self.send(0)

    # running one task ------------------------------------------------------------
    def run_one(self, row: Claim) -> None:
        """Run one claimed task and queue its outcome."""
        task_id = row.id
        if task_id in self.cancelled:
            self.cancelled.discard(task_id)
            self.done += 1
            return
        if self.stopping:
            self.outcomes_add_release(row)
            return
        task_type = REGISTRY.get(row.task_type)
        hard = float(row.timeout or self.config.task_timeout)
        started = time.monotonic()
        slot = self.slot
        slot[SLOT_TOKEN] = row.lease_token
        slot[SLOT_TASK] = task_id
        slot[SLOT_DEADLINE_MS] = int((time.time() + hard) * 1000)
        outcome = "completed"
        error: str | None = None
        result_json: str | None = None
        try:
            if task_type is None:
                raise LookupError(f"unknown task type {row.task_type!r}")
            payload = decode_payload(row.payload)
            if task_type.payload_schema is not None:
                payload = task_type.validate(payload, self.config.tasks)
            ctx = TaskContext(task_id, row.attempts, row.queue, row.task_type, self.worker_id,
                              self.config.database_url, self.config.tasks)  # fmt: skip
            soft_at = started + hard * self.config.soft_limit_ratio
            try:
                # running first: an alarm from here on re-arms for this task
                self.soft_deadline, self.running = soft_at, row
                if self.alarm_at is None or self.alarm_at > soft_at:
                    self.alarm_at = soft_at
                    signal.setitimer(signal.ITIMER_REAL, max(soft_at - time.monotonic(), 1e-6))
                result = task_type.func(payload, ctx)
            finally:
                self.running = None
            result_json = encode_result(result)
        except TaskCancelled:
            outcome = "cancelled"
        except ValidationError as exc:
            outcome, error = "failed", f"ValidationError: invalid payload {exc.messages}"
        except Exception as exc:
            outcome, error = "failed", format_error(exc)
        finally:
            slot[SLOT_DEADLINE_MS] = 0
            slot[SLOT_TASK] = 0
        elapsed = time.monotonic() - started
        if not self.outcomes:
            self.first_outcome_at = time.monotonic()
        if outcome == "completed":
            self.outcomes.complete(task_id, row.lease_token, result_json)
        elif outcome == "failed":
            self.outcomes.fail(task_id, row.lease_token, error or "failed")
            self.types[task_id] = (row.task_type, row.queue)
        self.cancelled.discard(task_id)
        self.metrics.finished(row.task_type, row.queue, outcome, elapsed)
        self.done += 1
        slot[SLOT_DONE] = self.done
        self.adapt(elapsed)

    def outcomes_add_release(self, row: Claim) -> None:
        """Give back a claimed task that will not run here (the attempt is not counted)."""
        if not self.outcomes:
            self.first_outcome_at = time.monotonic()
        self.outcomes.release(row.id, row.lease_token)
        self.cancelled.discard(row.id)
        self.metrics.finished(row.task_type, row.queue, "released", 0.0)

    def adapt(self, elapsed: float) -> None:
        """Grow the claim while tasks are fast; back to one as soon as one is not.

        One slow task turns prefetch off; a second one in a row also hands the
        prefetched batch back. A lone slow task is often just this process
        being preempted, and handing back costs two transitions per task.
        """
        if elapsed * 1000 <= self.config.fast_task_ms:
            self.slow_streak = 0
            if not self.local:
                self.limit = min(self.limit * 2, self.config.batch_size)
        else:
            self.limit = 1
            self.slow_streak += 1
            if self.slow_streak >= 2:
                self.hand_back_prefetch()

    def shutdown(self) -> None:
        """Hand back unstarted claims (prefetched ones too), write every outcome, leave."""
        if self.listener is not None:
            self.listener.stop()
        try:
            if self.inflight is not None:
                self.local.extend(self.receive())
            while self.local:
                self.outcomes_add_release(self.local.popleft())
            self.stopping = True
            self.send(0)
            if self.inflight is not None:
                self.receive()
            if self.conn is not None and not self.conn.broken:
                self.conn.execute(queries["delete_workers"], {"worker_ids": [self.worker_id]})
        except psycopg.Error as exc:
            log.warning("could not write outcomes at exit (%s); the reaper will settle them", exc)
        finally:
            if self.conn is not None:
                self.conn.close()


def child_main(config_data: dict, slot: Any, parent_pid: int) -> None:
    """Entry point of a child process (multiprocessing target)."""
    config = WorkerConfig.from_dict(config_data)
    die_with_parent()
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    child = Child(config, slot, parent_pid)
    child.install_signals()
    if os.getppid() != parent_pid:
        return
    raise SystemExit(child.run())
