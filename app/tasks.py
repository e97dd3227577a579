"""The tasks API: create (single, batch), list, detail, status, history, delete, cancel,
retry, stats, task types and dead letters. Another user's task is always 404.

Views only change ``tasks.status`` (and its timestamps): the triggers of the
migration write the history row and the NOTIFY of every transition.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, current_app, request, url_for
from flask_jwt_extended import jwt_required
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from app import schemas
from app.auth import current_user_id
from app.cache import cached_task_detail
from app.db import fetch_all, fetch_one, get_conn
from app.errors import ApiError, get_json_body
from app.metrics import count_created
from app.openapi import doc, payload_json_schema
from app.pagination import PageRequest, Term, order_sql, page_body, page_request
from sql import queries
from taskq import tracing
from taskq.enqueue import (
    PARENT_PROBLEMS,
    Enqueued,
    KeyContention,
    ParentProblem,
    enqueue_tasks,
    link_parents,
    lock_parents,
    parent_problem,
)
from taskq.queues import service_warnings
from taskq.registry import user_task_types
from taskq.representation import (
    DEFAULT_CALLBACK_EVENTS,
    row_to_json,
    task_status_to_json,
    task_to_json,
)

bp = Blueprint("tasks", __name__, url_prefix="/api/v1")
schemas.reject_bad_data(bp)

# Query parameter -> the named fragment of sql/*.sql that filters on it.
FILTER_FRAGMENTS = {
    "user_id": "task_filter_owner",
    "username": "task_filter_username",
    "status": "task_filter_status",
    "task_type": "task_filter_task_type",
    "queue": "task_filter_queue",
    "priority": "task_filter_priority",
    "tag": "task_filter_tag",
    "start_date": "task_filter_start_date",
    "end_date": "task_filter_end_date",
    "search": "task_filter_search",
}
# A search walks at most this many tasks of the list per row it reads (offset + page + 1)
# before it asks the GIN index instead: a word of 1% of the tasks fills a page within it.
SEARCH_WALK_FACTOR = 100
# The orders a walk reads through an index (ix_tasks_user_created, ix_tasks_created, either
# way); in any other order the walk would sort every task first, so the index goes first.
WALKED_ORDERS = ([("created_at", True), ("id", True)], [("created_at", False), ("id", False)])
# Filters the counters answer exactly (sql/counters.sql); the per-queue counters need no owner.
COUNTED_FILTERS = frozenset({"user_id", "username", "status", "task_type", "queue"})
QUEUE_COUNTED_FILTERS = frozenset({"status", "queue"})
CANCELLABLE = ("WAITING", "PENDING", "RETRYING", "PROCESSING")
RETRYABLE = ("FAILED", "CANCELLED")
# A create meets a key whose task ended or was deleted before it could be read, or a
# deadlock with a worker finishing a parent: it runs again, this many times at most.
CREATE_TRIES = 5
# A batch takes no Idempotency-Key (each task's unique_key makes a resend safe).
BATCH_IDEMPOTENCY_WARNING = (
    "Idempotency-Key is not taken by /tasks/batch: give each task a unique_key to make "
    "sending the batch again safe."
)
# Schemas keep no per-load state: one instance spares every create a deep copy of its fields.
TASK_CREATE_SCHEMA = schemas.TaskCreateSchema()


# ----------------------------------------------------------------- helpers


class QueueService:
    """Which queues live workers serve and which are paused, read at most once per ``ttl`` s
    per process: a create's warnings cost no query of their own."""

    def __init__(self) -> None:
        self.read_at = -math.inf
        self.served: set[str] = set()
        self.paused: set[str] = set()

    def refresh(self) -> None:
        """Read the served and paused queues again when the last read is ``ttl`` s old."""
        if time.monotonic() - self.read_at >= current_app.config["TASKQ_QUEUE_INFO_SECONDS"]:
            row = fetch_one("queue_service")
            self.served, self.paused = set(row["served"]), set(row["paused"])
            self.read_at = time.monotonic()

    def warnings(self, queues: list[str]) -> list[str]:
        """The create's warnings for tasks in ``queues`` (unserved or paused queues)."""
        return service_warnings(queues, self.served, self.paused)


