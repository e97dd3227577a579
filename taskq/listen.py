"""One LISTEN connection kept alive: reconnects with a growing pause, pings a silent link.

Shared by the API's notifier (SSE fan-out, cache invalidation) and the worker's
listener (wake-ups, cancels). The connection lives outside any pool, in its
owner's thread, which blocks in ``notifies()`` and hands each batch of
notifications to a callback.

Two ways to lose it: the server closes it (restart, terminated backend), which
``notifies()`` reports at once; or the link goes silent without closing (a
partition, a frozen host), which nothing reports. For the second, after
``ping_after`` seconds without traffic the connection sends a query and
gives the reply ``ping_timeout`` seconds; none, and the connection is
dropped and opened again. Notifications sent while it was away are gone:
``on_lost`` lets the owner act on that (end streams, drop caches), and
``on_ready`` runs each time LISTEN is active again, before any delivery (a
worker claims at once).

An owner that must also look at the database when nothing is announced (the
notifier's re-check of rows waiting behind an open transaction) passes
``next_wakeup``, the ``time.monotonic()`` of its next look (None: none due),
and ``on_wakeup(conn)``, run on the LISTEN connection once that time comes
without notifications.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
from psycopg import pq, sql

from taskq.backoff import Backoff
from taskq.connections import keep_session_alive

log = logging.getLogger("taskq.listen")

PING = b"SELECT 1"
TUPLES_OK = pq.ExecStatus.TUPLES_OK

NotesHandler = Callable[[psycopg.Connection, list[psycopg.Notify]], None]
WAIT = 0.25  # seconds per wait for notifications, so that ``stop`` is noticed quickly


class ListenConnection:
    """LISTEN on ``channels`` until stopped; ``on_notes(conn, notes)`` gets every batch."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        on_notes: NotesHandler,
        *,
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        next_wakeup: Callable[[], float | None] | None = None,
        on_wakeup: Callable[[psycopg.Connection], None] | None = None,
        application_name: str = "taskq-listen",
        ping_after: float = 5.0,
        ping_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.channels = list(channels)
        self.on_notes = on_notes
        self.on_ready = on_ready
        self.on_lost = on_lost
        if (next_wakeup is None) != (on_wakeup is None):
            raise ValueError("next_wakeup and on_wakeup go together")
        self.next_wakeup = next_wakeup
        self.on_wakeup = on_wakeup
        self.application_name = application_name
        self.ping_after = ping_after
        self.ping_timeout = ping_timeout
        self.backoff = Backoff(0.1, 5.0)
        self.connected = threading.Event()
        self.conn: psycopg.Connection | None = None

    def backend_pid(self) -> int | None:
        """The server pid of the LISTEN connection, while there is one."""
        conn = self.conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    def listen(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set, reconnecting after any loss (blocks: give it a thread)."""
        while not stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                     application_name=self.application_name) as conn:  # fmt: skip
                    keep_session_alive(conn)  # a vanished host's session ends in seconds
                    for channel in self.channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.backoff.reset()
                    self.serve(conn, stop)
            except Exception as exc:  # any failure: reconnect (the owner heard on_lost)
                if stop.is_set():
                    break
                pause = self.backoff.next()
                log.warning("%s lost its connection (%s); reconnecting in %.1fs",
                            self.application_name, exc, pause)  # fmt: skip
                stop.wait(pause)

    def serve(self, conn: psycopg.Connection, stop: threading.Event) -> None:
        """LISTEN is active on ``conn``: tell the owner, deliver, and tell it when this ends."""
        self.conn = conn
        self.connected.set()
        try:
            if self.on_ready is not None:
                self.on_ready()
            self.deliver(conn, stop)
        finally:
            self.connected.clear()
            self.conn = None
            if self.on_lost is not None:
                self.on_lost()

    def deliver(self, conn: psycopg.Connection, stop: threading.Event) -> None:
        """Hand over notifications until ``stop``; raises when the connection is lost."""
        quiet_since = time.monotonic()
        while not stop.is_set():
            wake_at = self.wakeup_time()
            timeout = WAIT if wake_at is None else min(WAIT, max(wake_at - time.monotonic(), 0))
            notes = list(conn.notifies(timeout=timeout, stop_after=1))
            if notes:
                notes.extend(conn.notifies(timeout=0))
            elif conn.broken:
                raise psycopg.OperationalError("LISTEN connection is broken")
            elif wake_at is not None and time.monotonic() >= wake_at:
                self.on_wakeup(conn)  # a round trip too: no ping needed for a while
            elif time.monotonic() - quiet_since > self.ping_after:
                notes = ping(conn, self.ping_timeout)
            else:
                continue
            quiet_since = time.monotonic()
            if notes:
                self.on_notes(conn, notes)

    def wakeup_time(self) -> float | None:
        """When the owner wants ``on_wakeup`` next (``time.monotonic()``); None: no wake-up."""
        return None if self.next_wakeup is None else self.next_wakeup()


def ping(conn: psycopg.Connection, timeout: float) -> list[psycopg.Notify]:
    """A round trip on idle ``conn`` within ``timeout`` s; the notifications that came with it.

    A query that gets no reply in time closes ``conn`` and raises
    OperationalError: a plain ``execute`` would wait for a frozen server
    forever. libpq is driven directly, as psycopg offers no client-side
    timeout; the notifications libpq read meanwhile are handed back here,
    since ``notifies()`` would not see them until more data arrived.
    """
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    with conn.lock:
        pgconn.send_query(PING)
        while (result := next_result(conn, deadline)) is not None:
            if result.status != TUPLES_OK:
                message = result.error_message.decode("utf-8", "replace").strip()
                raise psycopg.OperationalError(f"ping failed: {message}")
        notes = []
        encoding = conn.info.encoding
        while (note := pgconn.notifies()) is not None:
            notes.append(psycopg.Notify(note.relname.decode(encoding),
                                        note.extra.decode(encoding), note.be_pid))  # fmt: skip
    return notes


def next_result(conn: psycopg.Connection, deadline: float) -> pq.abc.PGresult | None:
    """The next result of the query in flight on ``conn``, waiting until ``deadline`` at most."""
    pgconn = conn.pgconn
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([pgconn.socket], [], [], left)[0]:
            conn.close()
            raise psycopg.OperationalError("no reply to a ping in time; connection dropped")
