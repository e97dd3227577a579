"""Whether a token still holds, without a query per request: ``token_state`` kept per process.

Every authenticated request needs its token's ``token_state`` row (revoked jti,
active owner, password version, admin). Each API process keeps the rows it
read, keyed by (user id, jti), and trusts one only while all of these hold:

- the process's LISTEN connection (``app.events.Notifier``) is up, and is the
  same session that was up before the row was read: the triggers of migration
  0015 NOTIFY ``taskq_credentials`` with the user id on a blocklisted token, a
  password change, (de)activation, an admin change or a deleted user, and each
  such notification drops that user's rows in every process;
- no notification arrived while the row was being read (a revocation that
  committed after the read's snapshot would otherwise be stored over);
- it is younger than ``TASKQ_TOKEN_STATE_SECONDS`` (default 5): the backstop
  for a notification lost on a link that has not yet been found dead.

Otherwise the request reads the row from Postgres, as before (fail closed: a
process that cannot LISTEN asks every time). So a revocation reaches every
process within the notification's delivery (milliseconds), and at worst
within ``TASKQ_TOKEN_STATE_SECONDS``; in the process that revoked, at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
from flask import Flask, current_app

from app.db import fetch_one

if TYPE_CHECKING:
    from app.events import Notifier

log = logging.getLogger(__name__)

CHANNEL = "taskq_credentials"


class TokenStates:
    """The process's trusted ``token_state`` rows, dropped by ``taskq_credentials``."""

    MAX_USERS = 4096
    MAX_TOKENS_PER_USER = 64

    def __init__(self, notifier: Notifier, max_age: float) -> None:
        self.notifier = notifier
        self.max_age = max_age
        self.reads = 0  # rows read from Postgres
        self._lock = threading.Lock()
        # user id -> jti -> (trusted until, LISTEN session, token_state row)
        self._users: dict[int, dict[str, tuple[float, int, dict[str, Any]]]] = {}
        self.drops = 0  # every drop counts: a read that overlapped one is not kept

    def state(self, user_id: int, jti: str) -> dict[str, Any] | None:
        """The ``token_state`` row of (``user_id``, ``jti``): kept when trusted, else read."""
        notifier = self.notifier
        session, drops, listening = notifier.sessions, self.drops, notifier.healthy
        if listening:
            kept = self._users.get(user_id, {}).get(jti)
            if kept is not None and kept[1] == session and time.monotonic() < kept[0]:
                return kept[2]
        until = time.monotonic() + self.max_age  # counted from before the read
        state = fetch_one("token_state", {"jti": jti, "user_id": user_id})
        self.reads += 1
        if listening and state is not None:
            with self._lock:
                if self.drops == drops and notifier.sessions == session and notifier.healthy:
                    if user_id not in self._users and len(self._users) >= self.MAX_USERS:
                        self._users.pop(next(iter(self._users)))  # the oldest user
                    tokens = self._users.setdefault(user_id, {})
                    if jti not in tokens and len(tokens) >= self.MAX_TOKENS_PER_USER:
                        tokens.pop(next(iter(tokens)))  # that user's oldest token
                    tokens[jti] = (until, session, state)
        return state

    def forget(self, user_id: int) -> None:
        """Drop ``user_id``'s rows (this process revoked one of its tokens, or was told)."""
        with self._lock:
            self.drops += 1
            self._users.pop(user_id, None)

    def clear(self) -> None:
        """Drop every row (the LISTEN connection was lost)."""
        with self._lock:
            self.drops += 1
            self._users.clear()

    def heard(self, notes: list[psycopg.Notify]) -> None:
        """A ``taskq_credentials`` batch: each payload is a user id whose rows go."""
        for note in notes:
            try:
                user_id = int(note.payload)
            except ValueError:
                log.warning("ignoring malformed %s payload %r", CHANNEL, note.payload[:200])
                self.clear()
                continue
            self.forget(user_id)


def get_token_states(app: Flask | None = None) -> TokenStates:
    """The app's token states."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["taskq_token_states"]


def init_app(app: Flask) -> None:
    """Create the token states and hook them to the process's LISTEN connection."""
    from app.events import get_notifier  # app.events needs app.auth, which needs this module

    notifier = get_notifier(app)
    states = TokenStates(notifier, float(app.config["TASKQ_TOKEN_STATE_SECONDS"]))
    app.extensions["taskq_token_states"] = states
    notifier.add_channel(CHANNEL, states.heard)
    notifier.add_reset_hook(states.clear)