def queue_service() -> QueueService:
    """This app's QueueService."""
    return current_app.extensions.setdefault("taskq_queue_service", QueueService())


def read_queue_service() -> None:
    """Read what a create's warnings need before it writes: a read that fails (503) then
    finds nothing stored, and none fails after the create committed."""
    queue_service().refresh()


def create_warnings(queues: list[str]) -> list[str]:
    """The warnings of a create into ``queues``, from what ``read_queue_service`` read."""
    return queue_service().warnings(queues)


def ordering_terms(ordering: str | None) -> list[Term]:
    """The order of ``-created_at,title``, whitelisted, as terms; id breaks ties."""
    terms = [t.strip() for t in (ordering or "-created_at").split(",") if t.strip()]
    if not terms or len(terms) > schemas.MAX_ORDERING_TERMS:
        raise ApiError(
            400,
            "Invalid ordering.",
            {"ordering": [f"Give 1 to {schemas.MAX_ORDERING_TERMS} comma-separated fields."]},
        )
    parts: list[Term] = []
    for term in terms:
        name = term.removeprefix("-")
        if name not in schemas.ORDERING_FIELDS:
            allowed = ", ".join(schemas.ORDERING_FIELDS)
            message = f"Unknown field {name!r}; order by {allowed} ('-' for descending)."
            raise ApiError(400, "Invalid ordering.", {"ordering": [message]})
        parts.append((name, term.startswith("-")))
    # The tie-breaker follows the first term's direction so (user_id, created_at
    # DESC, id DESC) serves the default order as one index scan.
    if "id" not in {name for name, _ in parts}:
        parts.append(("id", parts[0][1]))
    return parts


def fragment(name: str) -> sql.SQL:
    """A named SQL fragment without its description comment (fragments get joined)."""
    lines = queries[name].splitlines()
    return sql.SQL(" ".join(line for line in lines if not line.lstrip().startswith("--")))


def where_sql(filters: dict[str, Any], *more: sql.Composable) -> sql.Composable:
    """The AND of the fragments of the filters present (and of ``more``)."""
    parts = [fragment(FILTER_FRAGMENTS[name]) for name in filters] + list(more)
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")


def page_size_of(query: dict[str, Any]) -> int:
    """The page size asked for (the schema held it to TASKQ_MAX_PAGE_SIZE), or TASKQ_PAGE_SIZE."""
    return query.get("page_size") or current_app.config["TASKQ_PAGE_SIZE"]


def count_source(filters: dict[str, Any], admin: bool) -> str | None:
    """The counters query that counts these filters exactly, or None (they need a scan)."""
    if not set(filters) <= COUNTED_FILTERS:
        return None
    if admin and set(filters) <= QUEUE_COUNTED_FILTERS:
        return "queue_counted_tasks"
    return "admin_counted_tasks" if admin else "counted_tasks"


def count_matches(conn: Any, filters: dict[str, Any], admin: bool) -> tuple[int, bool]:
    """How many tasks match, and whether exactly: the counters' figure, else a count that
    stops at TASKQ_COUNT_LIMIT (then ``count`` is a lower bound)."""
    where = where_sql(filters)
    source = count_source(filters, admin)
    if source is not None:
        row = conn.execute(sql.SQL(queries[source]).format(where=where), filters).fetchone()
        return row["count"], True
    limit = current_app.config["TASKQ_COUNT_LIMIT"]
    query = sql.SQL(queries["admin_count_tasks" if admin else "count_tasks"]).format(where=where)
    params = {**filters, "count_limit": limit}
    count = conn.execute(query, params).fetchone()["count"]
    return count, count < limit


def seen_count(asked: PageRequest, rows: list[dict[str, Any]]) -> tuple[int, bool]:
    """A search's count from its page alone: the rows before and on it (a lower bound), exact
    when a page-number read from the top reached the last match (no look-ahead row).

    Counting a frequent word's matches up to TASKQ_COUNT_LIMIT would read the limit over the
    word's share of the tasks (100,000 for a word of 1%), and a prefix's estimate does not
    tell the planner which words are frequent."""
    if not rows:
        return 0, asked.page is not None and asked.params["offset"] == 0
    seen = asked.params["offset"] + len(rows)
    return seen, asked.page is not None and len(rows) <= asked.size


