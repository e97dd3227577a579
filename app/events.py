"""Server-sent events: one LISTEN connection per API process, fanned out in memory.

The ``Notifier`` owns the process's only LISTEN connection (channel
``taskq_events``, filled by the transition triggers). For each batch of
notifications it first runs its hooks (the detail cache drops the entries, so
a client that sees an event never reads an older detail afterwards), then
fetches the events of the subscribed tasks in one query and hands the same
pre-rendered bytes to every subscriber's queue. Clients never hold a database
connection; a stream costs a queue and a greenlet (see ``taskq/serve.py``).

A task's stream follows its history ids: a task's transitions are serialised
by its row lock, so its ids grow in commit order.

The all-tasks stream cannot follow ids: they are handed out before commit, and
two writers commit them out of order. It follows the order ``(xact_id, id)``
instead (migration 0008) and delivers a row only once its place is final,
``xact_id < pg_snapshot_xmin(pg_current_snapshot())``: every transaction that
could still write before it has ended. What is delivered only grows as a prefix
of that order. The process keeps one cursor in it for all its all-tasks
subscribers: on each notification batch one query returns the rows that became
final after the cursor; a committed row still waiting behind an open
transaction is looked at again on a short timer (that transaction may end
without a notification: a rollback, or no transition). The event ``id`` is the
place, ``<xact_id>-<history id>``.

The admins' stream (``/admin/events``, the dashboard's admin views) is the
all-tasks stream of every user: the same cursor and order, without the user
filter.

Resuming: a stream subscribes first, then replays ``task_history`` after the
client's ``Last-Event-ID`` (the replay too stops at the final places), then
drops live events not after the last one sent, so the seam has neither a gap
nor a duplicate.

Progress (``ctx.progress`` in a running task) is not a transition: no history
row, so no place in either order. It comes on its own channel,
``taskq_progress``, and goes out at once as a ``progress`` event *without* an
``id:`` line, so it never moves the client's Last-Event-ID and the resume
contract above is untouched. It is never replayed; a task stream that opens (or
reopens) on a running task starts, after its replay, with one ``progress`` event
of the task's current value, so a reconnect misses no more than the values in
between (the newest is in the task's ``progress`` columns too).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from marshmallow import ValidationError

from app import schemas, streamguard
from app.db import fetch_one, get_conn
from app.errors import ApiError
from app.openapi import doc
from app.streamguard import Binding, binding_of, guarded, refuse_revoked
from taskq.connections import NOTIFIER
from taskq.listen import ListenConnection
from taskq.representation import json_value

log = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/api/v1")

CHANNEL = "taskq_events"
PROGRESS_CHANNEL = "taskq_progress"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "DELETED"})
REPLAY_PAGE = 1000
STREAM_SCOPE = "stream"
CLOSE = object()  # sentinel a subscriber's queue receives when its stream must end
# A committed row waiting behind an open transaction is looked at again after RECHECK_FIRST
# seconds, then less and less often up to RECHECK_MAX while nothing changes.
RECHECK_FIRST = 0.05
RECHECK_MAX = 1.0
# Announced history rows are looked for in the partitions of this long around now first
# (fetch_events), then in every one: the bounds of "every one".
RECENT = timedelta(hours=1)
EVER_SINCE = datetime.min.replace(tzinfo=UTC)
EVER_UNTIL = datetime.max.replace(tzinfo=UTC)

Position = tuple[int, int]  # (xact_id, history id): a place in the all-tasks order


@dataclass(frozen=True)
class Change:
    """One entry of a ``taskq_events`` notification."""

    history_id: int | None
    task_id: int
    user_id: int | None
    status: str


@dataclass(frozen=True)
class Event:
    """A transition rendered once as SSE bytes, shared by every subscriber.

    ``order`` is what a stream compares to skip what it has sent: the history id in a
    task's stream, the place in the all-tasks stream, None for a deletion.
    """

    history_id: int | None
    task_id: int
    status: str
    text: bytes
    order: int | Position | None = None


def event_data(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON ``data:`` of one history row: ids, status, timestamps, result or error."""
    status = row["to_status"]
    data = {
        "id": row["task_id"],
        "event_id": row["id"],
        "status": status,
        "from_status": row["from_status"],
        "attempt": row["attempt"],
        "at": json_value(row["created_at"]),
        "started_at": json_value(row.get("started_at")),
        "completed_at": json_value(row.get("completed_at")),
        "updated_at": json_value(row.get("updated_at")),
    }
    if status == "COMPLETED":
        data["result"] = row.get("result")
    elif status in {"FAILED", "RETRYING"}:
        data["error"] = row.get("error")
    return data


