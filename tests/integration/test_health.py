"""/healthz and /readyz against a real Postgres."""

from __future__ import annotations

import os

from app.config import load_config
from taskq.migrate import downgrade, head_revision
from taskq.serve import export_migration_head


def test_ready_when_migrated(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"postgres": "ok", "migrations": "ok"}


def test_not_ready_behind_head(client, database_url):
    downgrade(database_url, "0001")
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.get_json()
    assert body["status"] == "not ready"
    assert body["checks"]["migrations"].startswith("at 0001")


def test_taskq_api_finds_the_head_in_a_child_process(monkeypatch, client):
    monkeypatch.setenv("TASKQ_MIGRATION_HEAD", "")  # recorded, so teardown undoes the export
    monkeypatch.delenv("TASKQ_MIGRATION_HEAD")
    export_migration_head()
    assert os.environ["TASKQ_MIGRATION_HEAD"] == head_revision()
    # The app reads it once, at start-up, like every setting.
    assert load_config({"TASKQ_ENV": "test"})["TASKQ_MIGRATION_HEAD"] == head_revision()
    assert client.get("/readyz").status_code == 200
    # what readyz compares with
    monkeypatch.setitem(client.application.config, "TASKQ_MIGRATION_HEAD", "9999")
    assert client.get("/readyz").get_json()["checks"]["migrations"].endswith("head is 9999")