def nested(name: str) -> sql.SQL:
    """A named query as a subquery: without its comments and closing semicolon."""
    lines = [line for line in queries[name].splitlines() if not line.lstrip().startswith("--")]
    return sql.SQL("\n".join(lines).strip().removesuffix(";"))


def search_rows(
    conn: Any, list_query: str, filters: dict[str, Any], asked: PageRequest
) -> tuple[list[dict[str, Any]], bool]:
    """A search's page (``asked``'s rows and look-ahead), and whether it came from the GIN
    index: walking the list's order over a bounded number of tasks and checking their
    documents (a frequent word), else from the GIN index's matches (a rare one). Each plan
    is right for one kind of word and ruinous for the other (walking for a rare word reads
    every task; the index for a frequent one reads every match), and the planner cannot
    tell them apart, so the walk goes first (in an order an index serves: in another the
    walk would sort every task)."""
    order = order_sql("t", asked.terms)
    others = {name: value for name, value in filters.items() if name != "search"}
    limit, offset = asked.params["limit"], asked.params["offset"]
    conn.execute(queries["read_plan_settings"])
    if asked.terms in WALKED_ORDERS:
        inner = nested(list_query).format(where=where_sql(others, asked.after), order=order)
        walk = sql.SQL(queries["search_by_walk"]).format(list=inner, order=order)
        params = {**filters, **asked.params, "page_limit": limit, "page_offset": offset,
                  "limit": SEARCH_WALK_FACTOR * (offset + limit), "offset": 0}  # fmt: skip
        rows = conn.execute(walk, params, prepare=False).fetchall()
        if len(rows) == limit:
            return rows, False
    listed = nested(list_query).format(where=where_sql(filters, asked.after), order=order)
    statement = sql.SQL(queries["search_by_index"]).format(list=listed)
    return conn.execute(statement, {**filters, **asked.params}, prepare=False).fetchall(), True


def count_search(conn: Any, filters: dict[str, Any], admin: bool) -> tuple[int, bool]:
    """How many tasks a search that went by the GIN index matches (its matches are few, or
    were read anyway), counting at most TASKQ_COUNT_LIMIT, as for the other filters."""
    limit = current_app.config["TASKQ_COUNT_LIMIT"]
    counted = nested("admin_count_tasks" if admin else "count_tasks").format(
        where=where_sql(filters)
    )
    statement = sql.SQL(queries["search_by_index"]).format(list=counted)
    params = {**filters, "count_limit": limit}
    count = conn.execute(statement, params, prepare=False).fetchone()["count"]
    return count, count < limit


def list_tasks_page(
    list_query: str, query: dict[str, Any], filters: dict[str, Any], admin: bool = False
) -> dict[str, Any]:
    """A page of tasks matching ``query``'s filters (plus ``filters``), as the API shows it.

    By ``cursor`` (keyset: the rows after the cursor's, in its order) or by ``page``
    (OFFSET); either way the page has the ``next_cursor`` after its last row. ``snapshot``:
    the one its rows were read in (None without rows), to tell which events they hold.
    """
    for name in FILTER_FRAGMENTS:
        if name in query:
            filters[name] = query[name]
    kind = "admin_tasks" if admin else "tasks"
    terms = ordering_terms(query.get("ordering")) if not query.get("cursor") else []
    asked = page_request(kind, "t", query, page_size_of(query), terms)
    with get_conn() as conn:
        if "search" in filters:
            search = conn.execute(queries["search_tsquery"], {"search": filters["search"]})
            filters["search"] = search.fetchone()["query"]
            rows, by_index = search_rows(conn, list_query, filters, asked)
            total, exact = seen_count(asked, rows)
            if by_index and not exact:
                total, exact = count_search(conn, filters, admin)
        else:
            total, exact = count_matches(conn, filters, admin)
            rows = []
            if not (exact and asked.page is not None and asked.params["offset"] >= total):
                statement = sql.SQL(queries[list_query]).format(
                    where=where_sql(filters, asked.after), order=order_sql("t", asked.terms)
                )
                rows = conn.execute(statement, {**filters, **asked.params}).fetchall()
    snapshot = rows[0]["snapshot"] if rows else None
    rows, next_cursor = asked.cut(rows)
    results = [task_to_json(row) for row in rows]
    body = page_body(results, total, exact, asked.page, asked.size, next_cursor)
    return {**body, "snapshot": snapshot}


