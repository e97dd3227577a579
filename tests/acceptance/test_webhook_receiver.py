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

from tests.integration.test_webhooks import Receiver
from tests.worker_helpers import start_worker, stop_worker, wait_for
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


def test_a_worker_runs_stray_deliver_webhook_tasks_without_sending(db, database_url):
    """deliver_webhook tasks made in psql for a delivered and for a not-due delivery: the
    worker runs them, and no request reaches the receivers and no attempt is used."""
    delivered, failing = Receiver([200]), Receiver([500])
    db.execute(f'ALTER DATABASE "{db.info.dbname}" SET taskq.webhook_retry_delay = 3600')
    worker = start_worker(database_url, "--concurrency", "1", TASKQ_ALLOW_PRIVATE_URLS="1")

    def deliveries() -> list[dict]:
        return db.execute(
            "SELECT w.id, w.status, w.attempt, s.status::text AS sender "
            "FROM webhook_deliveries w JOIN tasks s ON s.task_type = 'deliver_webhook' "
            "AND s.title = 'webhook delivery ' || w.id ORDER BY w.id"
        ).fetchall()

    try:
        for receiver in (delivered, failing):
            db.execute(
                "INSERT INTO tasks (title, task_type, callback_url) VALUES ('hooked', 'echo', %s)",
                (receiver.url,),
            )
        # One delivered; the other failed once and waits an hour for its retry (not due).
        wait_for(
            lambda: (
                [(d["status"], d["attempt"], d["sender"]) for d in deliveries()]
                == [("delivered", 1, "COMPLETED"), ("pending", 1, "RETRYING")]
            ),
            30,
            "a delivered and a not-due delivery",
        )
        before = deliveries()
        strays = [
            db.execute(
                "INSERT INTO tasks (title, task_type, payload, queue) "
                "VALUES ('stray', 'deliver_webhook', %s, 'webhooks') RETURNING id",
                (Jsonb({"delivery_id": d["id"]}),),
            ).fetchone()["id"]
            for d in before
        ]
        wait_for(  # each ran once (COMPLETED when it skipped, RETRYING had it sent and failed)
            lambda: db.execute(
                "SELECT bool_and(attempts = 1 AND status <> 'PROCESSING') AS ran FROM tasks "
                "WHERE id = ANY(%s)",
                (strays,),
            ).fetchone()["ran"],
            30,
            "the worker to run the stray tasks",
        )
    finally:
        stop_worker(worker)
        delivered.close()
        failing.close()
    assert (len(delivered.requests), len(failing.requests)) == (1, 1)
    assert deliveries() == before
    results = db.execute(
        "SELECT result FROM tasks WHERE id = ANY(%s) ORDER BY id", (strays,)
    ).fetchall()
    assert [r["result"]["skipped"] for r in results] == [
        "already delivered",
        "not its turn: this task is not the delivery's running sender",
    ]
