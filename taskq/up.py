"""``taskq up``: an embedded Postgres when DATABASE_URL is unset, migrations, API and worker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from taskq.embedded import start_embedded_postgres
from taskq.migrate import upgrade
from taskq.settings import env


def run_up(bind: str, api_workers: int, concurrency: int | None) -> int:
    """Start everything, wait, and stop it all cleanly on Ctrl-C or SIGTERM; the exit code."""
    environ = dict(os.environ)
    environ.setdefault("TASKQ_ENV", "development")
    # The console's session cookies must work on plain http://127.0.0.1 (no TLS here).
    environ.setdefault("TASKQ_COOKIE_SECURE", "0")
    url = env("DATABASE_URL")
    if url is None:
        url = start_embedded_postgres(Path.cwd() / ".taskq" / "pgdata")
        print(f"taskq: embedded Postgres at {url}", flush=True)
    environ["DATABASE_URL"] = url
    # One metrics directory for the API and the worker: /metrics shows both.
    metrics_dir = Path.cwd() / ".taskq" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    upgrade(url)
    taskq = [sys.executable, "-m", "taskq.cli"]
    commands = [[*taskq, "api", "--bind", bind, "--workers", str(api_workers)]]
    worker = [*taskq, "worker"]
    if concurrency:
        worker += ["--concurrency", str(concurrency)]
    commands.append(worker)
    children = [subprocess.Popen(command, env=environ) for command in commands]
    print(
        f"taskq: console on http://{bind}/dashboard/, API on http://{bind}/api/v1, "
        "worker started; Ctrl-C stops",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    for child in children:
        code = child.wait()
        status = status or (code if code > 0 else 0)
        stop(signal.SIGTERM, None)
    return status
