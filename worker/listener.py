"""The worker's notifier: one LISTEN connection per process, for wake-ups and cancels.

It runs ``taskq.listen`` (the same reconnect and ping as the API's notifier)
in a daemon thread and fans out to callbacks. After a reconnect it reports a
wake-up, because notifications sent while it was away are gone: the producer
must look at the table again. The producer's poll interval stays on as the
backstop for anything missed all the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from taskq.connections import LISTENER
from taskq.listen import ListenConnection

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
        application_name: str = LISTENER,
        **options: Any,
    ) -> None:
        self.queues = set(queues)
        self.on_wakeup = on_wakeup
        self.on_cancel = on_cancel
        self.listens = 0  # LISTEN became active this many times
        channels = [WAKEUP] if on_cancel is None else [WAKEUP, CANCEL]
        self.link = ListenConnection(url, channels, self.deliver, on_ready=self.ready,
                                     application_name=application_name, **options)  # fmt: skip
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.link.listen, args=(self.stopping,), name="taskq-listener", daemon=True
        )

    @property
    def connected(self) -> threading.Event:
        """Set while LISTEN is active."""
        return self.link.connected

    def start(self) -> Listener:
        """Start listening in the background; returns self."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop at the next wake of the thread (within a quarter of a second)."""
        self.stopping.set()

    def backend_pid(self) -> int | None:
        """The server pid of the LISTEN connection (tests terminate it)."""
        return self.link.backend_pid()

    def ready(self) -> None:
        """LISTEN is active: after a reconnect, whatever was notified meanwhile is lost."""
        self.listens += 1
        if self.listens > 1:
            log.info("listener reconnected")
            self.on_wakeup(None)

    def deliver(self, conn: psycopg.Connection, notes: list[psycopg.Notify]) -> None:
        """Fan a batch of notifications out to the callbacks."""
        for note in notes:
            if note.channel == WAKEUP:
                if note.payload in self.queues:
                    self.on_wakeup(note.payload)
            elif note.channel == CANCEL and self.on_cancel is not None:
                try:
                    self.on_cancel(int(note.payload))
                except ValueError:
                    log.warning("bad %s payload %r", CANCEL, note.payload)
