"""The runner: runs one claimed task at a time, under its time limits, and says how it ended.

Time limits: the soft limit is a SIGALRM that raises SoftTimeLimitExceeded
inside the task; the hard limit is enforced by the supervisor, which reads
the running task's deadline from the child's shared-memory slot and kills the
child. Cancel: the listener thread hears taskq_cancel and interrupts the main
thread with SIGUSR1 (TaskCancelled); a task that ignores it is killed after
``cancel_grace``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from marshmallow import ValidationError

from taskq import tracing
from worker.completer import Completer, encode_result
from worker.config import WorkerConfig
from worker.exchange import Claim
from worker.registry import REGISTRY, Snooze, SoftTimeLimitExceeded, TaskCancelled, TaskContext

log = logging.getLogger("taskq.worker")

# Shared-memory slots of a child, read by the supervisor.
SLOT_TASK, SLOT_TOKEN, SLOT_DEADLINE_MS, SLOT_DONE = range(4)
SLOT_SIZE = 4

_scan_json = json.JSONDecoder().scan_once


def decode_payload(text: str) -> Any:
    """A payload from its JSON text (valid: Postgres produced it), without json.loads' wrappers."""
    return {} if text == "{}" else _scan_json(text, 0)[0]


def format_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded in size."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 4000 else text[:4000] + "…"


class Runner:
    """Run claimed tasks one at a time in the main thread (start/stop: the signal handlers).

    Each outcome goes to the completer: completed (its result JSON), failed
    (the error), snoozed (the delay) or cancelled (nothing to write: the row says
    so already).
    """

    def __init__(self, config: WorkerConfig, worker_id: str, slot: Any, completer: Completer):
        self.config = config
        self.worker_id = worker_id
        self.slot = slot
        self.completer = completer
        self.done = 0  # tasks run or dropped
        self.cancelled: set[int] = set()  # heard cancelled: drop them if they come up
        self.running: Claim | None = None
        self.cancel_target: int | None = None
        self.main_thread = threading.main_thread().ident  # where tasks run and signals land
        self.soft_deadline = 0.0  # monotonic soft limit of the running task
        self.alarm_at: float | None = None  # when the armed SIGALRM timer fires

    def start(self) -> None:
        """Install the interrupts of a running task: soft time limit, cancel."""
        signal.signal(signal.SIGALRM, self.on_alarm)
        signal.signal(signal.SIGUSR1, self.on_cancel_signal)

    def stop(self) -> None:
        """Disarm the timer and the interrupts."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.alarm_at = None
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

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

    def cancel(self, task_id: int) -> None:
        """A PROCESSING task was cancelled (listener thread): drop it or interrupt it."""
        self.cancelled.add(task_id)
        running = self.running
        if running is not None and running.id == task_id:
            self.cancel_target = task_id
            # To the main thread, not the process: a process-wide signal may be taken by
            # this thread instead (starting the timer's thread makes it look), and the
            # main thread would sleep on in its task until the timer killed it.
            signal.pthread_kill(self.main_thread, signal.SIGUSR1)
            timer = threading.Timer(self.config.cancel_grace, self.kill_if_still_running, [task_id])
            timer.daemon = True
            timer.start()

    def kill_if_still_running(self, task_id: int) -> None:
        """The task swallowed TaskCancelled: end the process; the supervisor replaces it."""
        running = self.running
        if running is not None and running.id == task_id:
            log.warning("task %s ignored its cancellation; killing worker process", task_id)
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self, row: Claim) -> float | None:
        """Run one claimed task; the seconds it ran, or None when it was cancelled before."""
        self.done += 1
        if row.id in self.cancelled:
            self.cancelled.discard(row.id)
            return None
        hard = float(row.timeout or self.config.task_timeout)
        started = time.monotonic()
        slot = self.slot
        slot[SLOT_TOKEN] = row.lease_token
        slot[SLOT_TASK] = row.id
        slot[SLOT_DEADLINE_MS] = int((time.monotonic() + hard) * 1000)  # one clock per host
        soft_at = started + hard * self.config.soft_limit_ratio
        ctx = TaskContext(row.id, row.attempts, row.queue, row.task_type, self.worker_id,
                          self.config.database_url, self.config.tasks, row.lease_token)  # fmt: skip
        with self.traced(row) as span:
            try:
                kind, value = "completed", encode_result(self.call(row, soft_at, ctx))
            except TaskCancelled:
                kind, value = "cancelled", None
            except Snooze as snooze:
                kind, value = "snoozed", snooze.seconds
            except ValidationError as exc:
                kind, value = "failed", f"ValidationError: invalid payload {exc.messages}"
            except Exception as exc:
                kind, value = "failed", format_error(exc)
            finally:
                slot[SLOT_DEADLINE_MS] = 0
                slot[SLOT_TASK] = 0
            if span is not None:
                span.set_attribute("taskq.outcome", kind)
        ctx.flush_progress()  # the last value lands before the outcome
        seconds = time.monotonic() - started
        self.completer.record(row, kind, value, seconds)
        self.cancelled.discard(row.id)
        slot[SLOT_DONE] = self.done
        return seconds

    @contextlib.contextmanager
    def traced(self, row: Claim) -> Iterator[Any]:
        """The task's spans, continuing the trace stored with it: ``taskq.claim`` (from due
        to claimed), then ``taskq.run`` around the run; nothing for an untraced task."""
        if row.trace_context is None or not tracing.enabled():
            yield None
            return
        ids = {"taskq__task_id": row.id, "taskq__attempt": row.attempts,
               "taskq__queue": row.queue, "taskq__task_type": row.task_type}  # fmt: skip
        due_ns = time.time_ns() - int(max(row.waited, 0.0) * 1e9)
        with tracing.continued("taskq.claim", row.trace_context, start_time=due_ns,
                               taskq__worker_id=self.worker_id, **ids):  # fmt: skip
            claimed = tracing.carrier()
        with tracing.continued("taskq.run", claimed, **ids) as span:
            yield span

    def call(self, row: Claim, soft_at: float, ctx: TaskContext) -> Any:
        """The task function's result for ``row``, with the soft limit armed for ``soft_at``."""
        task_type = REGISTRY.get(row.task_type)
        if task_type is None:
            raise LookupError(f"unknown task type {row.task_type!r}")
        payload = decode_payload(row.payload)
        if task_type.payload_schema is not None:
            payload = task_type.validate(payload, self.config.tasks)
        try:
            # running first: an alarm from here on re-arms for this task
            self.soft_deadline, self.running = soft_at, row
            if self.alarm_at is None or self.alarm_at > soft_at:
                self.alarm_at = soft_at
                signal.setitimer(signal.ITIMER_REAL, max(soft_at - time.monotonic(), 1e-6))
            return task_type.run(payload, ctx)
        finally:
            self.running = None
