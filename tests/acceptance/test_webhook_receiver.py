"""A webhook end to end: ``taskq worker`` runs a task, then delivers its webhook to a
receiver on 127.0.0.1 that checks both signatures and answers 500 twice before 200."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from datetime import datetime
from itertools import pairwise

import psycopg
import pytest
from psycopg.types.json import Jsonb

from bench.sse_latency import wait_for
from tests.integration.test_webhooks import Receiver
from worker.webhooks import verify_signature

pytestmark = pytest.mark.slow


def test_worker_delivers_signed_webhook_with_retries_after_500s(database_url):
    receiver = Receiver([500, 500, 200])
    with psycopg.connect(database_url, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{dbname}" SET taskq.webhook_retry_delay = 1')
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TASKQ_ALLOW_PRIVATE_URLS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskq.cli",
            "worker",
            "--queues",
            "default,webhooks",
            "--concurrency",
            "1",
            "--poll-interval",
            "0.2",
            "--log-level",
            "WARNING",
        ],
        env=env,
    )
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            task_id = conn.execute(
                "INSERT INTO tasks (title, task_type, payload, callback_url, callback_secret, "
                "callback_headers) VALUES ('hooked', 'echo', %s, %s, 'shh', %s) RETURNING id",
                (Jsonb({"hello": "world"}), receiver.url, Jsonb({"X-Tenant": "acme"})),
            ).fetchone()[0]
            assert wait_for(lambda: len(receiver.requests) >= 3, 30), receiver.requests

            def delivery():
                return conn.execute(
                    "SELECT status, attempt, status_code, attempt_log FROM webhook_deliveries "
                    "WHERE task_id = %s",
                    (task_id,),
                ).fetchone()

            assert wait_for(lambda: delivery()[0] == "delivered", 10)
            _, attempt, status_code, log = delivery()
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        receiver.close()
    assert (attempt, status_code) == (3, 200)
    assert [entry["status_code"] for entry in log] == [500, 500, 200]
    # Exponential backoff from a 1 s base, with jitter of +-25%: about 1 s, then about 2 s.
    stamps = [datetime.fromisoformat(entry["at"]) for entry in log]
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(stamps)]
    assert gaps[0] >= 0.7 and gaps[1] >= 1.4, gaps
    for headers, body in receiver.requests:
        assert (
            headers["X-Taskqueue-Signature"] == hmac.new(b"shh", body, hashlib.sha256).hexdigest()
        )
        assert verify_signature("shh", body, headers["X-Taskqueue-Signature-256"], tolerance=60)
        assert headers["X-Tenant"] == "acme"
        sent = json.loads(body)
        assert sent["event"] == "task.succeeded"
        assert (sent["task"]["id"], sent["task"]["status"]) == (task_id, "COMPLETED")
        assert sent["task"]["result"] == {"hello": "world"}
        assert "callback_secret" not in sent["task"]