def row_position(row: dict[str, Any]) -> Position:
    """The place of a history row (with its ``xact_id``) in the all-tasks order."""
    return int(row["xact_id"]), row["id"]


def render_event(row: dict[str, Any], position: Position | None = None) -> Event:
    """A history row as an SSE event: ``event`` is the status; ``id`` the history id, or the
    place ``<xact_id>-<history id>`` when ``position`` is given (the all-tasks stream)."""
    status = row["to_status"]
    data = event_data(row)
    if position is not None:
        # Whether the xact of the id wrote this row: only then may a client test it against
        # the snapshot of a read (GET /tasks/stats) to tell whether the read counted it.
        data["place_is_writer"] = bool(row.get("place_is_writer"))
    body = json.dumps(data, separators=(",", ":"))
    event_id = row["id"] if position is None else f"{position[0]}-{position[1]}"
    text = f"id: {event_id}\nevent: {status.lower()}\ndata: {body}\n\n"
    order = row["id"] if position is None else position
    return Event(row["id"], row["task_id"], status, text.encode(), order)


def render_progress(task_id: int, percent: Any, message: Any, at: Any) -> Event:
    """A progress report as an SSE event: no ``id:`` (not a transition; never replayed)."""
    body = json.dumps(
        {"id": task_id, "progress": percent, "message": message, "at": json_value(at)},
        separators=(",", ":"),
    )
    return Event(None, task_id, "PROGRESS", f"event: progress\ndata: {body}\n\n".encode())


def render_deleted(change: Change) -> Event:
    """The event of a deleted task (it has no history row left, so no ``id:``)."""
    body = json.dumps({"id": change.task_id, "status": "DELETED"})
    return Event(None, change.task_id, "DELETED", f"event: deleted\ndata: {body}\n\n".encode())


@dataclass(eq=False)
class Subscription:
    """One open stream's mailbox: events of a task, of every task of a user, or of all tasks."""

    task_id: int | None
    user_id: int | None
    maxsize: int
    everything: bool = False
    mailbox: queue.Queue = field(init=False)
    overflowed: bool = False

    def __post_init__(self) -> None:
        self.mailbox = queue.Queue(self.maxsize)

    def put(self, item: Any) -> None:
        """Deliver without ever blocking the notifier; a full mailbox ends the stream."""
        try:
            self.mailbox.put_nowait(item)
        except queue.Full:
            # The client resumes with Last-Event-ID: ending the stream loses nothing.
            self.overflowed = True

    def get(self, timeout: float) -> Any:
        """The next event, CLOSE, or queue.Empty after ``timeout`` seconds."""
        if self.overflowed and self.mailbox.empty():
            return CLOSE
        return self.mailbox.get(timeout=timeout)


