"""Claim, complete, fail and hand back tasks: the queue's hot path, in batches.

Every write after the claim is fenced by the claim's ``lease_token`` and by
``status = 'PROCESSING'``: a worker whose lease was taken over, or whose task
was cancelled meanwhile, changes nothing. Results are written one statement
per batch (``UPDATE … FROM unnest(…)``), and the results of the last batch
travel in the same pipeline and transaction as the next claim.

The worker's exchange (``ClaimPipe``) talks libpq's pipeline mode directly:
it sends the statements and a Sync and returns at once, so the server
commits (fsync) while the worker runs tasks; the replies are read later.
Claimed rows come back as lean tuples (``Claim``) with the payload as JSON
text, decoded only when the task runs.
"""

from __future__ import annotations

import json
import re
import select
from dataclasses import dataclass, field
from functools import cache
from operator import attrgetter
from typing import Any, NamedTuple

import psycopg
from psycopg import errors, pq
from psycopg.adapt import Transformer
from psycopg.rows import dict_row

from sql import queries

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
CLAIM_ORDER = attrgetter("n")
# The backoff cap of an attempt lost with its worker (SIGKILL, lost machine): the task
# did not fail, so it is due again as soon as it is returned; the attempt still counts.
NO_BACKOFF = 0.0


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

    def merge(self, other: Outcomes) -> None:
        """Take back ``other``'s outcomes (an exchange that did not go through)."""
        for name, values in vars(self).items():
            values.extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.done_ids) + len(self.failed_ids) + len(self.released_ids)


def encode_result(result: Any) -> str | None:
    """The JSON text of a task's result (TypeError when it is not JSON-able)."""
    return None if result is None else json.dumps(result)


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


@cache
def positional(name: str) -> tuple[bytes, tuple[str, ...]]:
    """Query ``name`` with ``$n`` placeholders for libpq, and the parameter names in order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return PLACEHOLDER.sub(number, queries[name]).encode(), tuple(names)


def array_element(value: Any) -> str:
    """One element of a text-format array literal."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_param(value: Any) -> bytes | None:
    """A parameter in Postgres text format; the query's casts give it its type."""
    if value is None:
        return None
    if isinstance(value, list):
        if value and type(value[0]) is int:  # ids and tokens: the bulk of every exchange
            return ("{" + ",".join(map(str, value)) + "}").encode()
        return ("{" + ",".join(map(array_element, value)) + "}").encode()
    return str(value).encode()


