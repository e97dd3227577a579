"""Enqueue in bulk: the Python API behind ``POST /api/v1/tasks/batch`` (flask-free).

``insert_tasks(conn, user_id, tasks)`` creates many tasks in one transaction and
returns their rows, the same dictionaries ``INSERT … RETURNING *`` would give::

    import psycopg
    from taskq.enqueue import insert_tasks

    with psycopg.connect(url) as conn:
        rows = insert_tasks(conn, None, [{"title": "resize", "task_type": "echo"}])

It costs a few round trips whatever the batch size: one ``SELECT`` takes the
ids and the transaction's ``now()``, one binary ``COPY`` loads the rows, then
the commit. A batch in which some task has a ``unique_key`` goes another way
(Oban #388: its bulk insert skipped uniqueness, which only its single insert
checked). COPY cannot skip a row whose key is taken, so those rows go as one
JSON array into ``INSERT … SELECT … ON CONFLICT DO NOTHING``, held by the same
unique indexes as a single create, so concurrent creates on either path cannot
both insert a key; each row it skipped is answered with the task that holds
the key (``enqueue_tasks``: ``existing`` lists their positions). A batch in
which some task has ``depends_on`` goes that way too: its parents (the caller's
tasks) are locked in id order and counted first, as a single create does, and
its edges are written after the rows. Otherwise nothing is read back: the rows
are built here from what was sent, the reserved ids and the column defaults, so
the client skips parsing a ``RETURNING *`` of every column (most of its cost for
a big batch), and the server skips building it. The insert trigger runs once
for the COPY, as for an INSERT: one history row per task, one NOTIFY per 200
tasks, one wake-up per queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.string import BytesBinaryDumper

from sql import queries

# The column defaults of ``tasks`` (migration 0001) for what a task leaves out.
COLUMN_DEFAULTS: dict[str, Any] = {
    "description": "",
    "task_type": "process",
    "payload": {},
    "queue": "default",
    "priority": 5,
    "scheduled_at": None,
    "max_retries": 3,
    "retry_delay": 60,
    "timeout": None,
    "tags": [],
    "metadata": {},
    "callback_url": None,
    "callback_events": None,
    "callback_headers": None,
    "callback_secret": None,
    "callback_max_attempts": 5,
    "unique_key": None,
    "unique_for": None,
    "depends_on": None,
    "callback_format": None,
    "trace_context": None,
}
# A batch whose unique keys keep meeting tasks that end or vanish before they are read
# gives up after this many rounds.
UNIQUE_ROUNDS = 5
# The columns of copy_tasks, in its order, with the types psycopg writes them as. jsonb
# columns go as bytea: their binary form is a version byte and the JSON text, which
# jsonb_bytes builds; psycopg's own jsonb dumper costs ~5 µs a value in Python.
COPY_COLUMNS = (
    ("id", "int8"),
    ("user_id", "int8"),
    ("title", "text"),
    ("description", "text"),
    ("task_type", "text"),
    ("payload", "bytea"),
    ("queue", "text"),
    ("priority", "int2"),
    ("scheduled_at", "timestamptz"),
    ("run_at", "timestamptz"),
    ("max_retries", "int4"),
    ("retry_delay", "int4"),
    ("timeout", "int4"),
    ("tags", "text[]"),
    ("metadata", "bytea"),
    ("callback_url", "text"),
    ("callback_events", "text[]"),
    ("callback_headers", "bytea"),
    ("callback_secret", "text"),
    ("callback_max_attempts", "int4"),
    ("callback_format", "text"),
    ("trace_context", "bytea"),
)
COPY_TYPES = [pg_type for _, pg_type in COPY_COLUMNS]
# The columns insert_task_rows loads (its jsonb_to_recordset column list).
ROW_LOAD_COLUMNS = (
    *(name for name, _ in COPY_COLUMNS),
    *("unique_key", "unique_for", "status", "depends_on", "pending_parents"),
)
# Parents a task cannot wait for: the answer's status and title.
PARENT_PROBLEMS = {404: "A parent task was not found.", 409: "A parent task has already ended."}
ENDED = ("FAILED", "CANCELLED")
JSONB_VERSION = b"\x01"
PLAIN_JSON = frozenset({str, int, bool, type(None)})
# json.dumps builds a new C encoder on every call (about 1 µs of a small payload's 1.4);
# this one is built once. No circular-reference markers: decoded JSON cannot loop.
if json.encoder.c_make_encoder is not None:
    _encode = json.encoder.c_make_encoder(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def json_text(value: Any) -> str:
        """``value`` as compact JSON text (NaN and Infinity refused, as jsonb does)."""
        return "".join(_encode(value, 0))

else:  # pragma: no cover - CPython always has the C encoder
    json_text = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class KeyContention(Exception):
    """The unique keys of a batch kept meeting tasks that ended before they could be read."""


class ParentProblem(ValueError):
    """Parents some tasks of a batch cannot wait for: ``status`` 404 (not the caller's task,
    or none) or 409 (FAILED or CANCELLED); ``messages``: each such task's position and its
    messages."""

    def __init__(self, status: int, messages: dict[int, list[str]]) -> None:
        super().__init__(PARENT_PROBLEMS[status])
        self.status, self.messages = status, messages


@dataclass
class Enqueued:
    """What a batch made: a row per task given, in order, and the positions whose
    ``unique_key`` was taken (their row is the task that holds it, not a new one)."""

    rows: list[dict[str, Any]]
    existing: list[int] = field(default_factory=list)


def insert_tasks(
    conn: psycopg.Connection[Any], user_id: int | None, tasks: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Create ``tasks`` for ``user_id`` in one transaction (all or none); their rows, in order.

    Each task maps column names to validated values (as ``TaskCreateSchema`` loads
    them: priority an int, ``scheduled_at`` an aware datetime); a column left out
    takes its default (``callback_events`` too: the API fills its default events in
    before). Ids increase in the order given. Commits, on a connection in autocommit
    or not; inside a transaction the caller holds open it uses a savepoint instead.
    A task whose ``unique_key`` is taken gives the row of the task holding it.
    """
    return enqueue_tasks(conn, user_id, tasks).rows


