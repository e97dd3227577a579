"""The one LISTEN connection of a worker process: wake-ups and cancels, with reconnects.

It lives outside any pool, in a daemon thread that blocks in ``notifies()``
and fans out to callbacks. After a lost connection it reconnects with a
growing pause and reports a wake-up, because notifications sent while it was
away are gone: the claimer must look at the table again. The claimer's poll
interval stays on as the backstop for anything missed all the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger("taskq.worker.listener")

WAKEUP = "taskq_wakeup"
CANCEL = "taskq_cancel"


class Listener:
    """LISTEN on taskq_wakeup (payload: queue) and taskq_cancel (payload: task id)."""

    def __init__(
        self,
        url: str,
        queues: list[str] | tuple[str, ...],
        on_wakeup: Callable[[str | None], None],
        on_cancel: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.queues = set(queues)
        self.on_wakeup = on_wakeup
        self.on_cancel = on_cancel
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self.reconnects = 0
        self.conn: psycopg.Connection | None = None
        self.thread = threading.Thread(target=self.run, name="taskq-listener", daemon=True)

    def start(self) -> Listener:
        """Start listening in the background; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop at the next wake of the thread (within a second)."""
        self.stopping.set()

    def backend_pid(self) -> int | None:
        """The server pid of the LISTEN connection (tests terminate it)."""
        conn = self.conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    def run(self) -> None:
        """Listen until stopped, reconnecting after any connection loss."""
        pause = 0.1
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    self.conn = conn
                    conn.execute(f"LISTEN {WAKEUP}")
                    if self.on_cancel is not None:
                        conn.execute(f"LISTEN {CANCEL}")
                    if self.reconnects:
                        log.info("listener reconnected")
                        self.on_wakeup(None)
                    self.connected.set()
                    pause = 0.1
                    self.listen(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                if self.stopping.is_set():
                    break
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, pause)
                self.reconnects += 1
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                self.conn = None

    def listen(self, conn: psycopg.Connection) -> None:
        """Deliver notifications until stopped; raises when the connection breaks."""
        while not self.stopping.is_set():
            for note in conn.notifies(timeout=1.0):
                if note.channel == WAKEUP:
                    if note.payload in self.queues:
                        self.on_wakeup(note.payload)
                elif note.channel == CANCEL and self.on_cancel is not None:
                    try:
                        self.on_cancel(int(note.payload))
                    except ValueError:
                        log.warning("bad %s payload %r", CANCEL, note.payload)
            if conn.broken:
                raise psycopg.OperationalError("listener connection is broken")
