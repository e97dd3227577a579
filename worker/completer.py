"""The completer: the one place where outcomes become SQL, a batch at a time.

Every write after the claim is fenced by the claim's ``lease_token`` and by
``status = 'PROCESSING'``: a worker whose lease was taken over, or whose task
was cancelled meanwhile, changes nothing. A batch is one statement per kind
(``UPDATE … FROM unnest(…)``): completions, failed attempts, hand-backs, snoozes.

A child's batch travels in the claim connection's next exchange, in the same
pipeline and transaction as the next claim (``worker.exchange``); the
supervisor settling a dead child and the reaper write theirs directly
(``write_outcomes``). Either way the statements come from ``statements``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from sql import queries
from worker import metrics
from worker.db import Statement

if TYPE_CHECKING:
    from worker.exchange import Claim, Exchange, Reply

UNKNOWN = ("?", "?")  # task type and queue of a failure nobody ran here (metrics labels)
# The backoff cap of an attempt lost with its worker (SIGKILL, lost machine): the task
# did not fail, so it is due again as soon as it is returned; the attempt still counts.
NO_BACKOFF = 0.0


@dataclass
class Outcomes:
    """Results waiting to be written: completions, failures, hand-backs and snoozes."""

    done_ids: list[int] = field(default_factory=list)
    done_tokens: list[int] = field(default_factory=list)
    done_results: list[str | None] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    failed_tokens: list[int] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    failed_labels: list[tuple[str, str]] = field(default_factory=list)  # (task type, queue)
    released_ids: list[int] = field(default_factory=list)
    released_tokens: list[int] = field(default_factory=list)
    snoozed_ids: list[int] = field(default_factory=list)
    snoozed_tokens: list[int] = field(default_factory=list)
    snoozed_seconds: list[float] = field(default_factory=list)

    def complete(self, task_id: int, token: int, result_json: str | None) -> None:
        """Queue a success; ``result_json`` is the result already encoded (None: null)."""
        self.done_ids.append(task_id)
        self.done_tokens.append(token)
        self.done_results.append(result_json)

    def fail(self, task_id: int, token: int, error: str, labels: tuple[str, str] = UNKNOWN):
        """Queue a failed attempt (``labels``: its task type and queue, for the metrics)."""
        self.failed_ids.append(task_id)
        self.failed_tokens.append(token)
        self.failed_errors.append(error)
        self.failed_labels.append(labels)

    def release(self, task_id: int, token: int) -> None:
        """Queue a hand-back (the attempt is not counted)."""
        self.released_ids.append(task_id)
        self.released_tokens.append(token)

    def snooze(self, task_id: int, token: int, seconds: float) -> None:
        """Queue a snooze: due again ``seconds`` from now, the attempt not counted."""
        self.snoozed_ids.append(task_id)
        self.snoozed_tokens.append(token)
        self.snoozed_seconds.append(seconds)

    def merge(self, other: Outcomes) -> None:
        """Take back ``other``'s outcomes (an exchange that did not go through)."""
        for name, values in vars(self).items():
            values.extend(getattr(other, name))

    def task_ids(self) -> set[int]:
        """Every task with an outcome here (still PROCESSING under this worker until written)."""
        return {*self.done_ids, *self.failed_ids, *self.released_ids, *self.snoozed_ids}

    def __len__(self) -> int:
        return (len(self.done_ids) + len(self.failed_ids) + len(self.released_ids)
                + len(self.snoozed_ids))  # fmt: skip


def encode_result(result: Any) -> str | None:
    """The JSON text of a task's result (TypeError when it is not JSON-able)."""
    return None if result is None else json.dumps(result)


def statements(outcomes: Outcomes, max_retry_delay: float) -> list[Statement]:
    """The fenced UPDATEs that write ``outcomes``: at most one per kind, none when empty."""
    writes: list[Statement] = []
    if outcomes.done_ids:
        writes.append(("complete_tasks", {"ids": outcomes.done_ids,
            "tokens": outcomes.done_tokens, "results": outcomes.done_results}))  # fmt: skip
    if outcomes.failed_ids:
        writes.append(("fail_tasks", {"ids": outcomes.failed_ids,
            "tokens": outcomes.failed_tokens, "errors": outcomes.failed_errors,
            "max_delay": max_retry_delay}))  # fmt: skip
    if outcomes.released_ids:
        writes.append(("release_tasks",
            {"ids": outcomes.released_ids, "tokens": outcomes.released_tokens}))  # fmt: skip
    if outcomes.snoozed_ids:
        writes.append(("snooze_tasks", {"ids": outcomes.snoozed_ids,
            "tokens": outcomes.snoozed_tokens, "seconds": outcomes.snoozed_seconds}))  # fmt: skip
    return writes