def enqueue_tasks(
    conn: psycopg.Connection[Any], user_id: int | None, tasks: Iterable[Mapping[str, Any]]
) -> Enqueued:
    """``insert_tasks``, saying which positions met a taken ``unique_key`` (KeyContention
    when some keep meeting tasks that end before they are read)."""
    tasks = list(tasks)
    if not tasks:
        return Enqueued([])
    if any(task.get("unique_key") is not None or task.get("depends_on") for task in tasks):
        return insert_task_rows(conn, user_id, tasks)
    rows = []
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        # The jsonb values go as bytes: psycopg's default bytea dumper (dbapi20's) is
        # Python code; this registration gets the C one back (0.4 µs a row).
        cur.adapters.register_dumper(bytes, BytesBinaryDumper)
        ids, now = cur.execute(queries["reserve_task_ids"], {"n": len(tasks)}).fetchone()
        with cur.copy(queries["copy_tasks"]) as copy:
            copy.set_types(COPY_TYPES)
            # Row by row: psycopg sends every 32 kB, so Postgres loads while this builds.
            for task_id, task in zip(ids, tasks, strict=True):
                row = new_task_row(task_id, user_id, task, now)
                copy.write_row(copy_values(row))
                rows.append(row)
    return Enqueued(rows)


def insert_task_rows(
    conn: psycopg.Connection[Any], user_id: int | None, tasks: list[Mapping[str, Any]]
) -> Enqueued:
    """The batch path of tasks with unique keys or parents: ``INSERT … ON CONFLICT DO NOTHING``.

    Parents are locked and counted before the insert (ParentProblem when one cannot be
    waited for), edges written after it for the rows it made. The skipped rows are looked
    up by their key; one whose holder ended (or was deleted) before the lookup is inserted
    again, in the same transaction.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        reserved = cur.execute(queries["reserve_task_ids"], {"n": len(tasks)}).fetchone()
        ids, now = reserved["ids"], reserved["now"]
        rows = [new_task_row(i, user_id, task, now) for i, task in zip(ids, tasks, strict=True)]
        wait_for_parents(conn, user_id, rows, tasks)
        loaded = [{name: row[name] for name in ROW_LOAD_COLUMNS} for row in rows]
        text = json.dumps(loaded, default=iso_value, separators=(",", ":"))
        position = {task_id: n for n, task_id in enumerate(ids)}
        todo, existing, only = set(ids), [], None
        for _ in range(UNIQUE_ROUNDS):
            params = {"rows": text, "ids": only}
            for made in cur.execute(queries["insert_task_rows"], params).fetchall():
                rows[position[made["id"]]]["unique_window"] = made["unique_window"]
                todo.discard(made["id"])
            keyed = [rows[position[i]] for i in sorted(todo)]
            lookup = {
                "user_id": user_id,
                "positions": [position[row["id"]] for row in keyed],
                "keys": [row["unique_key"] for row in keyed],
                "fors": [row["unique_for"] for row in keyed],
            }
            for held in cur.execute(queries["find_unique_tasks"], lookup).fetchall():
                n = held.pop("n")
                todo.discard(rows[n]["id"])
                rows[n] = held
                existing.append(n)
            if not todo:
                taken = set(existing)
                made = [row for n, row in enumerate(rows) if n not in taken]
                link_parents(conn, {row["id"]: row["depends_on"] for row in made})
                return Enqueued(rows, sorted(existing))
            only = sorted(todo)  # their holders ended since the conflict: insert them again
        # Inside the transaction, so that it rolls back: the batch is all or none.
        raise KeyContention("unique keys kept meeting tasks that ended meanwhile: send it again")


def wait_for_parents(
    conn: psycopg.Connection[Any],
    user_id: int | None,
    rows: list[dict[str, Any]],
    tasks: list[Mapping[str, Any]],
) -> None:
    """Set the ``depends_on``, ``pending_parents`` and status (WAITING while a parent has
    not COMPLETED) of the rows whose task has parents, those locked until commit;
    ParentProblem when one is not ``user_id``'s task or has ended."""
    parents_of = {n: sorted(set(task["depends_on"])) for n, task in enumerate(tasks)
                  if task.get("depends_on")}  # fmt: skip
    if not parents_of:
        return
    found = lock_parents(conn, user_id, {p for parents in parents_of.values() for p in parents})
    problems = {n: parent_problem(parents, found) for n, parents in parents_of.items()}
    problems = {n: problem for n, problem in problems.items() if problem is not None}
    if problems:
        status = min(problem[0] for problem in problems.values())  # 404 before 409
        raise ParentProblem(status, {n: messages for n, (s, messages) in problems.items()
                                     if s == status})  # fmt: skip
    for n, parents in parents_of.items():
        pending = sum(1 for p in parents if found[p] != "COMPLETED")
        status = "WAITING" if pending else "PENDING"
        rows[n].update(depends_on=parents, pending_parents=pending, status=status)


