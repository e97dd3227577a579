"""Webhook safety: what a user's callback settings cannot make the worker do.

Real sockets throughout: receivers are local servers in threads, and each attempt is
a real call of the ``deliver_webhook`` sender against the test's database.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from marshmallow import ValidationError

from app.schemas import TaskCreateSchema
from taskq import TaskSettings
from taskq.fields import outbound_policy
from tests.helpers import Receiver
from tests.webhook_helpers import delivery_for, insert_task, sender_context
from worker.webhooks import WebhookDeliveryError, deliver_webhook

UNSET = TaskSettings()  # the worker's defaults: TASKQ_ALLOW_PRIVATE_URLS unset


class RawServer:
    """A TCP server on 127.0.0.1 whose handler gets each accepted socket."""

    def __init__(self, handler) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.accepted = 0
        self.answered = 0  # handlers that sent their whole answer
        self.stop = threading.Event()
        self.handler = handler
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            with conn:
                try:
                    conn.settimeout(0.5)
                    conn.recv(65536)  # the request (small: one read is enough here)
                    if self.handler(conn, self.stop):
                        self.answered += 1
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver([200])
    yield server
    server.close()


def attempt(db, database_url, url: str, settings: TaskSettings):
    """One delivery attempt of a fresh task's delivery to ``url``: (result or error, row)."""
    delivery = delivery_for(db, insert_task(db, url))
    ctx = sender_context(db, database_url, delivery, settings)
    try:
        outcome = deliver_webhook({"delivery_id": delivery["id"]}, ctx)
    except WebhookDeliveryError as exc:
        outcome = exc
    row = db.execute("SELECT * FROM webhook_deliveries WHERE id = %s", (delivery["id"],))
    return outcome, row.fetchone()


# (a) private addresses, in every spelling, are refused at connect time.


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",  # decimal
        "0x7f.1",  # hex shorthand
        "017700000001",  # octal
        "127.1",
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
        "localhost",  # a name that resolves to loopback
        "localhost.",
    ],
)
def test_private_addresses_are_refused_in_every_form(db, database_url, receiver, host):
    url = receiver.url.replace("127.0.0.1", host)
    outcome, row = attempt(db, database_url, url, UNSET)
    assert outcome["error"].startswith("refused:"), outcome
    assert receiver.requests == []
    assert row["status"] == "failed"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
    ],
)
def test_the_api_refuses_private_literals(url):
    with outbound_policy(False), pytest.raises(ValidationError) as caught:
        TaskCreateSchema().load({"title": "t", "task_type": "echo", "callback_url": url})
    assert "callback_url" in caught.value.messages


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed(db, database_url, status):
    target = Receiver([200])
    redirect = Receiver([status])
    try:
        # The redirecting server answers with a Location the worker must not visit.
        handler = redirect.server.RequestHandlerClass
        original = handler.send_response

        def send_response(self, code, message=None):
            original(self, code, message)
            if code == status:
                self.send_header("Location", target.url)

        handler.send_response = send_response
        allowed = TaskSettings(allow_private_urls=True)  # both servers are local
        outcome, row = attempt(db, database_url, redirect.url, allowed)
        assert isinstance(outcome, WebhookDeliveryError)
        assert row["error"] == f"HTTP {status}"
        assert len(redirect.requests) == 1 and target.requests == []
    finally:
        target.close()
        redirect.close()


# (b) headers a user gives cannot break the request or override ours.


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "one\r\nX-Injected: yes"},
        {"X-A": "one\nX-Injected: yes"},
        {"X-A": "nul\x00"},
        {"X-A\r\nX-Injected": "yes"},
        {"Host": "169.254.169.254"},
        {"content-length": "0"},
        {"Transfer-Encoding": "chunked"},
    ],
)
def test_bad_or_framing_headers_are_refused_at_create(headers):
    body = {"title": "t", "task_type": "echo", "callback_url": "http://example.com/",
            "callback_headers": headers}  # fmt: skip
    with outbound_policy(False), pytest.raises(ValidationError) as caught:
        TaskCreateSchema().load(body)
    assert "callback_headers" in caught.value.messages


def test_a_users_signature_header_is_dropped(db, database_url, receiver):
    delivery = delivery_for(db, insert_task(db, receiver.url))
    db.execute(
        "UPDATE tasks SET callback_headers = %s WHERE id = %s",
        ('{"x-taskqueue-signature": "forged", "X-Taskqueue-Signature-256": "forged"}',
         delivery["task_id"]),
    )  # fmt: skip
    ctx = sender_context(db, database_url, delivery, TaskSettings(allow_private_urls=True))
    assert deliver_webhook({"delivery_id": delivery["id"]}, ctx)["status_code"] == 200
    headers, _ = receiver.requests[0]
    assert "forged" not in headers.values()


# (d) an attempt lasts at most TASKQ_WEBHOOK_TIMEOUT, however the server answers.

TIMEOUT = 0.5
DRIP_BYTES = 40  # 4 s of dripping: well past the timeout, short enough to wait for
QUICK = TaskSettings(allow_private_urls=True, webhook_timeout=TIMEOUT)


def drip(conn: socket.socket, stop: threading.Event, head: bytes, byte: bytes) -> bool:
    """``head``, then ``byte`` every 0.1 s (each read in time) ``DRIP_BYTES`` times; True
    when it sent them all (the client waited for the whole drip)."""
    conn.sendall(head)
    for _ in range(DRIP_BYTES):
        if stop.is_set():
            return False
        conn.sendall(byte)
        time.sleep(0.1)
    return True


def drip_headers(conn: socket.socket, stop: threading.Event) -> bool:
    """A status line and endless headers."""
    return drip(conn, stop, b"HTTP/1.1 200 OK\r\n", b"X")


def drip_body(conn: socket.socket, stop: threading.Event) -> bool:
    """A 200 with a long body."""
    return drip(conn, stop, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x")


def drip_unframed_body(conn: socket.socket, stop: threading.Event) -> bool:
    """A 200 with no length (read to EOF)."""
    return drip(conn, stop, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x")


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Never answers."""
    stop.wait(30)


def endless_body(conn: socket.socket, stop: threading.Event) -> None:
    """A 200 with an endless chunked body, as fast as it goes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    while not stop.is_set():
        conn.sendall(chunk)


@pytest.mark.parametrize(
    "handler", [drip_headers, drip_body, drip_unframed_body, silent, endless_body]
)
def test_an_attempt_ends_within_the_timeout(db, database_url, handler):
    server = RawServer(handler)
    try:
        outcome, row = attempt(db, database_url, server.url, QUICK)
    finally:
        server.close()  # stops a handler still dripping: the attempt did not wait for it
    assert server.accepted == 1
    assert server.answered == 0  # no drip (8 x the timeout) ran to its end
    if handler is not endless_body:  # a bounded read of an endless body is an answer
        assert isinstance(outcome, WebhookDeliveryError), outcome
        assert row["status"] == "pending" and row["error"]
    if handler.__name__.startswith("drip"):
        assert f"no complete answer within {TIMEOUT:g}s" in row["error"]


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    """Not HTTP at all."""
    conn.sendall(b"garbage\r\n\r\n")


def test_a_non_http_answer_is_a_recorded_failed_attempt(db, database_url):
    server = RawServer(garbage)
    try:
        outcome, row = attempt(db, database_url, server.url, QUICK)
    finally:
        server.close()
    assert isinstance(outcome, WebhookDeliveryError), outcome
    assert row["status"] == "pending" and "BadStatusLine" in row["error"]
    assert len(row["attempt_log"]) == 1
