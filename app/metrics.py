"""``GET /metrics``: Prometheus text for every API process, the workers, and the queues.

Under gunicorn each process writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
(``taskq/serve.py`` sets one up before forking) and a scrape of any process
merges them all (prometheus_client's multiprocess mode); workers started with
the same directory (``taskq up`` on one machine) appear in the same scrape.
Figures that live in Postgres are read at scrape time, so they are right
whichever process answers: queue depth and oldest due age per queue (the
``queue_stats`` view), paused, workers and unserved per queue (``queue_controls``),
webhook deliveries per status, and per table the live and dead tuples and bytes
(the ``table_health`` view: statistics and file sizes, no table read), so an
operator sees bloat coming.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from app.db import fetch_all, fetch_view
from app.errors import ApiError
from app.openapi import doc

bp = Blueprint("metrics", __name__)

TASKS_CREATED = Counter(
    "taskq_enqueued_tasks_total",
    "Tasks created through the API, by type and queue.",
    ["task_type", "queue"],
)
SSE_STREAMS_OPEN = Gauge(
    "taskq_sse_streams_open",
    "Server-sent-event streams open now, over all API processes.",
    multiprocess_mode="livesum",
)


class DatabaseCollector:
    """Queue and webhook figures read from Postgres when scraped."""

    def collect(self):
        """One query per family; the view does the aggregation."""
        waiting = GaugeMetricFamily(
            "taskq_queue_depth", "Tasks waiting (PENDING or RETRYING) per queue.", labels=["queue"]
        )
        due = GaugeMetricFamily(
            "taskq_queue_due", "Waiting tasks already due per queue.", labels=["queue"]
        )
        running = GaugeMetricFamily(
            "taskq_queue_running", "Tasks PROCESSING per queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "taskq_queue_oldest_due_age_seconds",
            "How long the oldest due task of each queue has waited.",
            labels=["queue"],
        )
        for row in fetch_view("metrics_queue_stats"):
            waiting.add_metric([row["queue"]], row["waiting"])
            due.add_metric([row["queue"]], row["due"])
            running.add_metric([row["queue"]], row["running"])
            oldest.add_metric([row["queue"]], row["oldest_due_seconds"])
        controls = {
            "paused": GaugeMetricFamily(
                "taskq_queue_paused", "1 while the queue is paused.", labels=["queue"]
            ),
            "workers": GaugeMetricFamily(
                "taskq_queue_workers", "Live worker processes serving the queue.", labels=["queue"]
            ),
            "unserved": GaugeMetricFamily(
                "taskq_queue_unserved",
                "1 while tasks wait in the queue and no live worker serves it.",
                labels=["queue"],
            ),
        }
        for row in fetch_view("metrics_queue_controls"):
            for name, family in controls.items():
                family.add_metric([row["queue"]], row[name])
        deliveries = GaugeMetricFamily(
            "taskq_webhook_deliveries",
            "Webhook deliveries kept in Postgres, per status (pending, delivered, failed).",
            labels=["status"],
        )
        for row in fetch_all("metrics_webhook_deliveries"):
            deliveries.add_metric([row["status"]], row["deliveries"])
        yield from (
            waiting,
            due,
            running,
            oldest,
            *controls.values(),
            deliveries,
            *table_health_families(),
        )


def table_health_families() -> list[GaugeMetricFamily]:
    """Tuples, bytes and partitions per table, from the ``table_health`` view."""
    families = {
        "live_tuples": GaugeMetricFamily(
            "taskq_table_live_tuples", "Live rows per table (statistics).", labels=["table"]
        ),
        "dead_tuples": GaugeMetricFamily(
            "taskq_table_dead_tuples",
            "Dead rows per table awaiting vacuum (statistics): bloat in the making.",
            labels=["table"],
        ),
        "table_bytes": GaugeMetricFamily(
            "taskq_table_size_bytes", "Heap and TOAST bytes per table.", labels=["table"]
        ),
        "index_bytes": GaugeMetricFamily(
            "taskq_table_index_size_bytes", "Index bytes per table.", labels=["table"]
        ),
        "partitions": GaugeMetricFamily(
            "taskq_table_partitions", "Partitions per table (1: not partitioned).", labels=["table"]
        ),
    }
    for row in fetch_view("metrics_table_health"):
        for column, family in families.items():
            family.add_metric([row["table_name"]], row[column])
    return list(families.values())


def count_created(rows) -> None:
    """Count newly created tasks (rows with task_type and queue)."""
    for row in rows:
        TASKS_CREATED.labels(row["task_type"], row["queue"]).inc()


def scrape_registry() -> CollectorRegistry:
    """This scrape's registry: every process's samples plus the database's figures."""
    if current_app.config["PROMETHEUS_MULTIPROC_DIR"]:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(DatabaseCollector())
    return registry


class _Forward:
    """The default registry's metrics inside a scrape registry (single-process mode)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        """Whatever the process registered."""
        return self.source.collect()


@bp.get("/metrics")
@doc(
    "Prometheus metrics",
    tag="service",
    response={"type": "string"},
    media_type=CONTENT_TYPE_LATEST.split(";")[0],
    scheme="metricsToken",
    auth_setting="TASKQ_METRICS_TOKEN",
)
def metrics():
    """Prometheus text exposition (``TASKQ_METRICS_TOKEN`` set: a bearer token is required)."""
    token = current_app.config.get("TASKQ_METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "A valid metrics token is required.")
    # content_type, not mimetype: Flask would add a second "; charset=utf-8" to it.
    return Response(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Register /metrics (outside /api/v1)."""
    app.register_blueprint(bp)