def lock_parents(
    conn: psycopg.Connection[Any], user_id: int | None, parents: Iterable[int]
) -> dict[int, str]:
    """The status of each of ``parents`` that is ``user_id``'s task, the rows locked until
    commit (in id order, as every creator locks them)."""
    params = {"ids": sorted(parents), "user_id": user_id}
    with conn.cursor(row_factory=tuple_row) as cur:
        return dict(cur.execute(queries["lock_parent_tasks"], params).fetchall())


def parent_problem(parents: list[int], found: Mapping[int, str]) -> tuple[int, list[str]] | None:
    """Why a task cannot wait for ``parents`` (404 or 409, and a message per parent), given
    what ``lock_parents`` found; None when it can."""
    missing = [p for p in parents if p not in found]
    if missing:
        return 404, [f"Task {p} not found." for p in missing]
    ended = [p for p in parents if found[p] in ENDED]
    if ended:
        return 409, [f"Task {p} is {found[p]}: it will never complete." for p in ended]
    return None


def link_parents(conn: psycopg.Connection[Any], parents_of: Mapping[int, list[int] | None]) -> None:
    """Write the edges parent -> task of new tasks (task id -> its parents, or None) and
    mark the parents as having dependents (what the dependency trigger looks at)."""
    edges = [(p, task_id) for task_id, parents in parents_of.items() for p in parents or ()]
    if not edges:
        return
    conn.execute(queries["mark_parent_tasks"], {"ids": sorted({p for p, _ in edges})})
    columns = {"parent_ids": [p for p, _ in edges], "task_ids": [t for _, t in edges]}
    conn.execute(queries["insert_task_dependencies"], columns)


def iso_value(value: Any) -> Any:
    """The JSON of a row's non-JSON values: datetimes in ISO 8601."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def copy_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values of ``row`` in copy_tasks' column order, jsonb ones in binary form."""
    return (
        row["id"],
        row["user_id"],
        row["title"],
        row["description"],
        row["task_type"],
        jsonb_bytes(row["payload"]),
        row["queue"],
        row["priority"],
        row["scheduled_at"],
        row["run_at"],
        row["max_retries"],
        row["retry_delay"],
        row["timeout"],
        row["tags"],
        jsonb_bytes(row["metadata"]),
        row["callback_url"],
        row["callback_events"],
        jsonb_bytes(row["callback_headers"]),
        row["callback_secret"],
        row["callback_max_attempts"],
        row["callback_format"],
        jsonb_bytes(row["trace_context"]),
    )


