"""One worker child process: a few services with one lifecycle, and the loop between them.

- ``Runner``: runs one task at a time (time limits, cancel);
- ``Exchange``: the claim connection, one pipelined exchange in flight;
- ``Completer``: batches outcomes, the only place they become SQL;
- ``Producer``: decides how many to claim and when (``ClaimPolicy``);
- ``Listener``: the LISTEN connection (wake-ups for the producer, cancels for
  the runner).

Each has ``start()`` and ``stop()``; they start in that order and stop in the
reverse one, so at shutdown the listener goes first, the producer hands back
what it will not run, the completer writes what is left, and the exchange
leaves. The loop itself only passes tasks from the producer to the runner, which
hands each outcome to the completer.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
from typing import Any

import psycopg

from taskq.connections import LISTENER, application_name
from taskq.registry import close_shared_connections
from worker.completer import Completer
from worker.config import WorkerConfig
from worker.exchange import Exchange
from worker.listener import Listener
from worker.producer import Producer
from worker.registry import load_task_modules
from worker.runner import SLOT_SIZE, Runner

log = logging.getLogger("taskq.worker")


def worker_id_for(config: WorkerConfig, pid: int) -> str:
    """The ``tasks.worker_id`` / ``workers.id`` of the worker process ``pid`` under ``config``:
    ``host:pid:instance``."""
    return f"{config.hostname}:{pid}:{config.instance}"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies (a lost worker is lost whole)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    """The services of one worker process and the claim-run-complete loop."""

    def __init__(self, config: WorkerConfig, slot: Any = None, parent_pid: int | None = None):
        self.parent_pid = parent_pid
        worker_id = worker_id_for(config, os.getpid())
        self.exchange = Exchange(config, worker_id, held=self.held, gone=self.parent_gone)
        self.completer = Completer(config.batch_size, config.flush_ms, self.exchange)
        slot = slot if slot is not None else [0] * SLOT_SIZE
        self.runner = Runner(config, worker_id, slot, self.completer)
        self.producer = Producer(config, self.exchange, self.completer,
                                 done=lambda: self.runner.done, gone=self.parent_gone)  # fmt: skip
        self.listener = Listener(config.listen_database_url, config.queues, self.producer.on_wakeup,
                                 self.runner.cancel,
                                 application_name(LISTENER, config.hostname))  # fmt: skip
        self.services = (self.runner, self.exchange, self.completer, self.producer, self.listener)

    def trap_signals(self) -> None:
        """SIGTERM drains; SIGINT is the supervisor's business."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(self, signum: int, frame: Any) -> None:
        """Stop claiming; the running task finishes (the supervisor's grace bounds it)."""
        self.producer.stopping = True

    def parent_gone(self) -> bool:
        """The supervisor died: stop (Linux also delivers PDEATHSIG)."""
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def held(self) -> set[int]:
        """Tasks this process holds and will run or write (a reconnect must not hand them back)."""
        ids = {row.id for row in self.producer.queue} | self.completer.pending.task_ids()
        if self.runner.running is not None:
            ids.add(self.runner.running.id)
        return ids

    def start(self) -> None:
        """Load the task modules and start every service."""
        load_task_modules(self.runner.config.imports)
        # Imported modules live as long as the process: keep them out of every
        # full collection (a batch of 1,000 rows otherwise triggers one that
        # walks them all, ~50 ms).
        gc.freeze()
        for service in self.services:
            service.start()

    def serve(self) -> None:
        """Run what the producer claims until told to stop, or ``max_tasks`` ran."""
        producer, runner, policy = self.producer, self.runner, self.producer.policy
        queue = producer.queue
        while not producer.stopping:
            row = producer.next()
            if row is None:
                # Claims never exceed the free slots: with max_tasks run, none is queued.
                if policy.spent(runner.done) or self.parent_gone():
                    break
                continue
            if producer.stopping:  # SIGTERM came while claiming: this one goes back too
                queue.appendleft(row)
                break
            seconds = runner.run(row)
            if seconds is not None and policy.finished(seconds, len(queue)):
                producer.hand_back()

    def stop(self) -> None:
        """Stop every service, the last started first; a lost database leaves it to the reaper.
        Then close the connection the tasks shared (``ctx.connection()``)."""
        for service in reversed(self.services):
            try:
                service.stop()
            except psycopg.Error as exc:
                log.warning("could not write outcomes at exit (%s); the reaper settles them", exc)
        close_shared_connections()


def child_main(config_data: dict, slot: Any, parent_pid: int) -> None:
    """Entry point of a child process (multiprocessing target)."""
    config = WorkerConfig.from_dict(config_data)
    die_with_parent()
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    child = Child(config, slot, parent_pid)
    child.trap_signals()
    if os.getppid() != parent_pid:
        return
    child.start()
    try:
        child.serve()
    finally:
        child.stop()
