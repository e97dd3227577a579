"""/healthz and /readyz against a real Postgres."""

from __future__ import annotations

from taskq.migrate import downgrade


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
