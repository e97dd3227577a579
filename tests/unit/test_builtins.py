"""The built-in task types: payload schemas and what each returns (no database)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from marshmallow import ValidationError

from taskq import TaskContext
from taskq.registry import REGISTRY, get_task_type, task_types, user_task_types
from taskq.settings import SettingError, TaskSettings, parse_seconds, task_settings
from taskq.urlguard import UnsafeURLError, fetch, is_public_address, literal_host_error


def run(name: str, payload: object, settings: TaskSettings | None = None) -> object:
    """Validate ``payload`` as the worker does, then run the type's function."""
    settings = settings or TaskSettings()
    ctx = TaskContext(1, 1, "default", name, "test", settings=settings)
    task_type = get_task_type(name)
    return task_type.func(task_type.validate(payload, settings), ctx)


def test_every_spec_type_is_registered_with_a_description() -> None:
    names = {
        "process", "echo", "compute", "sleep", "http_request", "process_data",
        "send_email", "resize_image", "generate_report", "noop", "cleanup_old_tasks",
    }  # fmt: skip
    registry = task_types()
    assert names <= set(registry)
    assert all(REGISTRY[name].description for name in names)


def test_the_systems_own_types_are_internal_and_not_offered_to_users() -> None:
    internal = {name for name, t in task_types().items() if t.internal}
    assert internal == {"cleanup_old_tasks", "rebuild_queue_indexes", "deliver_webhook"}
    assert set(user_task_types()) == set(task_types()) - internal