def jsonb_bytes(value: Any) -> bytes | None:
    """The binary COPY form of a jsonb value (NULL for None)."""
    if value is None:
        return None
    return JSONB_VERSION + json_text(value).encode()


def new_task_row(
    task_id: int, user_id: int | None, task: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """The ``SELECT *`` row of a task just inserted with ``task``'s values at ``now``.

    Timestamps are given in ``now``'s time zone (the session's, as psycopg reads
    them back) and JSON values as jsonb stores them. Values already in that form
    are ``task``'s own objects, not copies: every object kept per task costs the
    cyclic garbage collector time (about 1.5 µs a task for each, measured).
    """
    task = {**COLUMN_DEFAULTS, **task}
    scheduled_at = task["scheduled_at"]
    if scheduled_at is not None:
        scheduled_at = scheduled_at.astimezone(now.tzinfo)
    return {
        "id": task_id,
        "user_id": user_id,
        "title": task["title"],
        "description": task["description"],
        "task_type": task["task_type"],
        "payload": jsonb_value(task["payload"]),
        "queue": task["queue"],
        "priority": task["priority"],
        "status": "PENDING",
        "scheduled_at": scheduled_at,
        # greatest() ignores NULL, as the single-task insert's run_at does.
        "run_at": now if scheduled_at is None or scheduled_at < now else scheduled_at,
        "attempts": 0,
        "max_retries": task["max_retries"],
        "retry_delay": task["retry_delay"],
        "timeout": task["timeout"],
        "result": None,
        "error": None,
        "tags": as_list(task["tags"]),
        "metadata": jsonb_value(task["metadata"]),
        "idempotency_key": None,
        "worker_id": None,
        "lease_token": None,
        "lease_expires_at": None,
        "callback_url": task["callback_url"],
        "callback_events": as_list(task["callback_events"]),
        "callback_headers": jsonb_value(task["callback_headers"]),
        "callback_secret": task["callback_secret"],
        "callback_max_attempts": task["callback_max_attempts"],
        "created_at": now,
        "started_at": None,
        "completed_at": None,
        "updated_at": now,
        "idempotency_fingerprint": None,  # migration 0007 added it
        "unique_key": task["unique_key"],  # migration 0012 added these
        "unique_for": task["unique_for"] if task["unique_key"] is not None else None,
        "unique_window": None,
        "snoozes": 0,
        "progress": None,
        "progress_message": None,
        "progress_at": None,
        "depends_on": None,
        "pending_parents": 0,
        "has_dependents": False,
        "callback_format": task["callback_format"],  # migration 0013 added these
        "trace_context": jsonb_value(task["trace_context"]),
    }


def jsonb_order(key: str) -> tuple[int, str]:
    """jsonb's order of object keys: shorter (in UTF-8 bytes) first, then bytewise.

    UTF-8 bytes sort like code points, so comparing the ``str`` is enough.
    """
    return len(key.encode()), key


def as_list(value: Any) -> list[Any] | None:
    """An array column's value as psycopg reads it back: a list (or None)."""
    return value if value is None or type(value) is list else list(value)


def in_jsonb_form(value: Any) -> bool:
    """``value`` is already what a jsonb column gives back (so it needs no copy)."""
    kind = type(value)
    if kind in PLAIN_JSON:
        return True
    if kind is dict:
        if len(value) > 1:
            order = [jsonb_order(key) for key in value]
            if order != sorted(order):
                return False
        return all(in_jsonb_form(item) for item in value.values())
    if kind is list:
        return all(in_jsonb_form(item) for item in value)
    if kind is float:
        return jsonb_float(value) is value
    return False


def jsonb_value(value: Any) -> Any:
    """``value`` as a jsonb column gives it back: keys in jsonb's order, numbers via numeric.

    A copy where anything differs; ``value`` itself where nothing does.
    """
    if in_jsonb_form(value):
        return value
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: jsonb_order(item[0]))
        return {key: jsonb_value(item) for key, item in items}
    if isinstance(value, list | tuple):
        return [jsonb_value(item) for item in value]
    if isinstance(value, float):
        return jsonb_float(value)
    return value


def jsonb_float(value: float) -> float | int:
    """A float through jsonb's numeric: what Python writes with an exponent (``1e+16`` and
    up, all whole numbers) comes back an int, and ``-0.0`` as ``0.0``."""
    text = repr(value)
    if "e+" in text:
        return int(Decimal(text))
    if value == 0 and text[0] == "-":
        return 0.0
    return value