def idempotency_key() -> str | None:
    """The Idempotency-Key header, checked."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    return schemas.IdempotencyHeaderSchema().load({"Idempotency-Key": key.strip()})["key"]


def request_fingerprint(columns: dict[str, Any]) -> str:
    """sha256 of a validated create request: what a reuse of its Idempotency-Key must match.

    Taken after validation (aliases resolved, defaults filled, times in UTC), so two
    bodies that create the same task match however they were spelled.
    """
    if columns.get("callback_format") is None:
        # Left out when not asked for, so a request fingerprinted before the field
        # existed (migration 0014) still matches when it is sent again.
        columns = {k: v for k, v in columns.items() if k != "callback_format"}
    text = json.dumps(columns, sort_keys=True, separators=(",", ":"), default=fingerprint_value)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_value(value: Any) -> Any:
    """The JSON form of the non-JSON values of a validated body (datetimes, as UTC)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return repr(value)  # nothing else is expected; never a 500 for it


def task_columns(data: dict[str, Any]) -> dict[str, Any]:
    """A validated create body as the column values of a new task."""
    columns = dict(data)
    if columns["callback_url"] and not columns["callback_events"]:
        columns["callback_events"] = list(DEFAULT_CALLBACK_EVENTS)
    return columns


def task_params(data: dict[str, Any], user_id: int, trace: dict | None) -> dict[str, Any]:
    """Parameters of insert_task (a task without parents is PENDING; ``trace``: the
    creating span's context, taskq.tracing)."""
    params = task_columns(data)
    params["user_id"] = user_id
    params["status"], params["pending_parents"] = "PENDING", 0
    params["trace_context"] = trace
    for name in ("payload", "metadata", "callback_headers", "trace_context"):
        if params[name] is not None:
            params[name] = Jsonb(params[name])
    return params


def task_or_404(conn: Any, task_id: int, user_id: int) -> dict[str, Any]:
    """The caller's task, or 404 (also when it belongs to someone else)."""
    row = conn.execute(queries["get_task"], {"task_id": task_id, "user_id": user_id}).fetchone()
    if row is None:
        raise ApiError(404, f"Task {task_id} not found.")
    return row


def any_task_or_404(conn: Any, task_id: int) -> dict[str, Any]:
    """Any user's task (for an admin), or 404."""
    row = conn.execute(queries["admin_get_task"], {"task_id": task_id}).fetchone()
    if row is None:
        raise ApiError(404, f"Task {task_id} not found.")
    return row


def change_status(
    query: str, task_id: int, allowed: tuple[str, ...], verb: str, any_owner: bool = False
) -> dict[str, Any]:
    """Run a status-changing query on the caller's task (any task with ``any_owner``: an
    admin); 404 or 409 when it cannot apply."""
    params = {"task_id": task_id, "user_id": current_user_id(), "any_owner": any_owner}
    with get_conn() as conn:
        try:
            row = conn.execute(queries[query], params).fetchone()
        except errors.UniqueViolation:
            raise ApiError(
                409,
                f"Task {task_id} cannot be {verb}: another unfinished task holds its unique_key.",
            ) from None
        if row is None:
            if any_owner:
                current = any_task_or_404(conn, task_id)
            else:
                current = task_or_404(conn, task_id, params["user_id"])
            if current["status"] in allowed and query == "retry_task":
                raise ApiError(
                    409,
                    f"Task {task_id} waits for parents that have not all COMPLETED: "
                    "retry them first.",
                )
            raise ApiError(
                409,
                f"Task {task_id} is {current['status']}: only {', '.join(allowed)} tasks "
                f"can be {verb}.",
            )
    return row


