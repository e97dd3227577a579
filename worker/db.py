"""The worker's Postgres connections, and libpq's pipeline mode for the claim connection.

``Pipeline`` sends named queries and a Sync and returns at once, so the
server runs and commits them (fsync) while the worker runs tasks; the replies
are read later. Parameters travel in Postgres' text format (the queries cast
them), which for the id and token arrays of a batch is a join, not a
per-element adaptation.
"""

from __future__ import annotations

import re
import select
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

import psycopg
from psycopg import errors, pq
from psycopg.adapt import Transformer
from psycopg.rows import dict_row

from sql import queries
from taskq import connections

T = TypeVar("T")
Statement = tuple[str, dict[str, Any]]  # a query's name and its parameters

PLACEHOLDER = re.compile(r"%\((\w+)\)s")
# Prepared once per connection: the claim's plan does not depend on its parameters' sizes,
# and planning it anew cost ~0.25 ms of every idle pickup (of ~1.3 ms).
PREPARED = frozenset({"relax_claim_commit", "claim_tasks"})
COMMAND_OK = pq.ExecStatus.COMMAND_OK
FATAL_ERROR = pq.ExecStatus.FATAL_ERROR
PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC


def connect(
    url: str, application_name: str = "taskq-worker", pooled: bool = False
) -> psycopg.Connection:
    """An autocommit connection of one role (``taskq.connections``).

    Direct, its statements are prepared on first use; through a transaction
    pool (``pooled``) never: the next transaction may run on another server
    connection, which does not know them.
    """
    conn = connections.connect(url, application_name, pooled, autocommit=True,
                               row_factory=dict_row)  # fmt: skip
    if not pooled:
        conn.prepare_threshold = 0
    return conn


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


class Pipeline:
    """Named queries on ``conn`` in one libpq pipeline: send now, read the replies later.

    One pipeline closed by a Sync is one implicit transaction that commits at
    the Sync, whether or not anyone reads the replies yet. At most one is in
    flight; while it is, the psycopg connection must not be used otherwise.
    The outcome queries are unnamed, so each is planned for its own arrays
    (see ``worker.completer.write_outcomes`` on why a generic plan is slow);
    those in ``PREPARED`` are prepared on first use (a Parse in the same
    pipeline) and run by name after — unless ``pooled``: through a transaction
    pool the next pipeline may reach another server, which never saw the Parse.
    """

    reply_timeout = 60.0  # seconds; a claim or completion batch takes milliseconds

    def __init__(self, conn: psycopg.Connection, pooled: bool = False) -> None:
        self.conn = conn
        self.prepares = frozenset() if pooled else PREPARED
        self.pgconn = conn.pgconn
        self.loader = Transformer(conn)
        self.names: list[str | None] | None = None  # the queries in flight (None: a Parse)
        self.prepared: set[str] = set()  # PREPARED queries this connection has (or is parsing)

    @property
    def busy(self) -> bool:
        """A pipeline was sent and its replies are not read yet."""
        return self.names is not None

    def send(self, statements: Sequence[Statement]) -> None:
        """Send ``statements`` (each query at most once) and a Sync, without waiting."""
        pgconn = self.pgconn
        pgconn.enter_pipeline_mode()
        self.names = []
        for name, params in statements:
            query, names = positional(name)
            values = [encode_param(params[n]) for n in names]
            if name not in self.prepares:
                pgconn.send_query_params(query, values)
            else:
                if name not in self.prepared:
                    self.prepared.add(name)
                    pgconn.send_prepare(name.encode(), query)
                    self.names.append(None)
                pgconn.send_query_prepared(name.encode(), values)
            self.names.append(name)
        pgconn.pipeline_sync()
        while pgconn.flush():  # 1: the socket is full; the server may be writing to us
            readable, _, _ = select.select([pgconn.socket], [pgconn.socket], [])
            if readable:
                pgconn.consume_input()

    def poll(self) -> None:
        """Move replies that arrived into libpq's buffer, so a big claim never blocks the server."""
        self.pgconn.consume_input()

    def next_result(self) -> pq.abc.PGresult | None:
        """The next reply of the pipeline in flight, waiting for it at most ``reply_timeout``.

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

    def receive(self) -> dict[str, pq.abc.PGresult]:
        """Wait for the pipeline in flight: each query's result, by name.

        Raises the first query's error (the transaction was rolled back) or
        OperationalError when the connection was lost.
        """
        names, self.names = self.names or [], None
        results: dict[str, pq.abc.PGresult] = {}
        error: psycopg.Error | None = None
        for position, name in enumerate(names):
            result = self.next_result()
            while self.next_result() is not None:  # each query's replies end with a None
                pass
            if name is None and (result is None or result.status != COMMAND_OK):
                self.prepared.discard(names[position + 1])  # not parsed: parse it next time
            if result is None or result.status == PIPELINE_ABORTED:
                continue
            if result.status == FATAL_ERROR:
                error = error or errors.error_from_result(result, encoding="utf-8")
                continue
            if name is not None:
                results[name] = result
        # The commit runs at the Sync: an error there (a deferred trigger, NOTIFY's queue
        # full) comes after every query's reply and rolls them all back.
        while (result := self.next_result()) is None or result.status != PIPELINE_SYNC:
            if result is not None and result.status == FATAL_ERROR:
                error = error or errors.error_from_result(result, encoding="utf-8")
        self.pgconn.exit_pipeline_mode()
        if error is not None:
            raise error
        return results

    def rows(self, result: pq.abc.PGresult | None, make: Callable[[Sequence[Any]], T]) -> list[T]:
        """The rows of ``result`` (none when it is None), each built by ``make``."""
        if result is None:
            return []
        self.loader.set_pgresult(result)
        return self.loader.load_rows(0, result.ntuples, make)
