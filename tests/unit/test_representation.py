"""taskq.representation: the one task shape (no Flask, no database)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

from taskq.representation import row_to_json, task_status_to_json, task_to_json
from tests.helpers import NOW, task_row


def test_task_to_json_hides_secrets_and_formats_dates():
    task = task_to_json(task_row())
    text = repr(task)
    assert "hmac-key" not in text and "secret-header" not in text and "lease_token" not in task
    assert task["has_callback_secret"] is True
    assert task["created_at"] == "2025-01-02T03:04:05+00:00"
    assert task["next_retry_at"] is None
    assert "user" not in task


def test_next_retry_at_only_while_retrying():
    later = NOW + timedelta(minutes=2)
    assert (
        task_to_json(task_row(status="RETRYING", run_at=later))["next_retry_at"]
        == later.isoformat()
    )
    assert task_to_json(task_row(status="FAILED", run_at=later))["next_retry_at"] is None


def test_owner_columns_become_a_user_object():
    task = task_to_json(task_row(owner_username="ann", owner_email="ann@example.com"))
    assert task["user"] == {"id": 3, "username": "ann", "email": "ann@example.com"}


def test_status_and_plain_rows():
    short = task_status_to_json(task_row(status="COMPLETED", result={"ok": True}))
    assert short["status"] == "COMPLETED" and short["result"] == {"ok": True}
    assert "payload" not in short
    assert row_to_json({"age": timedelta(seconds=90), "n": Decimal("1.5")}) == {
        "age": 90.0,
        "n": 1.5,
    }


def test_representation_does_not_import_flask_or_either_side():
    # A fresh interpreter: this process has Flask loaded by other tests already.
    code = (
        "import sys, taskq.representation; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'flask', 'werkzeug', 'app', 'worker'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []
