"""A child's claim connection: each exchange writes a batch of outcomes and claims the next tasks.

One exchange is one pipelined transaction (``worker.db.Pipeline``): the
completer's batch and a claim of up to ``limit`` tasks. It is sent without
waiting and its reply read later, so the commit overlaps with running tasks.
Claimed rows come back as lean tuples (``Claim``) with the payload as JSON
text, decoded only when the task runs.

A lost connection: the exchange is sent again on a new connection, after a
growing pause, until it goes through. The lost one may have committed: its
outcomes are then written twice (fenced: the second changes nothing) and its
claims are orphans, tasks held under this worker's id that it never saw,
which every new connection hands back before its first exchange.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple

import psycopg

from sql import queries
from taskq.backoff import Backoff
from taskq.connections import CLAIM, application_name
from worker import completer
from worker.completer import Outcomes, settle_worker_tasks
from worker.config import WorkerConfig
from worker.db import Pipeline, Statement, connect

log = logging.getLogger("taskq.worker")

CLAIM_ORDER = attrgetter("n")


class Claim(NamedTuple):
    """One claimed task: the lean row ``claim_tasks`` returns."""

    id: int
    lease_token: int
    task_type: str
    payload: str  # JSON text, decoded when the task runs
    queue: str
    attempts: int
    timeout: int | None
    waited: float  # seconds from due to claimed
    n: int  # claim order
    trace_context: str | None = None  # JSON text of the stored W3C context (taskq.tracing)


class Reply(NamedTuple):
    """How an exchange ended: the claimed rows, and each failed task's new status.

    ``failed`` is None when the outcomes were not written (the exchange was
    given up: the supervisor is gone); they are the caller's to keep.
    ``reopens``: the claim's gate found a rate window full (its hint rows, no id).
    """

    outcomes: Outcomes
    limit: int
    rows: list[Claim]
    failed: dict[int, str] | None
    reopens: float | None = None  # seconds until a full rate-limited queue of ours takes more


class Exchange:
    """The claim connection of one worker process (start/stop), one exchange in flight at most."""

    def __init__(
        self,
        config: WorkerConfig,
        worker_id: str,
        held: Callable[[], set[int]] = set,
        gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.queues = list(config.queues)
        self.lease_seconds = config.lease_seconds
        self.held = held  # ids of the tasks this process still has to run or write
        self.gone = gone  # the supervisor died: stop retrying
        self.conn: psycopg.Connection | None = None
        self.pipe: Pipeline | None = None
        self.inflight: tuple[Outcomes, int] | None = None  # sent: outcomes, claim limit
        self.failure: psycopg.OperationalError | None = None  # the send of ``inflight`` failed

    @property
    def busy(self) -> bool:
        """An exchange was sent and its reply is not read yet."""
        return self.inflight is not None

    @property
    def claiming(self) -> int:
        """How many tasks the exchange in flight asked for."""
        return self.inflight[1] if self.inflight is not None else 0

    def start(self) -> None:
        """Connect (when the database is down, the first exchange retries until it is up)."""
        try:
            self.connect(Outcomes())
        except psycopg.OperationalError as exc:
            log.warning("database unreachable (%s); the first exchange retries", exc)

    def stop(self) -> None:
        """Leave: this process stops being a worker (``live_workers``) and disconnects."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if not (conn.closed or conn.broken or self.busy):
                conn.execute(queries["delete_workers"], {"worker_ids": [self.worker_id]})
        finally:
            conn.close()

    def statements(self, outcomes: Outcomes, limit: int) -> list[Statement]:
        """The statements of one exchange: the outcomes' writes, then the claim (when limit > 0).

        An exchange that only claims (an idle pickup) commits without waiting for
        its WAL flush (``relax_claim_commit``): the row is PROCESSING for everyone
        at once, and the task need not wait for an fsync first. Outcomes are always
        durable, and their flush carries every claim before them (WAL is written in
        order); only a Postgres crash within the WAL writer's delay can undo such a
        claim, and then the task is due again: at least once, one outcome.
        """
        writes = completer.statements(outcomes, self.config.max_retry_delay)
        if limit > 0 and not writes:
            writes.append(("relax_claim_commit", {}))
        if limit > 0:
            writes.append(("claim_tasks", {"queues": self.queues, "limit": limit,
                "worker_id": self.worker_id, "lease_seconds": self.lease_seconds}))  # fmt: skip
        return writes

    def send(self, outcomes: Outcomes, limit: int) -> None:
        """Send ``outcomes`` and a claim of ``limit`` without waiting; ``receive`` gets the reply.

        Nothing to write or claim sends nothing (and leaves nothing in flight).
        """
        writes = self.statements(outcomes, limit)
        if not writes:
            return
        self.inflight = (outcomes, limit)
        try:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.connect(outcomes)
            self.pipe.send(writes)
        except psycopg.OperationalError as exc:
            self.failure = exc  # ``receive`` retries

    def poll(self) -> None:
        """Read replies already here (cheap); a lost connection shows up in ``receive``."""
        if self.failure is None:
            try:
                self.pipe.poll()
            except psycopg.OperationalError as exc:
                self.failure = exc

    def receive(self) -> Reply:
        """Wait for the exchange in flight; it is retried until it goes through or is given up."""
        outcomes, limit = self.inflight
        failure, self.inflight, self.failure = self.failure, None, None
        if failure is None:
            try:
                return self.reply(outcomes, limit)
            except psycopg.OperationalError as exc:
                failure = exc
        return self.retry(failure, outcomes, limit)

    def reply(self, outcomes: Outcomes, limit: int) -> Reply:
        """Read the reply of the pipeline in flight."""
        results = self.pipe.receive()
        rows = self.pipe.rows(results.get("claim_tasks"), Claim._make)
        reopens = None
        if rows and rows[-1].id is None:  # the gate's hints come last
            reopens = min(row.waited for row in rows if row.id is None)
            rows = [row for row in rows if row.id is not None]
        if len(rows) > 1:
            rows.sort(key=CLAIM_ORDER)
        failed = dict(self.pipe.rows(results.get("fail_tasks"), tuple))
        return Reply(outcomes, limit, rows, failed, reopens)

    def retry(self, exc: Exception, outcomes: Outcomes, limit: int) -> Reply:
        """After a lost connection: reconnect and exchange again, waiting, until it goes through."""
        backoff = Backoff(0.05, 2.0)
        while True:
            pause = backoff.next()
            log.warning("database unreachable (%s); retrying in %.2fs", exc, pause)
            if self.conn is not None:
                self.conn.close()
            time.sleep(pause)
            if self.gone():
                return Reply(outcomes, limit, [], None)
            try:
                self.connect(outcomes)
                self.pipe.send(self.statements(outcomes, limit))
                return self.reply(outcomes, limit)
            except psycopg.OperationalError as again:
                exc = again

    def connect(self, sending: Outcomes) -> None:
        """Open the claim connection, register this process, and hand back orphaned claims.

        A claim whose commit reached the server but whose reply was lost left
        tasks PROCESSING under our id that we never saw: give them back. The
        tasks we know of (held, or with an outcome in ``sending``) stay ours.
        """
        self.conn = connect(
            self.config.database_url,
            application_name(CLAIM, self.config.hostname),
            self.config.database_pooled,
        )
        self.pipe = Pipeline(self.conn, self.config.database_pooled)
        self.conn.execute(
            queries["register_worker"],
            {
                "id": self.worker_id,
                "hostname": self.config.hostname,
                "pid": os.getpid(),
                "queues": self.queues,
                "concurrency": 1,
            },
        )
        keep = self.held() | sending.task_ids()
        orphans = settle_worker_tasks(self.conn, self.worker_id, keep=keep,
                                      max_retry_delay=self.config.max_retry_delay)  # fmt: skip
        if orphans:
            log.info("handed back %d orphaned claims", orphans)
