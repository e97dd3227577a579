"""WebSocket streams beside SSE: ``/ws/tasks/{id}/`` and ``/ws/tasks/`` (the caller's tasks).

They are the SSE streams of ``app.events`` in another framing, not a second
stream: the same subscription to the process's one LISTEN fan-out, the same
history replay after ``?last_event_id=``, the same stream guard that ends a
stream when its login ends. Each SSE event becomes one text message: the
event's ``data`` JSON, plus ``event`` (the SSE event name, e.g. ``completed``)
and ``last_event_id`` (the SSE ``id``: pass it back as ``?last_event_id=`` to
resume). Keep-alive comments become WebSocket pings (simple-websocket's
``ping_interval``), which also find clients that went away without a close.

Browsers cannot set headers on a WebSocket, so the credential is the
short-lived stream token (``?token=`` from ``POST /api/v1/events/token``) or,
for other clients, ``Authorization: Bearer``; never the session cookie alone (a
page on another origin could open a socket carrying it). Everything is checked
before the upgrade, so a refusal is a plain HTTP answer in the contract's error
shape (401 bad token, 404 another user's task, 400 bad ``last_event_id``, 426
not a WebSocket request) and the client's handshake fails.

Close codes: 1000 once a task's stream has sent its final status; 1001 when the
server ends a stream early (shutdown, the login ended, a client too slow for
its mailbox): reconnect with a fresh token and ``last_event_id``.

The library is simple-websocket (flask-sock's engine, used directly so the
checks above can answer before the handshake). Under gunicorn's gevent worker
(``taskq/serve.py``) it takes the connection's socket from ``gunicorn.socket``;
its reader thread is a greenlet under gevent's patched ``threading``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from simple_websocket import ConnectionClosed, Server

from app.errors import ApiError
from app.events import (
    TERMINAL,
    Stream,
    open_task_stream,
    open_user_stream,
    stream_binding,
)
from app.streamguard import Binding

bp = Blueprint("websocket", __name__, url_prefix="/ws")

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
MAX_CLIENT_MESSAGE = 4096  # clients have nothing to say; what they send is read and dropped


def sse_messages(frames: Iterator[bytes]) -> Iterator[dict[str, Any] | None]:
    """Each SSE event of ``frames`` as the message it becomes; None for a frame without
    data (the opening ``retry:``, a keep-alive comment)."""
    for chunk in frames:
        for frame in chunk.decode().split("\n\n"):
            fields: dict[str, str] = {}
            for line in frame.split("\n"):
                name, sep, value = line.partition(": ")
                if sep and name in ("id", "event", "data"):
                    fields[name] = value
            if "data" not in fields:
                if frame:
                    yield None
                continue
            data = json.loads(fields["data"])
            message = dict(data) if isinstance(data, dict) else {"data": data}
            message.setdefault("event", fields.get("event", "message"))
            if "id" in fields:
                message["last_event_id"] = fields["id"]
            yield message


def socket_binding() -> Binding:
    """The credential of a WebSocket request: ``?token=`` or the bearer header, not a cookie."""
    if request.args.get("token") is None and "Authorization" not in request.headers:
        raise ApiError(401, "A stream token is required: ?token= from POST /api/v1/events/token.")
    return stream_binding()


class HandledResponse(Response):
    """What a view returns once the WebSocket is over: the server must write nothing more."""

    mode = "unknown"

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()  # gunicorn's async workers: close the connection, no response
        if self.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def close_when_gone(ws: Server, stream: Stream) -> None:
    """Read (and drop) what the client sends until it leaves, then end its stream at once."""
    try:
        while True:
            ws.receive()
    except ConnectionClosed:
        pass
    stream.close()


def serve(stream: Stream | None, follow_task: bool) -> Response:
    """Upgrade the request and send ``stream``'s events as messages until it ends."""
    try:
        ws = Server.accept(
            request.environ,
            ping_interval=float(current_app.config["TASKQ_SSE_KEEPALIVE"]),
            max_message_size=MAX_CLIENT_MESSAGE,
        )
    except (RuntimeError, OSError):  # simple-websocket's ConnectionError is a RuntimeError
        # A handshake that failed (or no socket to take): the body will never be read.
        if stream is not None:
            stream.abandon()
        raise ApiError(400, "WebSocket handshake failed.") from None
    code = NORMAL_CLOSURE
    try:
        if stream is not None:
            threading.Thread(target=close_when_gone, args=(ws, stream), daemon=True).start()
            code = GOING_AWAY
            for message in sse_messages(stream.body):
                if message is None:
                    continue
                ws.send(json.dumps(message, separators=(",", ":")))
                if follow_task and message.get("status") in TERMINAL:
                    code = NORMAL_CLOSURE
    except ConnectionClosed:
        pass
    finally:
        if stream is not None:
            stream.body.close()  # type: ignore[attr-defined]  # unsubscribes, stops the guard
        with contextlib.suppress(ConnectionClosed):
            ws.close(code)
    response = HandledResponse()
    response.mode = ws.mode
    return response


# werkzeug routes a WebSocket handshake only to ``websocket=True`` rules, and a plain
# request only to the others: the plain twins answer 426.
@bp.get("/tasks/<int:task_id>/", websocket=True)
def task_socket(task_id: int):
    """One task's transitions over a WebSocket (its history first; closes once finished)."""
    return serve(open_task_stream(socket_binding(), task_id), follow_task=True)


@bp.get("/tasks/", websocket=True)
def tasks_socket():
    """Every transition of the caller's tasks over a WebSocket (replay after a resume point)."""
    return serve(open_user_stream(socket_binding()), follow_task=False)


@bp.get("/tasks/<int:task_id>/", endpoint="task_socket_plain")
@bp.get("/tasks/", endpoint="tasks_socket_plain")
def not_upgraded(task_id: int | None = None):
    """426: a WebSocket endpoint asked without the upgrade."""
    raise ApiError(426, "This is a WebSocket endpoint: connect with ws:// or wss://.")


def init_app(app: Flask) -> None:
    """The WebSocket endpoints."""
    app.register_blueprint(bp)