class Notifier:
    """The process's LISTEN connection, its subscribers and its hooks (start/stop)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._by_task: dict[int, set[Subscription]] = {}
        self._by_user: dict[int, set[Subscription]] = {}
        self._everything: set[Subscription] = set()  # admin streams: every user's tasks
        self._hooks: list[Callable[[list[Change]], None]] = []
        self._reset_hooks: list[Callable[[], None]] = []
        self._channels: dict[str, Callable[[list[psycopg.Notify]], None]] = {}
        # LISTEN sessions begun: what a session's notifications kept current is trusted
        # only while that session lasts (``app.revocation``).
        self.sessions = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.batches = 0
        # The all-tasks cursor: the place every all-tasks subscriber has been given up to
        # (None while there is none), and the newest xact_id of a committed row known to
        # wait behind an open transaction (None: none known). Held while it moves, so a new
        # subscriber joins between two deliveries.
        self._order_lock = threading.Lock()
        self._cursor: Position | None = None
        self._waiting_until: int | None = None
        self._recheck_at: float | None = None
        self._recheck_delay = RECHECK_FIRST

    @property
    def healthy(self) -> bool:
        """LISTEN is active in this process (so hooks see every transition from now on)."""
        return self._ready.is_set() and self._pid == os.getpid()

    def add_hook(self, hook: Callable[[list[Change]], None]) -> None:
        """Run ``hook(changes)`` for every notification batch, before subscribers hear it."""
        self._hooks.append(hook)

    def add_reset_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` after the connection was lost: notifications may have been missed."""
        self._reset_hooks.append(hook)

    def add_channel(self, channel: str, hook: Callable[[list[psycopg.Notify]], None]) -> None:
        """LISTEN on ``channel`` too (before ``start``); ``hook(notes)`` gets its batches first."""
        self._channels[channel] = hook

    def start(self, timeout: float = 5.0) -> bool:
        """Start listening (once per process, also after a fork); True once LISTEN is active."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._pid = os.getpid()
                self._ready.clear()
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="taskq-notifier", daemon=True
                )
                self._thread.start()
        return self._ready.wait(timeout)

    def stop(self) -> None:
        """Stop listening and end every open stream."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.close_streams()

    def subscribe(
        self, task_id: int | None = None, user_id: int | None = None, everything: bool = False
    ) -> Subscription:
        """A new mailbox for a task's events, (task_id None) all of a user's, or
        (``everything``) all of every user's.

        An all-tasks mailbox receives every event after the process's cursor; the first one
        in the process places the cursor at the end of the final rows (one query).
        """
        maxsize = int(current_app.config.get("TASKQ_SSE_QUEUE_SIZE", 1000))
        sub = Subscription(task_id, user_id, maxsize, everything)
        if task_id is not None:
            with self._lock:
                self._by_task.setdefault(task_id, set()).add(sub)
            return sub
        with self._order_lock:
            if self._cursor is not None:
                self._add_user_sub(sub)
                return sub
        with get_conn() as conn, self._order_lock:  # the connection first: never wait holding it
            if self._cursor is None:
                self._join_order(conn)
            self._add_user_sub(sub)
        return sub

    def _add_user_sub(self, sub: Subscription) -> None:
        with self._lock:
            if sub.everything:
                self._everything.add(sub)
            else:
                self._by_user.setdefault(sub.user_id or 0, set()).add(sub)

    def _all_tasks_subs(self) -> list[Subscription]:
        """Every all-tasks mailbox, users' and admins' (hold ``_lock``)."""
        return [*(sub for group in self._by_user.values() for sub in group), *self._everything]

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a mailbox (its stream ended)."""
        with self._lock:
            if sub.everything:
                self._everything.discard(sub)
                return
            index, key = (
                (self._by_task, sub.task_id)
                if sub.task_id is not None
                else (self._by_user, sub.user_id or 0)
            )
            subs = index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[key]

    def close_streams(self) -> None:
        """End every open stream now (shutdown): clients resume elsewhere with Last-Event-ID."""
        with self._lock:
            subs = [*(sub for group in self._by_task.values() for sub in group)]
            subs += self._all_tasks_subs()
        for sub in subs:
            sub.put(CLOSE)

    def _run(self) -> None:
        ListenConnection(
            self.database_url, [CHANNEL, PROGRESS_CHANNEL, *self._channels], self._dispatch,
            on_ready=self._listening,
            on_lost=self._lost, next_wakeup=lambda: self._recheck_at, on_wakeup=self._recheck,
            application_name=NOTIFIER,
        ).listen(self._stopping)  # fmt: skip

    def _listening(self) -> None:
        self._end_unheard_streams()
        self.sessions += 1
        self._ready.set()

    def _lost(self) -> None:
        self._ready.clear()
        # Notifications may be lost from here on: the cursor can no longer know what waits.
        self._leave_order()
        # Streams resume from history with Last-Event-ID; caches drop what they hold.
        self.close_streams()
        for hook in self._reset_hooks:
            self._call(hook)

    def _recheck(self, conn: psycopg.Connection) -> None:
        """Look again at rows waiting behind an open transaction (no notification came)."""
        self._deliver_all(conn, [])

    def _dispatch(self, conn: psycopg.Connection, notes: list[psycopg.Notify]) -> None:
        if self._channels:
            for channel, hook in self._channels.items():
                mine = [note for note in notes if note.channel == channel]
                if mine:
                    self._call(hook, mine)
                    notes = [note for note in notes if note.channel != channel]
            if not notes:
                return
        progress = [note for note in notes if note.channel == PROGRESS_CHANNEL]
        if progress:
            self._deliver_progress(progress)
            notes = [note for note in notes if note.channel != PROGRESS_CHANNEL]
            if not notes:
                return
        changes: list[Change] = []
        for note in notes:
            try:
                message = json.loads(note.payload)
                changes.extend(Change(h, t, u, message["s"]) for h, t, u in message["e"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed %s payload %r", CHANNEL, note.payload[:200])
        self.batches += 1
        for hook in self._hooks:
            self._call(hook, changes)
        self._deliver_tasks(conn, changes)
        self._deliver_all(conn, [c.history_id for c in changes if c.history_id is not None])
        # A deleted task has no history left to place: its event goes out as it comes.
        for change in changes:
            if change.history_id is None:
                with self._lock:
                    subs = [*self._by_user.get(change.user_id, ()), *self._everything]
                if subs:
                    event = render_deleted(change)
                    for sub in subs:
                        sub.put(event)

    def _deliver_progress(self, notes: list[psycopg.Notify]) -> None:
        """Progress reports: to the task's streams, its owner's and the admins', at once."""
        for note in notes:
            try:
                message = json.loads(note.payload)
                task_id, user_id = int(message["t"]), message["u"]
                event = render_progress(task_id, message["p"], message["m"], message["at"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed progress payload %r", note.payload[:200])
                continue
            with self._lock:
                subs = [*self._by_task.get(task_id, ()), *self._by_user.get(user_id, ()),
                        *self._everything]  # fmt: skip
            for sub in subs:
                sub.put(event)

    def _deliver_tasks(self, conn: psycopg.Connection, changes: list[Change]) -> None:
        """The task streams: each announced transition of a followed task, in one query."""

        tasks = self._by_task
        wanted = [c for c in changes if c.task_id in tasks]
        if not wanted:
            return
        ids = [c.history_id for c in wanted if c.history_id is not None]
        rows = {}
        if ids:
            rows = fetch_events(conn, ids)
        for change in wanted:
            if change.history_id is None:
                event = render_deleted(change)
            elif change.history_id in rows:
                event = render_event(rows[change.history_id])
            else:
                continue  # the task was deleted since: its own DELETED event follows
            with self._lock:
                subs = [*tasks.get(change.task_id, ())]
            for sub in subs:
                sub.put(event)

    def _join_order(self, conn: psycopg.Connection) -> None:
        """Place the cursor at the end of the final rows; note what waits behind it."""
        from sql import queries

        row = conn.execute(queries["events_start"]).fetchone()
        self._cursor = (int(row["xact_id"]), row["id"])
        self._waiting_until = None if row["waiting"] is None else int(row["waiting"])
        self._recheck_delay = RECHECK_FIRST
        self._recheck_at = None if self._waiting_until is None else time.monotonic()

    def _end_unheard_streams(self) -> None:
        """End all-tasks streams that joined while nobody listened (they may miss a wait)."""
        with self._order_lock:
            if self._cursor is None:
                return
            self._forget_order()
            with self._lock:
                subs = self._all_tasks_subs()
        for sub in subs:
            sub.put(CLOSE)

    def _leave_order(self) -> None:
        """Drop the cursor: the next all-tasks subscriber places it again."""
        with self._order_lock:
            self._forget_order()

    def _forget_order(self) -> None:
        self._cursor, self._waiting_until, self._recheck_at = None, None, None

    def _deliver_all(self, conn: psycopg.Connection, announced: list[int]) -> None:
        """The all-tasks streams: every row that became final after the cursor, in order.

        Rows of ``announced`` (this batch's history ids) that are not final yet wait behind
        an open transaction; while any does, look again on a timer, since that transaction
        may end without a notification (a rollback, or no transition).
        """
        from sql import queries

        with self._order_lock:
            if self._cursor is None:
                return
            with self._lock:
                user_ids, everyone = list(self._by_user), bool(self._everything)
            if not user_ids and not everyone:
                self._forget_order()
                return
            until, moved = self._waiting_until, False
            while True:
                params = {
                    "xact_id": str(self._cursor[0]),
                    "after": self._cursor[1],
                    "user_ids": user_ids,
                    "everyone": everyone,
                    "announced": announced,
                    "limit": REPLAY_PAGE,
                }
                with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                    *events, end = cur.execute(queries["ready_events"], params).fetchall()
                for row in sorted(events, key=row_position):
                    event = render_event(row, row_position(row))
                    with self._lock:
                        subs = [*self._by_user.get(row["user_id"], ()), *self._everything]
                    for sub in subs:
                        sub.put(event)
                if end["id"] is not None:
                    self._cursor, moved = row_position(end), True
                if end["waiting"] is not None:
                    until = max(until or 0, int(end["waiting"]))
                announced = []
                if end["passed"] < REPLAY_PAGE:
                    break
            if until is not None and until < int(end["horizon"]):
                until = None  # everything known to wait is final now, and delivered
            self._waiting_until = until
            if until is None:
                self._recheck_at = None
                return
            if moved:
                self._recheck_delay = RECHECK_FIRST
            else:  # a long open transaction: look less often while it lasts
                self._recheck_delay = min(self._recheck_delay * 2, RECHECK_MAX)
            self._recheck_at = time.monotonic() + self._recheck_delay

    @staticmethod
    def _call(hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # a failing hook must not stop the listener
            log.exception("event hook %r failed", hook)


def get_notifier(app: Flask | None = None) -> Notifier:
    """The app's notifier (created with the app; it starts listening on first use)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["taskq_notifier"]


# ---- authentication: bearer header, or a short-lived stream token in the URL ----


def stream_token_key(secret: str) -> bytes:
    """The key of stream tokens: derived, so a stream token is never a valid API bearer."""
    return hmac.new(secret.encode(), b"taskq-stream-token", hashlib.sha256).digest()


def create_stream_token(binding: Binding, seconds: int) -> str:
    """A JWT with scope ``stream`` for the user of ``binding``, valid ``seconds``.

    It names the access token it was minted from (``atj``, and its ``pv``): it and
    its streams end with that login (``app.streamguard``).
    """
    now = datetime.now(UTC)
    claims = {
        "sub": str(binding.user_id),
        "scope": STREAM_SCOPE,
        "iat": now,
        "exp": now + timedelta(seconds=seconds),
        "jti": uuid.uuid4().hex,
        "atj": binding.jti,
        "pv": binding.password_version,
    }
    return jwt.encode(claims, stream_token_key(current_app.config["JWT_SECRET_KEY"]), "HS256")


def decode_stream_token(token: str) -> Binding:
    """The binding of a valid stream token; 401 otherwise (long-lived tokens included)."""
    try:
        claims = jwt.decode(
            token, stream_token_key(current_app.config["JWT_SECRET_KEY"]), algorithms=["HS256"]
        )
    except jwt.PyJWTError:
        raise ApiError(401, "Invalid or expired stream token.") from None
    if claims.get("scope") != STREAM_SCOPE:
        raise ApiError(401, "Invalid or expired stream token.")
    try:
        return Binding(int(claims["sub"]), str(claims["atj"]), int(claims["pv"]))
    except (KeyError, TypeError, ValueError):
        raise ApiError(401, "Invalid or expired stream token.") from None


def bearer_user_id() -> int:
    """The caller of an Authorization-header request; 401 when there is no valid token."""
    return bearer_binding().user_id


def bearer_binding() -> Binding:
    """The credential of an Authorization-header request; 401 unless valid and not revoked."""
    try:
        verify_jwt_in_request()
        return binding_of(get_jwt())
    except (JWTExtendedException, jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise ApiError(401) from None


def stream_binding() -> Binding:
    """The credential of an events request: ``?token=`` (stream scope only) or the header."""
    token = request.args.get("token")
    if token is not None:
        binding = decode_stream_token(token)
        refuse_revoked(binding)
        return binding
    return bearer_binding()


def last_event_id(places: bool = False) -> int | Position:
    """The client's resume point: the Last-Event-ID header, else the ``last_event_id`` query
    (each checked when given, the one that does not count too): a history id, 0 if none;
    with ``places`` (the all-tasks streams), also a place ``<xact_id>-<history id>``."""
    header_schema = schemas.AllEventsLastEventIdSchema if places else schemas.LastEventIdSchema
    query_schema = schemas.AllEventsQuerySchema if places else schemas.EventsQuerySchema
    raw = request.headers.get("Last-Event-ID")
    try:
        header = header_schema().load({} if raw is None else {"Last-Event-ID": raw})
        query = schemas.load_query(query_schema)
    except ValidationError as exc:
        [messages] = exc.messages.values()  # type: ignore[union-attr]
        raise ApiError(400, "Invalid Last-Event-ID.", {"Last-Event-ID": messages}) from None
    return header["last_event_id"] if raw else query.get("last_event_id", 0)


def fetch_events(conn: psycopg.Connection, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The rows of the announced history ids, by id (a deleted task's are gone): looked for
    in the hour around now (the partitions a batch just written is in), then, the ones not
    found there (a transaction open for longer, a clock apart), in every partition."""
    from sql import queries

    now = datetime.now(UTC)
    rows: dict[int, dict[str, Any]] = {}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        for since, until in (now - RECENT, now + RECENT), (EVER_SINCE, EVER_UNTIL):
            params = {"ids": [i for i in ids if i not in rows], "since": since, "until": until}
            if params["ids"]:
                rows.update((r["id"], r) for r in cur.execute(queries["fetch_events"], params))
    return rows


def event_position(conn: psycopg.Connection, history_id: int) -> Position:
    """The all-tasks place of a history id; 400 when its row is gone (its task was deleted)."""
    from sql import queries

    row = conn.execute(queries["event_position"], {"id": history_id}).fetchone()
    if row is None:
        raise ApiError(
            400,
            "Unknown Last-Event-ID.",
            {
                "Last-Event-ID": [
                    "This history id is gone (its task was deleted), so its place is unknown: "
                    "reconnect without it and re-read your tasks."
                ]
            },
        )
    return row_position(row)


# ---- the streams ----


def replay(
    conn: psycopg.Connection, query: str, params: dict[str, Any], after: int | Position
) -> list[Event]:
    """History rows after ``after`` (a history id, or a place in the all-tasks order) as
    events, page by page."""
    from sql import queries

    events: list[Event] = []
    while True:
        placed = isinstance(after, tuple)
        cursor = {"xact_id": str(after[0]), "after": after[1]} if placed else {"after": after}
        rows = conn.execute(queries[query], {**params, **cursor, "limit": REPLAY_PAGE}).fetchall()
        page = [render_event(r, row_position(r) if placed else None) for r in rows]
        events.extend(page)
        if len(rows) < REPLAY_PAGE:
            return events
        after = page[-1].order


def sse_response(body: Iterator[bytes]) -> Response:
    """A streaming text/event-stream response that proxies must not buffer."""
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def stream_body(
    notifier: Notifier,
    sub: Subscription,
    replayed: list[Event],
    after: int | Position | None,
    follow_task: bool,
) -> Iterator[bytes]:
    """The bytes of one stream: retry, replay, then live events without duplicates."""
    from app.metrics import SSE_STREAMS_OPEN

    keepalive = float(current_app.config["TASKQ_SSE_KEEPALIVE"])
    retry_ms = int(current_app.config["TASKQ_SSE_RETRY_MS"])

    def generate() -> Iterator[bytes]:
        SSE_STREAMS_OPEN.inc()
        try:
            yield f"retry: {retry_ms}\n: connected\n\n".encode()
            last = after
            for event in replayed:
                yield event.text
                if event.order is not None:  # a progress snapshot has no place
                    last = event.order
            if follow_task and replayed and replayed[-1].status in TERMINAL:
                return
            while True:
                try:
                    event = sub.get(timeout=keepalive)
                except queue.Empty:
                    yield b": keep-alive\n\n"
                    continue
                if event is CLOSE:
                    return
                if event.order is not None and last is not None and event.order <= last:
                    continue  # already sent by the replay
                yield event.text
                last = event.order if event.order is not None else last
                if follow_task and event.status in TERMINAL:
                    return
        finally:
            notifier.unsubscribe(sub)
            SSE_STREAMS_OPEN.dec()

    return generate()


def open_notifier() -> Notifier:
    """The started notifier, or 503 when this process cannot LISTEN."""
    notifier = get_notifier()
    if not notifier.start():
        raise ApiError(503, "Event stream unavailable: cannot listen to the database.")
    return notifier


@bp.get("/tasks/<int:task_id>/events")
@doc(
    "Stream one task's transitions (server-sent events)",
    tag="events",
    query=schemas.EventsQuerySchema,
    headers=schemas.LastEventIdSchema,
    response=schemas.TaskEventSchema,
    media_type="text/event-stream",
    also={204: None},
    stream_token=True,
)
def task_events(task_id: int):
    """Stream one task's transitions (its history first; closes once it is finished)."""
    stream = open_task_stream(stream_binding(), task_id)
    if stream is None:
        return Response(status=204)  # finished and fully seen: EventSource stops reconnecting
    return sse_response(stream.body)


@dataclass(frozen=True)
class Stream:
    """An opened stream: its SSE frames (guarded by its credential), and how to end it now.

    The SSE endpoints send ``body`` as it is; the WebSocket endpoints (``app.websocket``)
    turn each frame into a message: both sit on the one subscription and replay.
    """

    body: Iterator[bytes]
    close: Callable[[], None]
    abandon: Callable[[], None]  # unsubscribe a stream whose body will never be read


def open_task_stream(binding: Binding, task_id: int) -> Stream | None:
    """Subscribe to a task, replay its history after the resume point; None when the task
    is finished and the client has seen all of it. 404 unless the caller owns the task."""
    user_id = binding.user_id
    after = last_event_id()
    notifier = open_notifier()
    sub = notifier.subscribe(task_id=task_id)  # before the replay: nothing falls in between
    try:
        with get_conn() as conn:  # one checkout for the check and the replay
            task = owned_task(task_id, user_id, conn)
            replayed = replay(conn, "task_events_since", {"task_id": task_id}, after)
        if task["status"] == "PROCESSING" and task["progress"] is not None:
            now = render_progress(
                task_id, task["progress"], task["progress_message"], task["progress_at"]
            )
            replayed.append(now)
    except BaseException:
        notifier.unsubscribe(sub)
        raise
    if not replayed and task["status"] in TERMINAL:
        notifier.unsubscribe(sub)
        return None
    body = stream_body(notifier, sub, replayed, after, follow_task=True)
    return guarded_stream(notifier, body, binding, sub)


def guarded_stream(
    notifier: Notifier, body: Iterator[bytes], binding: Binding, sub: Subscription
) -> Stream:
    """``body`` watched by the stream guard; closing puts CLOSE in the mailbox."""

    def close() -> None:
        sub.put(CLOSE)

    return Stream(guarded(body, binding, close=close), close, lambda: notifier.unsubscribe(sub))


def owned_task(
    task_id: int, user_id: int, conn: psycopg.Connection | None = None
) -> dict[str, Any]:
    """The task (id, status, user_id) if the caller owns it or is an admin; else 404."""
    params = {"task_id": task_id, "user_id": user_id}
    if conn is None:
        task = fetch_one("stream_task_owner", params)
    else:
        from sql import queries

        task = conn.execute(queries["stream_task_owner"], params).fetchone()
    if task is None:
        raise ApiError(404, "Task not found.")
    return task


def all_tasks_stream(
    binding: Binding, query: str, params: dict[str, Any], **subscription: Any
) -> Stream:
    """A stream in the all-tasks order: subscribe, replay ``query`` after the resume place, go
    live. ``subscription``: ``user_id=`` (one user's tasks) or ``everything=True``."""
    resume = last_event_id(places=True)
    notifier = open_notifier()
    sub = notifier.subscribe(**subscription)  # before the replay: nothing falls in between
    try:
        replayed, after = [], None
        if resume:
            with get_conn() as conn:
                after = resume if isinstance(resume, tuple) else event_position(conn, resume)
                replayed = replay(conn, query, params, after)
    except BaseException:
        notifier.unsubscribe(sub)
        raise
    body = stream_body(notifier, sub, replayed, after, follow_task=False)
    return guarded_stream(notifier, body, binding, sub)


def open_user_stream(binding: Binding) -> Stream:
    """Every transition of the caller's tasks (replay only after a resume point)."""
    user_id = binding.user_id
    return all_tasks_stream(binding, "user_events_since", {"user_id": user_id}, user_id=user_id)


@bp.get("/events")
@doc(
    "Stream every transition of the caller's tasks (server-sent events)",
    tag="events",
    query=schemas.AllEventsQuerySchema,
    headers=schemas.AllEventsLastEventIdSchema,
    response=schemas.TaskEventSchema,
    media_type="text/event-stream",
    stream_token=True,
)
def user_events():
    """Stream every transition of the caller's tasks (replay only after a Last-Event-ID)."""
    return sse_response(open_user_stream(stream_binding()).body)


@bp.get("/admin/events")
@doc(
    "Stream every user's transitions (server-sent events; admins only)",
    tag="admin",
    query=schemas.AllEventsQuerySchema,
    headers=schemas.AllEventsLastEventIdSchema,
    response=schemas.TaskEventSchema,
    media_type="text/event-stream",
    stream_token=True,
    errors=(403,),
)
def admin_events():
    """Stream every user's transitions, for the dashboard's admin views (admins only)."""
    binding = stream_binding()
    user = fetch_one("get_user", {"user_id": binding.user_id})
    if user is None or not user["is_admin"] or not user["is_active"]:
        raise ApiError(403, "Admins only.")
    return sse_response(all_tasks_stream(binding, "all_events_since", {}, everything=True).body)


@bp.post("/events/token")
@doc(
    "A short-lived token for ?token= on the streams",
    tag="events",
    response=schemas.StreamTokenSchema,
)
def stream_token():
    """A stream token for ``?token=`` on the events endpoints (EventSource sends no headers)."""
    binding = bearer_binding()
    seconds = int(current_app.config["TASKQ_STREAM_TOKEN_SECONDS"])
    return jsonify({"token": create_stream_token(binding, seconds), "expires_in": seconds})


def init_app(app: Flask) -> None:
    """Settings, the process's notifier, and the event endpoints."""
    app.extensions["taskq_notifier"] = Notifier(app.config["LISTEN_DATABASE_URL"] or "")
    streamguard.init_app(app)
    app.register_blueprint(bp)
