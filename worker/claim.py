"""Claim, complete, fail and hand back tasks: the queue's hot path, in batches.

Every write after the claim is fenced by the claim's ``lease_token`` and by
``status = 'PROCESSING'``: a worker whose lease was taken over, or whose task
was cancelled meanwhile, changes nothing. Results are written one statement
per batch (``UPDATE … FROM unnest(…)``), and the results of the last batch
travel in the same pipeline and transaction as the next claim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sql import queries


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection whose statements are prepared on first use."""
    conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=5)
    conn.prepare_threshold = 0
    return conn


@dataclass
class Outcomes:
    """Results waiting to be written: completions, failures and hand-backs."""

    done_ids: list[int] = field(default_factory=list)
    done_tokens: list[int] = field(default_factory=list)
    done_results: list[str | None] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    failed_tokens: list[int] = field(default_factory=list)
    failed_errors: list[str] = field(default_factory=list)
    released_ids: list[int] = field(default_factory=list)
    released_tokens: list[int] = field(default_factory=list)

    def complete(self, task_id: int, token: int, result_json: str | None) -> None:
        """Queue a success; ``result_json`` is the result already encoded (None: null)."""
        self.done_ids.append(task_id)
        self.done_tokens.append(token)
        self.done_results.append(result_json)

    def fail(self, task_id: int, token: int, error: str) -> None:
        """Queue a failed attempt."""
        self.failed_ids.append(task_id)
        self.failed_tokens.append(token)
        self.failed_errors.append(error)

    def release(self, task_id: int, token: int) -> None:
        """Queue a hand-back (the attempt is not counted)."""
        self.released_ids.append(task_id)
        self.released_tokens.append(token)

    def clear(self) -> None:
        """Forget everything (after it was committed)."""
        for values in vars(self).values():
            values.clear()

    def __len__(self) -> int:
        return len(self.done_ids) + len(self.failed_ids) + len(self.released_ids)


def encode_result(result: Any) -> str | None:
    """The JSON text of a task's result (TypeError when it is not JSON-able)."""
    return None if result is None else json.dumps(result)


def exchange(
    conn: psycopg.Connection,
    outcomes: Outcomes,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float,
    max_retry_delay: float,
) -> tuple[list[dict], dict[int, str]]:
    """Write ``outcomes`` and claim up to ``limit`` tasks: one transaction, one pipeline.

    Returns the claimed rows in claim order, and the new status (RETRYING or
    FAILED) of each failed task. ``outcomes`` is emptied only once the
    transaction committed, so after a lost connection they are written again
    (the fence makes that harmless).
    """
    with conn.pipeline(), conn.transaction():
        failed = write_outcomes(conn, outcomes, max_retry_delay)
        claim = None
        if limit > 0:
            claim = conn.execute(
                queries["claim_tasks"],
                {
                    "queues": queues,
                    "limit": limit,
                    "worker_id": worker_id,
                    "lease_seconds": lease_seconds,
                },
            )
    outcomes.clear()
    statuses = {r["id"]: r["status"] for r in failed.fetchall()} if failed else {}
    if claim is None:
        return [], statuses
    rows = claim.fetchall()
    if len(rows) > 1:
        rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
    return rows, statuses


def write_outcomes(
    conn: psycopg.Connection, outcomes: Outcomes, max_retry_delay: float
) -> psycopg.Cursor | None:
    """Send the fenced UPDATEs for ``outcomes`` (the caller commits); the failures' cursor.

    Planned afresh each time (``prepare=False``): a cached generic plan sizes
    ``unnest(ids)`` at 10 rows and, with statistics that see almost no
    PROCESSING row, rescans the whole id list for every task it updates
    (quadratic: 1,000 completions took 150 ms instead of 15).
    """
    failed = None
    if outcomes.done_ids:
        conn.execute(
            queries["complete_tasks"],
            {
                "ids": outcomes.done_ids,
                "tokens": outcomes.done_tokens,
                "results": outcomes.done_results,
            },
            prepare=False,
        )
    if outcomes.failed_ids:
        failed = conn.execute(
            queries["fail_tasks"],
            {
                "ids": outcomes.failed_ids,
                "tokens": outcomes.failed_tokens,
                "errors": outcomes.failed_errors,
                "max_delay": max_retry_delay,
            },
            prepare=False,
        )
    if outcomes.released_ids:
        conn.execute(
            queries["release_tasks"],
            {"ids": outcomes.released_ids, "tokens": outcomes.released_tokens},
            prepare=False,
        )
    return failed


def claim_tasks(
    conn: psycopg.Connection,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float = 30.0,
) -> list[dict]:
    """Claim up to ``limit`` runnable tasks (nothing else written)."""
    rows, _ = exchange(
        conn,
        Outcomes(),
        worker_id=worker_id,
        queues=queues,
        limit=limit,
        lease_seconds=lease_seconds,
        max_retry_delay=0,
    )
    return rows


def settle_worker_tasks(
    conn: psycopg.Connection,
    worker_id: str,
    *,
    failed: dict[int, str] | None = None,
    max_retry_delay: float = 3600.0,
) -> int:
    """Settle every task a gone worker process still holds; the number settled.

    The tasks in ``failed`` (id -> error: the one it was running when killed)
    count as failed attempts; the others were claimed but never started, so
    they go back without counting.
    """
    failed = failed or {}
    outcomes = Outcomes()
    with conn.transaction():
        for row in conn.execute(queries["held_tasks"], {"worker_id": worker_id}).fetchall():
            if row["id"] in failed:
                outcomes.fail(row["id"], row["lease_token"], failed[row["id"]])
            else:
                outcomes.release(row["id"], row["lease_token"])
        write_outcomes(conn, outcomes, max_retry_delay)
    return len(outcomes)


def reap_expired_leases(
    conn: psycopg.Connection, max_retry_delay: float = 3600.0, limit: int = 1000
) -> int:
    """Return the tasks of dead workers to the queue, counting the attempt; how many."""
    outcomes = Outcomes()
    with conn.transaction():
        rows = conn.execute(queries["expired_leases"], {"limit": limit}).fetchall()
        for row in rows:
            outcomes.fail(
                row["id"], row["lease_token"], f"lease expired: worker {row['worker_id']} lost"
            )
        write_outcomes(conn, outcomes, max_retry_delay)
    return len(outcomes)


def extend_leases(conn: psycopg.Connection, worker_ids: list[str], lease_seconds: float) -> None:
    """Heartbeat: extend the leases of ``worker_ids``' tasks and mark them alive."""
    with conn.transaction():
        params = {"worker_ids": worker_ids, "lease_seconds": lease_seconds}
        conn.execute(queries["extend_leases"], params)
        conn.execute(queries["touch_workers"], params)
