"""One OpenTelemetry trace from POST /tasks through the claim and the run to the webhook,
recorded by the SDK's in-memory exporter (the ``otel`` extra, installed by ``dev``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from taskq import TaskContext, TaskSettings
from tests.helpers import API, Receiver, register_account
from tests.worker_helpers import claim, claim_connection, write
from worker.completer import Completer
from worker.config import WorkerConfig
from worker.runner import SLOT_SIZE, Runner
from worker.webhooks import deliver_webhook

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's SDK provider (set once: OpenTelemetry refuses a second) and an exporter."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def run_claimed(database_url: str) -> list[int]:
    """Claim what is due and run it as a worker child does; write the outcomes."""
    completer = Completer(10, 50.0, exchange=None)
    runner = Runner(WorkerConfig(database_url=database_url), "tw", [0] * SLOT_SIZE, completer)
    with claim_connection(database_url, "tw") as exchange:
        rows = claim(exchange, 10)
        runner.start()
        try:
            for row in rows:
                runner.run(row)
        finally:
            runner.stop()
        write(exchange, completer.pending)
    return [row.id for row in rows]


def test_a_trace_runs_from_the_create_through_claim_and_run_to_the_webhook(
    make_app, database_url, db, spans
):
    client = make_app(TASKQ_ALLOW_PRIVATE_URLS=True).test_client()
    ann = register_account(client)
    receiver = Receiver([200])
    try:
        body = {"title": "traced", "task_type": "echo", "callback_url": receiver.url}
        headers = {**ann.headers, "traceparent": TRACEPARENT}
        response = client.post(f"{API}/tasks", json=body, headers=headers)
        assert response.status_code == 201, response.get_json()
        task_id = response.get_json()["task"]["id"]
        stored = db.execute("SELECT trace_context FROM tasks WHERE id = %s", (task_id,)).fetchone()
        assert stored["trace_context"]["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]

        assert run_claimed(database_url) == [task_id]
        delivery = db.execute(
            "SELECT id FROM webhook_deliveries WHERE task_id = %s", (task_id,)
        ).fetchone()
        sender = db.execute(
            "UPDATE tasks SET status = 'PROCESSING' WHERE task_type = 'deliver_webhook' "
            "RETURNING id"
        ).fetchone()["id"]
        ctx = TaskContext(sender, 1, "webhooks", "deliver_webhook", "tw", database_url,
                          TaskSettings(allow_private_urls=True))  # fmt: skip
        assert deliver_webhook({"delivery_id": delivery["id"]}, ctx)["status_code"] == 200
    finally:
        receiver.close()

    by_name = {span.name: span for span in spans.get_finished_spans()}
    create, claimed, run, hook = (
        by_name[name] for name in ("taskq.create", "taskq.claim", "taskq.run", "taskq.webhook")
    )
    trace_ids = {span.context.trace_id for span in (create, claimed, run, hook)}
    assert trace_ids == {int(TRACEPARENT.split("-")[1], 16)}  # the caller's trace, continued
    assert create.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    assert claimed.parent.span_id == create.context.span_id
    assert run.parent.span_id == claimed.context.span_id
    assert hook.parent.span_id == create.context.span_id
    assert run.attributes["taskq.task_id"] == task_id
    assert run.attributes["taskq.outcome"] == "completed"
    assert hook.attributes["http.response.status_code"] == 200
    assert claimed.start_time <= claimed.end_time <= run.start_time


def test_untraced_tasks_store_no_context_and_make_no_worker_spans(
    client, make_account, database_url, db, spans
):
    ann = make_account("ann")
    response = client.post(f"{API}/tasks", json={"title": "t", "task_type": "echo"},
                           headers=ann.headers)  # fmt: skip
    task_id = response.get_json()["task"]["id"]
    # No span was current and no traceparent came: taskq.create is a root span of its own,
    # and its context is stored all the same.
    assert db.execute("SELECT trace_context FROM tasks WHERE id = %s", (task_id,)).fetchone()[
        "trace_context"
    ]
    db.execute("UPDATE tasks SET trace_context = NULL WHERE id = %s", (task_id,))
    spans.clear()
    assert run_claimed(database_url) == [task_id]
    assert spans.get_finished_spans() == ()