def delete_one(task_id: int, any_owner: bool = False) -> dict[str, str]:
    """Delete the caller's task (any task with ``any_owner``); 404, or 409 while it runs."""
    params = {"task_id": task_id, "user_id": current_user_id(), "any_owner": any_owner}
    with get_conn() as conn:
        if conn.execute(queries["delete_task"], params).fetchone() is None:
            if any_owner:
                any_task_or_404(conn, task_id)
            else:
                task_or_404(conn, task_id, params["user_id"])
            raise ApiError(409, f"Task {task_id} is running: cancel it before deleting it.")
    return {"message": f"Task {task_id} deleted successfully"}


def load_task_detail(task_id: int, user_id: int) -> dict[str, Any] | None:
    """The task as GET /tasks/{id} shows it, read from Postgres; None unless it is the user's."""
    row = fetch_one("get_task", {"task_id": task_id, "user_id": user_id})
    return task_to_json(row) if row is not None else None


# ------------------------------------------------------------------- tasks


@bp.post("/tasks")
@doc(
    "Create a task",
    tag="tasks",
    body=schemas.TaskCreateSchema,
    headers=schemas.IdempotencyHeaderSchema,
    response=schemas.TaskCreatedSchema,
    status=201,
    also={200: schemas.TaskCreatedSchema},
    errors=(404, 409, 422),
)
@jwt_required()
def create_task():
    """201 with the new task; 200 with the first one when the Idempotency-Key was used before,
    or with the task holding its unique_key.

    422 when the key was used before with a different request; 404 when a ``depends_on``
    task is not the caller's, 409 when one already failed or was cancelled.
    """
    data = TASK_CREATE_SCHEMA.load(get_json_body())
    key = idempotency_key()
    read_queue_service()
    with tracing.span("taskq.create", tracing.request_parent(request.headers)) as span:
        params = {
            **task_params(data, current_user_id(), tracing.carrier()),
            "idempotency_key": key,
            "idempotency_fingerprint": request_fingerprint(task_columns(data)) if key else None,
        }
        for _ in range(CREATE_TRIES):
            try:
                row = insert_one(params)
            except errors.DeadlockDetected:
                continue  # with a worker finishing one of the parents: both locked them
            if row is not None:
                if span is not None:
                    span.set_attribute("taskq.task_id", row["id"])
                break
            answer = existing_task_of_keys(params)
            if answer is not None:
                return answer
        else:
            raise ApiError(
                409, "The task holding this key just ended or was deleted: send it again."
            )
    count_created([row])
    location = url_for("tasks.get_task", task_id=row["id"])
    return created_body(row, "Task created successfully"), 201, {"Location": location}


def created_body(row: dict[str, Any], message: str) -> dict[str, Any]:
    """The body of a create's answer (201, or 200 for the task already holding its key):
    the task, a message and the queue's warnings either way."""
    return {"task": task_to_json(row), "message": message,
            "warnings": create_warnings([row["queue"]])}  # fmt: skip


def insert_one(params: dict[str, Any]) -> dict[str, Any] | None:
    """Insert the task of ``params`` (waiting for its parents); None when a key is taken."""
    parents = params["depends_on"]
    if not parents:
        return fetch_one("insert_task", params)  # one statement: no BEGIN/COMMIT round trips
    with get_conn() as conn:
        params["pending_parents"] = pending_parents(conn, params["user_id"], parents)
        params["status"] = "WAITING" if params["pending_parents"] else "PENDING"
        row = conn.execute(queries["insert_task"], params).fetchone()
        if row is not None:
            link_parents(conn, {row["id"]: parents})
    return row


def pending_parents(conn: Any, user_id: int, parents: list[int]) -> int:
    """How many of ``parents`` (the caller's tasks, locked until commit) have not COMPLETED.

    404 when one is missing or another user's; 409 when one already failed or was cancelled.
    """
    found = lock_parents(conn, user_id, parents)
    problem = parent_problem(parents, found)
    if problem is not None:
        status, messages = problem
        raise ApiError(status, PARENT_PROBLEMS[status], {"depends_on": messages})
    return sum(1 for p in parents if found[p] != "COMPLETED")


