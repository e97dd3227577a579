"""/docs in a real Chromium, served by a real HTTP server, with no internet access."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from tests.helpers import chromium_browser

pytestmark = pytest.mark.slow


@pytest.fixture
def server_url(app):
    """The app behind a real werkzeug server on a free local port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def browser():
    with chromium_browser() as chromium:
        yield chromium


def test_docs_page_works_offline_in_a_browser(server_url, browser):
    page = browser.new_page()
    foreign: list[str] = []
    page.on(
        "request",
        lambda request: (
            None if urlsplit(request.url).hostname == "127.0.0.1" else foreign.append(request.url)
        ),
    )
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(f"{server_url}/docs")
    assert response is not None and response.status == 200
    assert page.title().startswith("taskq")
    operations = page.locator("details.op")
    total = operations.count()
    assert total >= 25

    # The filter box narrows the list to the matching operations.
    page.fill("#filter", "dead-letters")
    visible = page.locator("details.op:visible")
    assert 1 <= visible.count() < total
    assert all("dead-letters" in text for text in visible.locator(".path").all_inner_texts())
    page.fill("#filter", "")
    assert page.locator("details.op:visible").count() == total

    # Opening "create a task" shows the request body generated from TaskCreateSchema.
    create = page.locator("details#tasks_create_task")
    create.locator("summary").click()
    body = create.locator("table.request-body")
    assert body.is_visible()
    fields = body.locator("code").all_inner_texts()
    assert {"title", "name", "task_type", "payload", "priority", "scheduled_time"} <= set(fields)

    # A response schema link opens that schema's table.
    create.locator('a[href="#schema-TaskCreated"]').first.click()
    assert page.locator("details#schema-TaskCreated table").is_visible()

    assert errors == [] and foreign == []
    # And the machine-readable document is served beside it.
    spec = page.request.get(f"{server_url}/openapi.json").json()
    assert "/api/v1/tasks" in spec["paths"]
