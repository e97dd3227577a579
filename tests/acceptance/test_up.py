"""``taskq up`` as a user runs it: no DATABASE_URL, an embedded Postgres, API and worker."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port, wait_http_ok
from tests.worker_helpers import ROOT, wait_for

pytestmark = pytest.mark.slow

PASSWORD = "Sturdy-Lamp-42"
WALK_THROUGH_PAYLOAD = {"operation": "sum", "numbers": [1, 2, 3]}


def start_up(cwd: Path, port: int, *args: str, **settings: str) -> subprocess.Popen:
    """``taskq up`` in ``cwd`` as a user starts it: no DATABASE_URL, REDIS_URL or JWT secret."""
    unset = {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR"}
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update({"PYTHONPATH": str(ROOT), "TASKQ_POLL_INTERVAL": "1", **settings})
    return subprocess.Popen(
        [sys.executable, "-m", "taskq.cli", "up", "--bind", f"127.0.0.1:{port}", *args],
        cwd=cwd,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_up(proc: subprocess.Popen) -> str:
    """Ctrl-C (it reaches the whole foreground group); its output once everything stopped."""
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    return output


def register(base: str) -> dict[str, str]:
    """Step 1 of the README walk-through: register ann; her bearer header."""
    account = requests.post(
        f"{base}/api/v1/auth/register",
        json={
            "username": "ann",
            "email": "ann@example.com",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
        timeout=10,
    )
    assert account.status_code == 201, account.text
    return {"Authorization": f"Bearer {account.json()['tokens']['access']}"}


def test_up_serves_runs_tasks_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    proc = start_up(tmp_path, port, "--workers", "1", "--concurrency", "1")
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_http_ok(f"{base}/readyz", timeout=90).json()
        assert ready["checks"]["migrations"] == "ok"
        assert (tmp_path / ".taskq" / "pgdata").is_dir()

        headers = register(base)
        created = requests.post(
            f"{base}/api/v1/tasks",
            json={"title": "sum", "task_type": "compute", "payload": WALK_THROUGH_PAYLOAD},
            headers=headers,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["task"]["id"]

        def finished():
            task = requests.get(f"{base}/api/v1/tasks/{task_id}", headers=headers, timeout=5)
            body = task.json()["task"]
            return body if body["status"] == "COMPLETED" else None

        task = wait_for(finished, timeout=30, message="the task to complete")
        assert task["result"]["result"] == 6
        # The console: "/" leads there, and its cookie session works on plain http here.
        console = requests.get(f"{base}/", timeout=10)
        assert console.status_code == 200 and console.url == f"{base}/dashboard/"
        browser = requests.Session()
        login = {"username": "ann", "password": PASSWORD, "cookies": True}
        assert browser.post(f"{base}/api/v1/auth/login", json=login, timeout=10).ok
        assert [c.name for c in browser.cookies if c.secure] == []
        assert browser.get(f"{base}/api/v1/auth/profile", timeout=10).status_code == 200
        # API and worker share one metrics directory: one scrape shows both.
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert 'taskq_enqueued_tasks_total{queue="default",task_type="compute"} 1.0' in metrics
        assert 'outcome="completed",queue="default",task_type="compute"} 1.0' in metrics
    finally:
        stop_up(proc)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)


def test_up_tokens_work_on_every_api_process_and_after_a_restart(tmp_path, database_url):
    """One JWT secret, made on first start under ./.taskq/, shared by 3 API processes."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ("--workers", "3", "--concurrency", "1")
    proc = start_up(tmp_path, port, *args, DATABASE_URL=database_url)
    outputs = []
    try:
        wait_http_ok(f"{base}/readyz", timeout=60)
        headers = register(base)
        task = {"title": "sum", "task_type": "compute", "payload": WALK_THROUGH_PAYLOAD}
        created = requests.post(f"{base}/api/v1/tasks", json=task, headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        detail = f"{base}/api/v1/tasks/{created.json()['task']['id']}"
        # A new connection per call: gunicorn's 3 processes share the accepts.
        statuses = [
            requests.get(detail, headers=headers, timeout=10).status_code for _ in range(40)
        ]
        assert statuses == [200] * 40
    finally:
        outputs.append(stop_up(proc))

    secret_file = tmp_path / ".taskq" / "jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32

    proc = start_up(tmp_path, port, *args, DATABASE_URL=database_url)
    try:
        wait_http_ok(f"{base}/readyz", timeout=60)
        statuses = [
            requests.get(detail, headers=headers, timeout=10).status_code for _ in range(10)
        ]
        assert statuses == [200] * 10
    finally:
        outputs.append(stop_up(proc))
    assert secret_file.read_text().strip() == secret
    assert all(secret not in output for output in outputs)  # never logged