def write_outcomes(
    conn: psycopg.Connection, outcomes: Outcomes, max_retry_delay: float
) -> dict[int, str]:
    """Write ``outcomes`` on ``conn`` (the caller commits); each failed task's new status.

    Planned afresh each time (``prepare=False``): a cached generic plan sizes
    ``unnest(ids)`` at 10 rows and, with statistics that see almost no
    PROCESSING row, rescans the whole id list for every task it updates
    (quadratic: 1,000 completions took 150 ms instead of 15).
    """
    failed: dict[int, str] = {}
    for name, params in statements(outcomes, max_retry_delay):
        cur = conn.execute(queries[name], params, prepare=False)
        if name == "fail_tasks":
            failed = {row["id"]: row["status"] for row in cur.fetchall()}
    return failed


def settle_worker_tasks(
    conn: psycopg.Connection,
    worker_id: str,
    *,
    failed: dict[int, str] | None = None,
    keep: set[int] | frozenset[int] = frozenset(),
    max_retry_delay: float = NO_BACKOFF,
) -> int:
    """Settle the tasks ``worker_id`` holds and will not finish; the number settled.

    The tasks in ``failed`` (id -> error: the one a dead process was running)
    count as failed attempts, due again at once unless ``max_retry_delay`` asks
    for the usual backoff (a hard time limit: the task's own failure); the
    others were claimed but never started, so they go back without counting.
    Tasks in ``keep`` are left alone: their owner still runs them or has their
    outcome to write.
    """
    failed = failed or {}
    outcomes = Outcomes()
    with conn.transaction():
        for row in conn.execute(queries["held_tasks"], {"worker_id": worker_id}).fetchall():
            if row["id"] in keep:
                continue
            if row["id"] in failed:
                outcomes.fail(row["id"], row["lease_token"], failed[row["id"]])
            else:
                outcomes.release(row["id"], row["lease_token"])
        write_outcomes(conn, outcomes, max_retry_delay)
    return len(outcomes)


class Completer:
    """A child's outcomes, batched: handed to the next exchange whole, written once it commits."""

    def __init__(self, batch_size: int, flush_ms: float, exchange: Exchange) -> None:
        self.batch_size = batch_size
        self.flush_ms = flush_ms
        self.exchange = exchange
        self.metrics = metrics.BatchMetrics()
        self.pending = Outcomes()
        self.first_at = 0.0  # when the oldest pending outcome was recorded; 0: none since take

    def start(self) -> None:
        """Nothing pending yet."""
        self.pending = Outcomes()

    def stop(self) -> None:
        """Write what is still pending: one last exchange, which claims nothing."""
        if self.pending:
            self.exchange.send(self.take(), 0)
            self.settled(self.exchange.receive())

    def record(self, row: Claim, outcome: str, value: Any, seconds: float) -> None:
        """Queue the outcome of a task run here: completed (``value``: its result JSON),
        failed (``value``: the error), snoozed (``value``: the delay in seconds) or
        cancelled (nothing to write: the row says so)."""
        if not self.first_at:
            self.first_at = time.monotonic()
        if outcome == "completed":
            self.pending.complete(row.id, row.lease_token, value)
        elif outcome == "failed":
            labels = (row.task_type, row.queue)
            self.pending.fail(row.id, row.lease_token, value or "failed", labels)
        elif outcome == "snoozed":
            self.pending.snooze(row.id, row.lease_token, value)
        self.metrics.finished(row.task_type, row.queue, outcome, seconds)

    def release(self, row: Claim) -> None:
        """Queue the hand-back of a claimed task that will not run here (attempt not counted)."""
        if not self.first_at:
            self.first_at = time.monotonic()
        self.pending.release(row.id, row.lease_token)
        self.metrics.finished(row.task_type, row.queue, "released", 0.0)

    def due(self) -> bool:
        """Write early when many outcomes wait or the oldest waited ``flush_ms``."""
        if not self.pending:
            return False
        if len(self.pending) >= self.batch_size:
            return True
        return (time.monotonic() - self.first_at) * 1000 >= self.flush_ms

    def take(self) -> Outcomes:
        """The pending batch, for an exchange to carry (``settled`` hears how it went)."""
        batch, self.pending, self.first_at = self.pending, Outcomes(), 0.0
        return batch

    def settled(self, reply: Reply) -> None:
        """An exchange ended: count what it wrote, or take its batch back when it could not."""
        if reply.failed is None:
            self.pending.merge(reply.outcomes)
            return
        types = None
        if metrics.ENABLED and reply.failed:
            types = dict(zip(reply.outcomes.failed_ids, reply.outcomes.failed_labels, strict=True))
        self.metrics.flush(reply.failed, types)