@pytest.mark.parametrize(
    ("operation", "numbers", "expected"),
    [("sum", [1, 2, 3.5], 6.5), ("product", [2, 3, 4], 24), ("average", [1, 2, 3, 4], 2.5)],
)
def test_compute(operation: str, numbers: list, expected: float) -> None:
    assert run("compute", {"operation": operation, "numbers": numbers}) == {
        "operation": operation,
        "result": expected,
    }


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"operation": "median", "numbers": [1]}, "operation"),
        ({"operation": "sum"}, "numbers"),
        ({"operation": "average", "numbers": []}, "numbers"),
        ({"operation": "sum", "numbers": ["x"]}, "numbers"),
    ],
)
def test_compute_refuses_bad_payloads(payload: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        get_task_type("compute").validate(payload)
    assert field in caught.value.messages


def test_echo_and_noop() -> None:
    assert run("echo", {"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}
    assert run("noop", {}) is None


def test_sleep_waits_and_validates() -> None:
    started = time.monotonic()
    assert run("sleep", {"duration": 0.05}) == {"slept": 0.05}
    assert time.monotonic() - started >= 0.05
    with pytest.raises(ValidationError):
        get_task_type("sleep").validate({"duration": -1})


def test_process_uses_the_configured_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_PROCESS_SECONDS", "0.01-0.02")
    result = run("process", {"ignored": 1}, task_settings())
    assert result["processed"] is True
    assert 0.01 <= result["seconds"] <= 0.02


def test_parse_seconds() -> None:
    assert parse_seconds("10-20") == (10.0, 20.0)
    assert parse_seconds("3") == (3.0, 3.0)
    for bad in ("x", "5-1", "-1", "1-x"):
        with pytest.raises(SettingError):
            parse_seconds(bad)


def test_process_data_operations() -> None:
    data = [1, 2, "a", -3, None]
    assert run("process_data", {"operation": "transform", "data": data})["result"] == [
        2, 4, "A", -6, None,
    ]  # fmt: skip
    assert run("process_data", {"operation": "transform", "data": [3, "b"], "function": "square"})[
        "result"
    ] == [9, "b"]
    assert run("process_data", {"operation": "filter", "data": data, "predicate": "positive"})[
        "result"
    ] == [1, 2]
    assert run(
        "process_data", {"operation": "filter", "data": data, "predicate": "gt", "value": 1}
    )["result"] == [2]
    summary = run("process_data", {"operation": "aggregate", "data": data})["result"]
    assert summary == {
        "count": 5, "numeric_count": 3, "distinct": 5, "sum": 0, "min": -3, "max": 2,
        "average": 0.0,
    }  # fmt: skip


def test_process_data_refuses_bad_payloads() -> None:
    schema = get_task_type("process_data")
    with pytest.raises(ValidationError) as caught:
        schema.validate({"operation": "explode", "data": []})
    assert "operation" in caught.value.messages
    with pytest.raises(ValidationError) as caught:
        schema.validate({"operation": "filter", "data": [], "predicate": "gt"})
    assert "value" in caught.value.messages


def test_simulated_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKQ_SIMULATED_SECONDS", "0")
    quick = task_settings()
    mail = run("send_email", {"to": "a@example.com", "subject": "Hi", "body": "x"}, quick)
    assert mail["sent"] is True and mail["to"] == ["a@example.com"]
    image = run(
        "resize_image", {"image_url": "https://example.com/a.png", "width": 80, "height": 60}, quick
    )
    assert image["output"].endswith("_80x60.jpeg")
    report = run("generate_report", {"report_type": "summary", "output_format": "csv"}, quick)
    assert report["file"].endswith(".csv")
    with pytest.raises(ValidationError) as caught:
        get_task_type("send_email").validate({"to": "not-an-address", "subject": "x"})
    assert "to" in caught.value.messages
    with pytest.raises(ValidationError):
        get_task_type("generate_report").validate({"report_type": "weekly"})


def test_cleanup_schema_defaults() -> None:
    assert get_task_type("cleanup_old_tasks").validate({}) == {"days": None, "batch_size": 1000}


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_address_classification(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_http_request_schema_refuses_private_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKQ_ALLOW_PRIVATE_URLS", raising=False)
    schema = get_task_type("http_request")
    for url in ("http://127.0.0.1/", "http://localhost:8000/x", "http://[::1]/", "ftp://x.org/"):
        with pytest.raises(ValidationError) as caught:
            schema.validate({"url": url})
        assert "url" in caught.value.messages
    assert schema.validate({"url": "https://example.com/"})["method"] == "GET"
    assert literal_host_error("http://169.254.169.254/latest") is not None


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target")
            self.end_headers()
            return
        self.reply(200 if self.path != "/missing" else 404, {"path": self.path})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(201, {"got": json.loads(body), "type": self.headers["Content-Type"]})

    def reply(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_request_refuses_loopback_at_connect(
    local_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKQ_ALLOW_PRIVATE_URLS", raising=False)
    with pytest.raises(UnsafeURLError):
        fetch("GET", local_server + "/")
    # a host name is checked on every address it resolves to
    port = local_server.rsplit(":", 1)[1]
    with pytest.raises(UnsafeURLError):
        get_task_type("http_request").func(
            {
                "url": f"http://localhost.:{port}/",
                "method": "GET",
                "headers": {},
                "body": None,
                "timeout": 2,
                "raise_for_status": True,
            },
            TaskContext(1, 1, "default", "http_request", "test"),
        )


def test_http_request_when_private_urls_allowed(
    local_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKQ_ALLOW_PRIVATE_URLS", "1")
    private = task_settings()
    result = run("http_request", {"url": local_server + "/hello?x=1"}, private)
    assert result["status_code"] == 200
    assert json.loads(result["body"]) == {"path": "/hello?x=1"}
    posted = run(
        "http_request", {"url": local_server + "/", "method": "POST", "body": {"a": 1}}, private
    )
    assert posted["status_code"] == 201
    assert json.loads(posted["body"]) == {"got": {"a": 1}, "type": "application/json"}
    redirect = run("http_request", {"url": local_server + "/redirect"}, private)
    assert redirect["status_code"] == 302  # returned, not followed
    with pytest.raises(RuntimeError, match="HTTP 404"):
        run("http_request", {"url": local_server + "/missing"}, private)
    missing = run(
        "http_request", {"url": local_server + "/missing", "raise_for_status": False}, private
    )
    assert missing["status_code"] == 404