class ClaimPipe:
    """Exchanges on the claim connection: write outcomes and claim, send now, read later.

    One exchange is one libpq pipeline closed by a Sync, so the server runs
    its statements as one implicit transaction and commits at the Sync,
    whether or not anyone reads the replies yet. At most one exchange is in
    flight; while it is, the psycopg connection must not be used otherwise.
    """

    reply_timeout = 60.0  # seconds; a claim or completion batch takes milliseconds

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.loader = Transformer(conn)
        self.kinds: list[str] | None = None  # the statements in flight

    @property
    def busy(self) -> bool:
        """An exchange was sent and its replies are not read yet."""
        return self.kinds is not None

    def send(
        self,
        outcomes: Outcomes,
        *,
        worker_id: str,
        queues: list[str],
        limit: int,
        lease_seconds: float,
        max_retry_delay: float,
    ) -> bool:
        """Send ``outcomes`` and a claim of up to ``limit`` tasks; False when there was nothing.

        Write statements are unnamed, so each is planned for its own arrays
        (see ``write_outcomes`` on why a generic plan is slow).
        """
        statements: list[tuple[str, dict[str, Any]]] = []
        if outcomes.done_ids:
            statements.append(("complete_tasks", {"ids": outcomes.done_ids,
                "tokens": outcomes.done_tokens, "results": outcomes.done_results}))  # fmt: skip
        if outcomes.failed_ids:
            statements.append(("fail_tasks", {"ids": outcomes.failed_ids,
                "tokens": outcomes.failed_tokens, "errors": outcomes.failed_errors,
                "max_delay": max_retry_delay}))  # fmt: skip
        if outcomes.released_ids:
            statements.append(("release_tasks",
                {"ids": outcomes.released_ids, "tokens": outcomes.released_tokens}))  # fmt: skip
        if limit > 0:
            statements.append(("claim_tasks", {"queues": queues, "limit": limit,
                "worker_id": worker_id, "lease_seconds": lease_seconds}))  # fmt: skip
        if not statements:
            return False
        pgconn = self.pgconn
        pgconn.enter_pipeline_mode()
        self.kinds = [name for name, _ in statements]
        for name, params in statements:
            query, names = positional(name)
            pgconn.send_query_params(query, [encode_param(params[n]) for n in names])
        pgconn.pipeline_sync()
        while pgconn.flush():  # 1: the socket is full; the server may be writing to us
            readable, _, _ = select.select([pgconn.socket], [pgconn.socket], [])
            if readable:
                pgconn.consume_input()
        return True

    def poll(self) -> None:
        """Move replies that arrived into libpq's buffer, so a big claim never blocks the server."""
        self.pgconn.consume_input()

    def next_result(self) -> pq.abc.PGresult | None:
        """The next reply of the exchange in flight, waiting for it at most ``reply_timeout``.

        A server that stops answering without closing the socket (a partition,
        a frozen host) would otherwise hold this child forever while the
        supervisor's heartbeat kept its leases alive: past the timeout the
        connection is dropped and the caller's reconnect path takes over
        (orphaned claims handed back, outcomes written again under their fence).
        """
        pgconn = self.pgconn
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                return pgconn.get_result()
            readable, _, _ = select.select([pgconn.socket], [], [], self.reply_timeout)
            if not readable:
                self.conn.close()
                raise psycopg.OperationalError(
                    f"no reply from Postgres in {self.reply_timeout:g} s; connection dropped"
                )

    def receive(self) -> tuple[list[Claim], dict[int, str]]:
        """Wait for the exchange in flight: the claimed tasks in claim order, failed -> status.

        Raises the first statement's error (the transaction was rolled back)
        or OperationalError when the connection was lost.
        """
        kinds, self.kinds = self.kinds or [], None
        rows: list[Claim] = []
        statuses: dict[int, str] = {}
        error: psycopg.Error | None = None
        for kind in kinds:
            result = self.next_result()
            while self.next_result() is not None:  # each statement's replies end with a None
                pass
            if result is None or result.status == PIPELINE_ABORTED:
                continue
            if result.status == FATAL_ERROR:
                error = error or errors.error_from_result(result, encoding="utf-8")
                continue
            if kind == "claim_tasks":
                self.loader.set_pgresult(result)
                rows = self.loader.load_rows(0, result.ntuples, Claim._make)
            elif kind == "fail_tasks":
                self.loader.set_pgresult(result)
                statuses = dict(self.loader.load_rows(0, result.ntuples, tuple))
        while (result := self.next_result()) is None or result.status != PIPELINE_SYNC:
            pass
        self.pgconn.exit_pipeline_mode()
        if error is not None:
            raise error
        if len(rows) > 1:
            rows.sort(key=CLAIM_ORDER)
        return rows, statuses


def exchange(
    conn: psycopg.Connection,
    outcomes: Outcomes,
    *,
    worker_id: str,
    queues: list[str],
    limit: int,
    lease_seconds: float,
    max_retry_delay: float,
) -> tuple[list[Claim], dict[int, str]]:
    """Write ``outcomes`` and claim up to ``limit`` tasks in one transaction, and wait.

    Returns the claimed rows in claim order, and the new status (RETRYING or
    FAILED) of each failed task. ``outcomes`` is emptied only once the
    transaction committed, so after a lost connection they are written again
    (the fence makes that harmless).
    """
    pipe = ClaimPipe(conn)
    if not pipe.send(outcomes, worker_id=worker_id, queues=queues, limit=limit,
                     lease_seconds=lease_seconds, max_retry_delay=max_retry_delay):  # fmt: skip
        return [], {}
    rows, statuses = pipe.receive()
    outcomes.clear()
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
) -> list[Claim]:
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
    max_retry_delay: float = NO_BACKOFF,
) -> int:
    """Settle every task a gone worker process still holds; the number settled.

    The tasks in ``failed`` (id -> error: the one it was running when killed)
    count as failed attempts, due again at once unless ``max_retry_delay`` asks
    for the usual backoff (a hard time limit: the task's own failure); the
    others were claimed but never started, so they go back without counting.
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


def extend_leases(conn: psycopg.Connection, worker_ids: list[str], lease_seconds: float) -> None:
    """Heartbeat: extend the leases of ``worker_ids``' tasks and mark them alive."""
    with conn.transaction():
        params = {"worker_ids": worker_ids, "lease_seconds": lease_seconds}
        conn.execute(queries["extend_leases"], params)
        conn.execute(queries["touch_workers"], params)
