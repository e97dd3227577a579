"""``taskq up`` as a user runs it: no DATABASE_URL, an embedded Postgres, API and worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.helpers import free_port, wait_http_ok
from tests.worker_helpers import ROOT, wait_for

pytestmark = pytest.mark.slow


def test_up_serves_runs_tasks_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    environ.update({"PYTHONPATH": str(ROOT), "TASKQ_POLL_INTERVAL": "1"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskq.cli",
            "up",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--concurrency",
            "1",
        ],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_http_ok(f"{base}/readyz", timeout=90).json()
        assert ready["checks"]["migrations"] == "ok"
        assert (tmp_path / ".taskq" / "pgdata").is_dir()

        password = "Sturdy-Lamp-42"
        account = requests.post(
            f"{base}/api/v1/auth/register",
            json={
                "username": "ann",
                "email": "ann@example.com",
                "password": password,
                "password2": password,
            },
            timeout=10,
        )
        assert account.status_code == 201, account.text
        headers = {"Authorization": f"Bearer {account.json()['tokens']['access']}"}
        created = requests.post(
            f"{base}/api/v1/tasks",
            json={
                "title": "sum",
                "task_type": "compute",
                "payload": {"operation": "sum", "numbers": [1, 2, 3]},
            },
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
        login = {"username": "ann", "password": password, "cookies": True}
        assert browser.post(f"{base}/api/v1/auth/login", json=login, timeout=10).ok
        assert [c.name for c in browser.cookies if c.secure] == []
        assert browser.get(f"{base}/api/v1/auth/profile", timeout=10).status_code == 200
        # API and worker share one metrics directory: one scrape shows both.
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert 'taskq_enqueued_tasks_total{queue="default",task_type="compute"} 1.0' in metrics
        assert 'outcome="completed",queue="default",task_type="compute"} 1.0' in metrics
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
