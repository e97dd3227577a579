"""Progress reports of running tasks: rate-limited per task, written by one thread per process.

``ctx.progress(percent, message)`` only records the value; the writer thread
writes it (``report_progress``: the task's columns and a NOTIFY on
``taskq_progress``) at most once per ``interval`` seconds per task, always the
newest value, on its own connection. So a task that reports in a tight loop
costs a few writes a second, never blocks on the database, and a signal meant
for the task (soft limit, cancel) never lands inside a write. When the task
ends, the runner calls ``flush``: the last value lands before the outcome is
written. The write is fenced by the claim's lease token, not by the status, so a
last value that arrives just after the outcome still lands on the right run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("taskq.progress")

# At most this many seconds between two writes of one task's progress (4 a second).
PROGRESS_INTERVAL = 0.25
MAX_MESSAGE = 500
FLUSH_TIMEOUT = 5.0

Key = tuple[int, int]  # (task id, lease token)


def check_progress(percent: Any, message: Any) -> tuple[float, str | None]:
    """``(percent, message)`` checked: a number from 0 to 100, and text (cut at 500 chars)."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise TypeError("progress percent must be a number")
    if not 0 <= percent <= 100:
        raise ValueError("progress percent must be between 0 and 100")
    if message is not None:
        message = str(message)[:MAX_MESSAGE].replace("\x00", "")
    return float(percent), message


class ProgressWriter:
    """The process's progress writer: newest value per task, written by a daemon thread."""

    def __init__(
        self, database_url: str, settings: Any = None, interval: float = PROGRESS_INTERVAL
    ) -> None:
        self.database_url = database_url
        self.settings = settings  # the task process's TaskSettings: pooled, host
        self.interval = interval
        self._cond = threading.Condition()
        self._pending: dict[Key, tuple[float, str | None]] = {}
        self._urgent: set[Key] = set()
        self._written_at: dict[int, float] = {}  # task id -> monotonic time of its last write
        self._writing: Key | None = None
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def report(self, task_id: int, token: int, percent: float, message: str | None) -> None:
        """Record the newest progress of a run; the thread writes it when its turn comes."""
        with self._cond:
            self._pending[(task_id, token)] = (percent, message)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="taskq-progress",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            self._cond.notify_all()

    def flush(self, task_id: int, token: int, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write the run's last value now, and wait until it is written (or ``timeout``)."""
        key = (task_id, token)
        deadline = time.monotonic() + timeout
        with self._cond:
            if key not in self._pending and self._writing != key:
                self._written_at.pop(task_id, None)
                return
            self._urgent.add(key)
            self._cond.notify_all()
            while key in self._pending or self._writing == key:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("progress of task %s not written in %.1fs", task_id, timeout)
                    break
                self._cond.wait(left)
            self._urgent.discard(key)
            self._written_at.pop(task_id, None)

    def _next(self) -> tuple[Key, tuple[float, str | None]]:
        """The next value due (hold the condition): urgent first, then by the interval."""
        while True:
            now = time.monotonic()
            wait = None
            for key in self._pending:
                due = self._written_at.get(key[0], 0.0) + self.interval
                if key in self._urgent or due <= now:
                    return key, self._pending.pop(key)
                wait = due - now if wait is None else min(wait, due - now)
            self._cond.wait(wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                key, (percent, message) = self._next()
                self._writing = key
            try:
                self._write(key, percent, message)
            except Exception as exc:  # a lost connection must not stop the thread
                log.warning("could not write progress of task %s: %s", key[0], exc)
            finally:
                with self._cond:
                    self._writing = None
                    self._written_at[key[0]] = time.monotonic()
                    self._cond.notify_all()

    def _write(self, key: Key, percent: float, message: str | None) -> None:
        from sql import queries
        from taskq.connections import PROGRESS, reopened
        from taskq.settings import TaskSettings

        settings = self.settings or TaskSettings()
        self._conn = reopened(self._conn, self.database_url, PROGRESS, settings)
        params = {"task_id": key[0], "token": key[1], "percent": percent, "message": message}
        self._conn.execute(queries["report_progress"], params)


_WRITERS: dict[str, ProgressWriter] = {}
_WRITERS_LOCK = threading.Lock()


def progress_writer(database_url: str, settings: Any = None) -> ProgressWriter:
    """The process's writer for ``database_url`` (one thread and connection per process;
    ``settings``, the process's TaskSettings, say how it connects)."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(database_url)
        if writer is None:
            writer = _WRITERS[database_url] = ProgressWriter(database_url, settings)
        return writer
