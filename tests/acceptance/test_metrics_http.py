"""A ``taskq api`` and a ``taskq worker`` started apart on one host, with no
PROMETHEUS_MULTIPROC_DIR: the API's /metrics shows the worker's samples."""

from __future__ import annotations

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import api_server, wait_for
from tests.worker_helpers import start_worker, stop_worker

pytestmark = pytest.mark.slow


def completed_attempts(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "taskq_tasks_total" and sample.labels.get("outcome") == "completed"
    )


def test_the_api_scrape_shows_a_separately_started_worker(pg_server_url, template_database):
    with api_server(pg_server_url, template_database, "taskq_metrics", "m" * 32, 1) as (
        url,
        database_url,
    ):
        assert completed_attempts(url) == 0
        worker = start_worker(database_url, "--concurrency", "1")
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO tasks (title, task_type) "
                    "SELECT 'n', 'noop' FROM generate_series(1, 3)"
                )
            assert wait_for(lambda: completed_attempts(url) == 3, 30, "the worker's samples")
        finally:
            code, out = stop_worker(worker)
        assert code == 0, out