def existing_task_of_keys(params: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The answer to a create whose Idempotency-Key or unique_key is taken: the task that
    holds it (200), 422 for a key reused with another request; None when it is gone since.

    The Idempotency-Key is looked at first: a retried request gets its own task back
    whatever its unique_key says.
    """
    if params["idempotency_key"]:
        answer = first_task_of_key(params)
        if answer is not None:
            return answer
    if params["unique_key"]:
        query = "get_task_by_unique_window" if params["unique_for"] else "get_task_by_unique_key"
        row = fetch_one(query, params)
        if row is not None:
            return created_body(row, "Task already exists with this unique_key"), 200
    return None


def first_task_of_key(params: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The answer to a create whose Idempotency-Key was used before: that task, or 422;
    None when that task was deleted since."""
    # ON CONFLICT waited for the first insert to commit, so the lookup sees it.
    lookup = {"user_id": params["user_id"], "idempotency_key": params["idempotency_key"]}
    row = fetch_one("get_task_by_idempotency_key", lookup)
    if row is None:  # deleted since the conflict: the key is free again
        return None
    stored = row["idempotency_fingerprint"]
    if stored is not None and stored != params["idempotency_fingerprint"]:
        raise ApiError(
            422,
            "This Idempotency-Key was already used with a different request.",
            {
                "Idempotency-Key": [
                    f"Used before for task {row['id']} with other values: "
                    "use a new key for a new task, or resend the same request."
                ]
            },
        )
    return created_body(row, "Task already created with this key"), 200


@bp.post("/tasks/batch")
@doc(
    "Create many tasks in one transaction",
    tag="tasks",
    body=schemas.TaskBatchSchema,
    bare_list="tasks",
    response=schemas.TaskBatchCreatedSchema,
    status=201,
    errors=(404, 409),
)
@jwt_required()
def create_tasks_batch():
    """All tasks or none; at most TASKQ_MAX_BATCH; a bare JSON array is accepted too.

    404 when a ``depends_on`` task is not the caller's, 409 when one already failed or was
    cancelled (``field_errors`` name the batch's tasks: ``tasks.3.depends_on``).
    """
    body = get_json_body()
    if isinstance(body, list):
        body = {"tasks": body}
    maximum = current_app.config["TASKQ_MAX_BATCH"]
    items = body.get("tasks") if isinstance(body, dict) else None
    if isinstance(items, list) and len(items) > maximum:
        raise ApiError(400, "Batch too large.", {"tasks": [f"At most {maximum} tasks."]})
    data = schemas.TaskBatchSchema().load(body)
    user_id = current_user_id()
    read_queue_service()
    with (
        tracing.span("taskq.create", tracing.request_parent(request.headers), taskq__batch=True),
        get_conn() as conn,
    ):
        trace = tracing.carrier()
        columns = [{**task_columns(task), "trace_context": trace} for task in data["tasks"]]
        result = enqueue_batch(conn, user_id, columns)
    existing = set(result.existing)
    created = [row for i, row in enumerate(result.rows) if i not in existing]
    count_created(created)
    tasks = [task_to_json(row) for row in result.rows]
    message = f"{len(created)} tasks created"
    if existing:
        message += f", {len(existing)} already existed with their unique_key"
    warnings = create_warnings([task["queue"] for task in tasks])
    if "Idempotency-Key" in request.headers:  # sent by habit or by a client library: say so
        warnings.append(BATCH_IDEMPOTENCY_WARNING)
    body = {"tasks": tasks, "count": len(tasks), "existing": result.existing, "message": message}
    body["warnings"] = warnings
    return body, 201 if created or not tasks else 200


def enqueue_batch(conn: Any, user_id: int, columns: list[dict[str, Any]]) -> Enqueued:
    """``enqueue_tasks`` in a transaction of its own, run again after a deadlock with a
    worker finishing one of the parents (both locked them); 404 or 409 for parents the
    tasks cannot wait for, 409 for keys that kept meeting tasks ending meanwhile."""
    for _ in range(CREATE_TRIES):
        try:
            return enqueue_tasks(conn, user_id, columns)
        except errors.DeadlockDetected:
            continue
        except ParentProblem as exc:
            fields = {f"tasks.{n}.depends_on": messages for n, messages in exc.messages.items()}
            raise ApiError(exc.status, str(exc), fields) from None
        except KeyContention as exc:
            raise ApiError(409, f"{str(exc).capitalize()}.") from None
    raise ApiError(409, "A parent task kept changing while this batch was created: send it again.")


@bp.get("/tasks")
@doc(
    "List the caller's tasks",
    tag="tasks",
    query=schemas.TaskListQuerySchema,
    response=schemas.TaskPageSchema,
)
@jwt_required()
def list_tasks():
    """Filtered, ordered, paginated."""
    query = schemas.load_query(schemas.TaskListQuerySchema)
    return list_tasks_page("list_tasks", query, {"user_id": current_user_id()})


@bp.get("/tasks/stats")
@doc("Count the caller's tasks per status", tag="tasks", response=schemas.StatsSchema)
@jwt_required()
def task_stats():
    """Every status with its count, the total, and the snapshot the counts were read in."""
    rows = fetch_all("task_stats", {"user_id": current_user_id()})
    stats = [{"status": row["status"], "count": row["count"]} for row in rows]
    total = sum(row["count"] for row in stats)
    return {"stats": stats, "total": total, "snapshot": rows[0]["snapshot"]}


@bp.get("/tasks/<int:task_id>")
@doc("One task", tag="tasks", response=schemas.TaskDetailSchema)
@jwt_required()
def get_task(task_id: int):
    """The task and whether it came from the cache."""
    task, cached = cached_task_detail(task_id, current_user_id(), load_task_detail)
    if task is None:
        raise ApiError(404, f"Task {task_id} not found.")
    return {"task": task, "cached": cached}


@bp.get("/tasks/<int:task_id>/status")
@doc("The short status of a task", tag="tasks", response=schemas.TaskStatusSchema)
@jwt_required()
def get_task_status(task_id: int):
    """Status, attempts, result or error, and when it next runs."""
    with get_conn() as conn:
        row = task_or_404(conn, task_id, current_user_id())
    return task_status_to_json(row)


@bp.get("/tasks/<int:task_id>/history")
@doc("The transitions of a task", tag="tasks", response=schemas.TaskHistorySchema)
@jwt_required()
def get_task_history(task_id: int):
    """Every status change, oldest first."""
    with get_conn() as conn:
        task_or_404(conn, task_id, current_user_id())
        rows = conn.execute(queries["task_history"], {"task_id": task_id}).fetchall()
    return {"task_id": task_id, "history": [row_to_json(row) for row in rows]}


@bp.delete("/tasks/<int:task_id>")
@doc("Delete a task", tag="tasks", response=schemas.MessageSchema, errors=(409,))
@jwt_required()
def delete_task(task_id: int):
    """Delete a task that no worker is running (cancel a running one first: 409)."""
    return delete_one(task_id)


@bp.post("/tasks/<int:task_id>/cancel")
@doc(
    "Cancel a waiting or running task",
    tag="tasks",
    response=schemas.TaskActionSchema,
    errors=(409,),
)
@jwt_required()
def cancel_task(task_id: int):
    """WAITING, PENDING, RETRYING or PROCESSING -> CANCELLED (a running task's worker is told;
    the tasks that depend on it are cancelled too)."""
    row = change_status("cancel_task", task_id, CANCELLABLE, "cancelled")
    return {"task": task_to_json(row), "message": f"Task {task_id} cancelled"}


@bp.post("/tasks/<int:task_id>/retry")
@doc(
    "Retry a failed or cancelled task",
    tag="tasks",
    response=schemas.TaskActionSchema,
    errors=(409,),
)
@jwt_required()
def retry_task(task_id: int):
    """FAILED or CANCELLED -> PENDING with a new attempt series, due now."""
    row = change_status("retry_task", task_id, RETRYABLE, "retried")
    return {"task": task_to_json(row), "message": f"Task {task_id} queued for retry"}


@bp.get("/task-types")
@doc("The registered task types and their payloads", tag="tasks", response=schemas.TaskTypesSchema)
@jwt_required()
def task_types():
    """Name, description and payload JSON schema of every type users may create."""
    types = [
        {
            "name": task_type.name,
            "description": task_type.description,
            "payload_schema": payload_json_schema(task_type.payload_schema)
            if task_type.payload_schema is not None
            else {"type": "object"},
        }
        for task_type in sorted(user_task_types().values(), key=lambda t: t.name)
    ]
    return {"task_types": types}


# ------------------------------------------------------------ dead letters


def dead_letter_or_404(conn: Any, dead_letter_id: int, user_id: int) -> dict[str, Any]:
    """The caller's dead letter, or 404."""
    params = {"dead_letter_id": dead_letter_id, "user_id": user_id}
    row = conn.execute(queries["get_dead_letter"], params).fetchone()
    if row is None:
        raise ApiError(404, f"Dead letter {dead_letter_id} not found.")
    return row


@bp.get("/dead-letters")
@doc(
    "The caller's failed tasks",
    tag="dead letters",
    query=schemas.PageQuerySchema,
    response=schemas.DeadLetterPageSchema,
)
@jwt_required()
def list_dead_letters():
    """Newest first, by page or by cursor."""
    query = schemas.load_query(schemas.PageQuerySchema)
    asked = page_request("dead_letters", "d", query, page_size_of(query), [("id", True)])
    limit = current_app.config["TASKQ_COUNT_LIMIT"]
    params = {**asked.params, "user_id": current_user_id(), "count_limit": limit}
    with get_conn() as conn:
        total = conn.execute(queries["count_dead_letters"], params).fetchone()["count"]
        statement = sql.SQL(queries["list_dead_letters"]).format(after=asked.after)
        rows, next_cursor = asked.cut(conn.execute(statement, params).fetchall())
    results = [row_to_json(row) for row in rows]
    return page_body(results, total, total < limit, asked.page, asked.size, next_cursor)


@bp.get("/dead-letters/<int:dead_letter_id>")
@doc("One dead letter", tag="dead letters", response=schemas.DeadLetterDetailSchema)
@jwt_required()
def get_dead_letter(dead_letter_id: int):
    """The failed task's type, payload, error and attempts."""
    with get_conn() as conn:
        row = dead_letter_or_404(conn, dead_letter_id, current_user_id())
    return {"dead_letter": row_to_json(row)}


@bp.post("/dead-letters/<int:dead_letter_id>/reprocess")
@doc(
    "Send a dead letter's task back to the queue",
    tag="dead letters",
    response=schemas.TaskActionSchema,
    errors=(409,),
)
@jwt_required()
def reprocess_dead_letter(dead_letter_id: int):
    """A new attempt series: the task goes back to PENDING with no attempts; once per letter."""
    user_id = current_user_id()
    with get_conn() as conn:
        letter = dead_letter_or_404(conn, dead_letter_id, user_id)
        # The letter again under its task's row lock, taken first as every writer of the
        # task's letters takes it (a retry or another reprocess closing it, a failed attempt
        # adding one): a reprocess that read it open before another one requeued the task,
        # which then failed again or was cancelled, sees it closed and requeues nothing.
        conn.execute(queries["lock_task_row"], {"task_id": letter["task_id"]})
        letter = dead_letter_or_404(conn, dead_letter_id, user_id)
        if letter["reprocessed_at"] is not None:
            raise ApiError(409, f"Dead letter {dead_letter_id} was already reprocessed.")
        params = {"task_id": letter["task_id"], "user_id": user_id, "any_owner": False}
        try:
            row = conn.execute(queries["retry_task"], params).fetchone()
        except errors.UniqueViolation:
            raise ApiError(
                409, f"Task {letter['task_id']}: another unfinished task holds its unique_key."
            ) from None
        if row is None:
            raise ApiError(
                409, f"Task {letter['task_id']} is {letter['task_status']}: nothing to reprocess."
            )
    return {"task": task_to_json(row), "message": f"Task {row['id']} requeued"}


def init_app(app: Flask) -> None:
    """Register the tasks and dead-letter endpoints."""
    app.register_blueprint(bp)
