"""The API under gunicorn, configured in code (``taskq api``).

Worker class: **gevent**. An SSE stream is a long-lived request that mostly
waits; with gevent each one is a greenlet blocked on an in-memory queue (a few
KB), so one process holds thousands of streams (``TASKQ_WORKER_CONNECTIONS``,
default 4000) while REST calls keep running beside them. The only database
connection streams rely on is the process's single LISTEN connection
(``app.events``). psycopg 3 cooperates with gevent on its own (since 3.1.14
it detects gevent's monkey-patching and waits on gevent's hub), and
psycopg_pool's worker threads become greenlets under the patched
``threading``. A thread per stream (gthread) would need 1,000 OS threads per
process for the same load.

Metrics: prometheus_client's multiprocess mode needs a directory shared by
all processes, set before any of them imports prometheus_client; this module
creates one when ``PROMETHEUS_MULTIPROC_DIR`` is unset and cleans up after
workers that exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from taskq.settings import env_int


class TaskqApplication(BaseApplication):
    """gunicorn running the taskq API with taskq's settings."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from app import create_app  # not ``wsgi``: the console script may run from anywhere

        return create_app()


def child_exit(server: Any, worker: Any) -> None:
    """Fold a dead worker's live gauges out of the multiprocess metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Open the pool and LISTEN before serving; on SIGTERM end SSE streams at once."""
    from app.db import get_pool

    with worker.wsgi.app_context():
        # Before the first request, not during it: a burst of concurrent first requests
        # would otherwise race to create the process's pool (one each).
        get_pool()
        worker.wsgi.extensions["taskq_notifier"].start()
    handle_exit = worker.handle_exit

    def end_streams_then_exit(sig: int, frame: Any) -> None:
        handle_exit(sig, frame)
        notifier = worker.wsgi.extensions.get("taskq_notifier")
        if notifier is not None:
            notifier.close_streams()

    worker.handle_exit = end_streams_then_exit


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the stream guard and the LISTEN connection, close the pool, before tear-down."""
    app = getattr(worker, "wsgi", None)
    if app is None or not hasattr(app, "extensions"):
        return
    from app.db import close_pool

    for service in ("taskq_stream_guard", "taskq_notifier"):
        if app.extensions.get(service) is not None:
            app.extensions[service].stop()
    close_pool(app)


def prepare_metrics_dir() -> str | None:
    """Create PROMETHEUS_MULTIPROC_DIR when unset; the directory we created, if any."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    path = tempfile.mkdtemp(prefix="taskq-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def gunicorn_options(bind: str, workers: int) -> dict[str, Any]:
    """gunicorn settings for the API."""
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "gevent",
        "worker_connections": env_int("TASKQ_WORKER_CONNECTIONS", 4000, minimum=10),
        "backlog": 2048,
        "keepalive": 5,
        "accesslog": None,
        "graceful_timeout": 10,
        "timeout": 30,
        "child_exit": child_exit,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
    }


def export_migration_head() -> None:
    """Put the migrations' head in ``TASKQ_MIGRATION_HEAD`` for /readyz, asked in a child process.

    Alembic (and SQLAlchemy with it) then never loads into the master or the API
    processes: resident memory they would keep for the process's lifetime.
    """
    if os.environ.get("TASKQ_MIGRATION_HEAD"):
        return
    code = "from taskq.migrate import head_revision; print(head_revision())"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    os.environ["TASKQ_MIGRATION_HEAD"] = found.stdout.strip()


def serve_api(bind: str, workers: int) -> None:
    """Run gunicorn in the foreground until it is stopped."""
    export_migration_head()
    created = prepare_metrics_dir()
    try:
        TaskqApplication(gunicorn_options(bind, workers)).run()
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)
