"""Streams end when the login they came from ends: logout, a password change, a gone user.

Every stream is bound to a credential: the access token it was opened with, or
the one its stream token was minted from (its jti and the password version,
``pv``, it carried). A stream token whose credential was revoked is refused
when a stream opens (401). Open streams are re-checked by one ``StreamGuard``
per API process, about once a second (``TASKQ_SSE_AUTH_CHECK_SECONDS``), with
one query for all of the process's open streams (``stream_credentials``):
those whose credential no longer holds are closed. The rule is the same one
every API request's token passes (``app.auth.credential_revoked``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from app.auth import credential_revoked
from app.db import fetch_all, fetch_one
from app.errors import ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """The credential a stream stands on: its user, the access token's jti, and ``pv``."""

    user_id: int
    jti: str
    password_version: int


def binding_of(claims: dict[str, Any]) -> Binding:
    """The binding of a verified access token's claims."""
    return Binding(int(claims["sub"]), str(claims["jti"]), int(claims["pv"]))


def refuse_revoked(binding: Binding) -> None:
    """401 when the credential behind a stream token was revoked (logout, password change)."""
    state = fetch_one("token_state", {"jti": binding.jti, "user_id": binding.user_id})
    if credential_revoked(state, binding.password_version):
        raise ApiError(401, "Stream token revoked: its login has ended.")


class StreamGuard:
    """Closes the process's open streams whose credential was revoked (start/stop)."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self.checks = 0
        self._lock = threading.Lock()
        self._watched: dict[object, tuple[Binding, Callable[[], None]]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, stream: object, binding: Binding, close: Callable[[], None]) -> None:
        """Check ``stream``'s binding from now on; ``close()`` ends it once revoked."""
        with self._lock:
            self._watched[stream] = (binding, close)
        self.start()

    def forget(self, stream: object) -> None:
        """The stream ended."""
        with self._lock:
            self._watched.pop(stream, None)

    def start(self) -> None:
        """Run the checks (once per process, also after a fork); they pause with no streams."""
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="taskq-streamguard", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop checking."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                watched = dict(self._watched)
                if not watched:  # idle: the next watch() starts a new thread
                    self._thread = None
                    return
            try:
                self.check(watched)
            except Exception as exc:  # the database is away: keep the streams, try again
                log.warning("stream credential check failed: %s", exc)

    def check(self, watched: dict[object, tuple[Binding, Callable[[], None]]]) -> None:
        """One query for every distinct credential of ``watched``; close the revoked streams."""
        pairs = sorted({(b.user_id, b.jti) for b, _ in watched.values()})
        with self.app.app_context():
            rows = fetch_all(
                "stream_credentials",
                {"user_ids": [u for u, _ in pairs], "jtis": [j for _, j in pairs]},
            )
        self.checks += 1
        states = {(row["user_id"], row["jti"]): row for row in rows}
        for stream, (binding, close) in watched.items():
            state = states.get((binding.user_id, binding.jti))
            if state is not None and state["id"] is None:
                state = None  # the user is gone
            if credential_revoked(state, binding.password_version):
                self.forget(stream)
                close()


def get_guard(app: Flask | None = None) -> StreamGuard:
    """The app's stream guard."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["taskq_stream_guard"]


def guarded(body: Iterator[bytes], binding: Binding, close: Callable[[], None]) -> Iterator[bytes]:
    """``body``, watched by the guard while it streams."""
    guard = get_guard()

    def generate() -> Iterator[bytes]:
        stream = object()
        guard.watch(stream, binding, close)
        try:
            yield from body
        finally:
            guard.forget(stream)

    return generate()


def init_app(app: Flask) -> None:
    """Give the app its guard (its thread starts with the first stream)."""
    interval = float(app.config["TASKQ_SSE_AUTH_CHECK_SECONDS"])
    app.extensions["taskq_stream_guard"] = StreamGuard(app, interval)
