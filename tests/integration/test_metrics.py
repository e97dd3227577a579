"""/metrics: Prometheus text with the queue figures read from Postgres at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition as {(name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_show_queue_depth_age_and_webhook_deliveries(client, db):
    db.execute("INSERT INTO tasks (title, queue) VALUES ('a', 'mail'), ('b', 'mail'), ('c', 'x')")
    db.execute("INSERT INTO tasks (title, callback_url) VALUES ('hooked', 'https://example.com/h')")
    db.execute("UPDATE tasks SET status = 'COMPLETED' WHERE title = 'hooked'")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Type"].count("charset") == 1
    found = samples(response.get_data(as_text=True))
    assert found[("taskq_queue_depth", (("queue", "mail"),))] == 2
    assert found[("taskq_queue_depth", (("queue", "x"),))] == 1
    assert found[("taskq_queue_depth", (("queue", "webhooks"),))] == 1
    assert found[("taskq_queue_oldest_due_age_seconds", (("queue", "mail"),))] >= 0
    assert found[("taskq_webhook_deliveries", (("status", "pending"),))] == 1
    assert ("taskq_sse_streams_open", ()) in found


def test_metrics_show_dead_tuples_and_sizes_per_table(client, db):
    db.execute("INSERT INTO tasks (title) SELECT 't' FROM generate_series(1, 100)")
    db.execute("UPDATE tasks SET status = 'CANCELLED'")  # 100 dead versions of tasks rows

    def scraped() -> dict | None:
        found = samples(client.get("/metrics").get_data(as_text=True))
        dead = found.get(("taskq_table_dead_tuples", (("table", "tasks"),)), 0)
        return found if dead >= 100 else None  # statistics arrive within a second or so

    found = wait_for(scraped, 30, "the dead tuples of tasks in /metrics")
    assert found[("taskq_table_size_bytes", (("table", "tasks"),))] > 0
    assert found[("taskq_table_index_size_bytes", (("table", "task_history"),))] > 0
    assert found[("taskq_table_partitions", (("table", "task_history"),))] >= 3
    assert found[("taskq_table_partitions", (("table", "tasks"),))] == 1


@pytest.fixture
def guarded_app(make_app):
    """The API with a metrics token configured."""
    return make_app(TASKQ_METRICS_TOKEN="scrape-me")


def test_a_metrics_token_is_required_when_configured(guarded_app):
    client = guarded_app.test_client()
    refused = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert refused.get_json() == {
        "error": "A valid metrics token is required.",
        "field_errors": {},
    }
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def test_operator_reads_plan_without_jit_in_their_transaction_only(app, monkeypatch, database_url):
    # At 10M tasks the claim index's pages price queue_stats and queue_depth high enough
    # for JIT: 30-50 ms of compiling for a 5 ms scan. fetch_view (admin/queues, /metrics)
    # and `taskq stats` turn JIT and parallel workers off for their own transaction only,
    # so a pooled connection goes back to the pool as it was.
    from app.db import fetch_all, fetch_view
    from sql import load_queries
    from worker.stats import views_connection

    probe = "SELECT current_setting('jit') AS jit, current_setting('max_parallel_workers_per_gather') AS workers"  # noqa: E501
    monkeypatch.setitem(load_queries(), "probe_plan_settings", probe)  # cached: one dict
    with app.app_context():
        assert fetch_view("probe_plan_settings") == [{"jit": "off", "workers": "0"}]
        for _ in range(3):  # the pool's connections, after that transaction
            assert fetch_all("probe_plan_settings")[0]["jit"] == "on"
    with views_connection(database_url) as conn:
        assert conn.execute(probe).fetchone() == {"jit": "off", "workers": "0"}
