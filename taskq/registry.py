"""The task-type registry: ``@register("name")``, ``TaskContext`` and the shared lookup.

A task type is a function ``fn(payload: dict, ctx) -> JSON-able result`` and a
marshmallow schema for its payload. The API validates payloads with the same
schema (400 with ``payload.<field>`` errors) and lists it at /task-types; the
worker looks the function up by name. The built-in types register when
``taskq.builtins`` is imported (``task_types()`` does so); users register their
own in modules named by ``TASKQ_IMPORTS``, which each process imports once at
start-up (``import_task_modules``).

A type registered with ``positional=True`` is a plain function of positional and
keyword arguments, ``fn(*args, **kwargs)``, as seed 002's task functions are: its
payload is ``{"args": [...], "kwargs": {...}}`` (``ArgsPayload``; the create
body's ``args``/``kwargs`` fill it) and it gets no ``ctx``.

A type registered with ``internal=True`` is the system's own (clean-up, webhook
delivery): only the system enqueues it (triggers, the periodic scheduler), so
the API neither lists it nor creates it, for anyone. The core *declares* these
(name, payload schema, description) so the API can refuse them without the
worker; the worker *implements* them (``implement``). The queues in
``SYSTEM_QUEUES`` are the system's as well: the API creates no task in them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from marshmallow import EXCLUDE, Schema, fields

from taskq.fields import outbound_policy
from taskq.settings import SettingError, TaskSettings


class SoftTimeLimitExceeded(Exception):
    """Raised inside a running task at its soft time limit; catch it to clean up quickly."""


class TaskCancelled(BaseException):
    """Raised inside a running task that was cancelled; a BaseException so that a task's
    ``except Exception`` does not swallow it."""


# A snooze asks for a delay between 0 and this (30 days), seconds.
MAX_SNOOZE = 30 * 86400


class Snooze(BaseException):
    """Raise ``Snooze(seconds)`` (or call ``ctx.snooze``) to run the task again that much
    later, without spending an attempt; the history shows the snooze as a RETRYING
    transition with its reason. A BaseException, like TaskCancelled: a task's
    ``except Exception`` does not swallow it."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError("snooze seconds must be a number")
        if not 0 <= seconds <= MAX_SNOOZE:
            raise ValueError(f"snooze seconds must be between 0 and {MAX_SNOOZE}")
        super().__init__(seconds)
        self.seconds = float(seconds)


@dataclass
class TaskContext:
    """What a task function may know about its run, passed as ``ctx``.

    ``settings`` are the task-side settings the process read at start-up
    (simulated durations, clean-up age, outbound HTTP), so a task never reads
    the environment while it runs.
    """

    task_id: int
    attempt: int
    queue: str
    task_type: str
    worker_id: str
    database_url: str | None = None
    settings: TaskSettings = field(default_factory=TaskSettings)
    lease_token: int | None = None
    # Whether this run called progress(): only then has the run's end a value to flush.
    reported: bool = field(default=False, repr=False)

    def connection(self):
        """An autocommit psycopg connection to the queue's database, shared per process.

        Through a transaction pool (``settings.database_pooled``) each statement
        may meet another server session: keep no session state on it.
        """
        return shared_connection(self.database_url, self.settings)

    def snooze(self, seconds: float) -> NoReturn:
        """End this run now and run the task again ``seconds`` later; no attempt is spent."""
        raise Snooze(seconds)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100, and a message): stored on the task and sent as a
        ``progress`` event. Cheap to call often: at most 4 writes a second per task reach
        the database, the newest value always (the last one before the task ends)."""
        from taskq.progress import check_progress, progress_writer

        percent, message = check_progress(percent, message)
        if not self.database_url or self.lease_token is None:
            return  # not run by a worker (a direct call in a test): nowhere to write
        self.reported = True
        writer = progress_writer(self.database_url, self.settings)
        writer.report(self.task_id, self.lease_token, percent, message)

    def flush_progress(self) -> None:
        """Write the last progress reported now, and wait for it (the runner, at the end).

        Nothing to do for a run that reported none (most: the drain's hot path)."""
        if self.reported:
            from taskq.progress import progress_writer

            progress_writer(self.database_url, self.settings).flush(self.task_id, self.lease_token)


_CONNECTIONS: dict[str | None, Any] = {}


def shared_connection(database_url: str | None, settings: TaskSettings | None = None):
    """One lazily opened autocommit connection per process and URL, reopened when broken."""
    from taskq.connections import TASK, reopened

    if not database_url:
        raise LookupError("this task context has no database_url")
    conn = reopened(_CONNECTIONS.get(database_url), database_url, TASK, settings or TaskSettings())
    _CONNECTIONS[database_url] = conn
    return conn


def close_shared_connections(database_url: str | None = None) -> None:
    """Close the shared connections (of ``database_url`` only, when given): a worker child's
    at exit, a test's when its database goes."""
    for url in [u for u in _CONNECTIONS if database_url is None or u == database_url]:
        conn = _CONNECTIONS.pop(url)
        if conn is not None:
            conn.close()


def not_implemented(payload: Any, ctx: TaskContext) -> Any:
    """The function of a declared type no module of this process implements."""
    raise LookupError(f"task type {ctx.task_type!r} is not implemented in this process")


class ArgsPayload(Schema):
    """The payload of a ``positional`` type: the call's positional and keyword arguments."""

    args = fields.List(fields.Raw(), load_default=list)
    kwargs = fields.Dict(keys=fields.String(), load_default=dict)


@dataclass(frozen=True)
class TaskType:
    """One registered task type (``implemented`` is False for a bare declaration)."""

    name: str
    func: Callable[..., Any]
    description: str
    payload_schema: type[Schema] | None
    internal: bool = False
    implemented: bool = True
    positional: bool = False

    def run(self, payload: Any, ctx: TaskContext) -> Any:
        """Call the function: ``func(payload, ctx)``, or ``func(*args, **kwargs)``."""
        if self.positional:
            return self.func(*payload["args"], **payload["kwargs"])
        return self.func(payload, ctx)

    def validate(self, payload: Any, settings: TaskSettings | None = None) -> dict[str, Any]:
        """The payload as the task will see it; raises marshmallow.ValidationError.

        With ``settings`` (the worker's), outbound URLs are checked by their
        TASKQ_ALLOW_PRIVATE_URLS; without, by the caller's ``outbound_policy``.
        """
        if self.payload_schema is None:
            return payload
        if settings is None:
            return self.payload_schema(unknown=EXCLUDE).load(payload)
        with outbound_policy(settings.allow_private_urls):
            return self.payload_schema(unknown=EXCLUDE).load(payload)


REGISTRY: dict[str, TaskType] = {}
# Queues the system enqueues into (webhook deliveries): not for tasks made through the API.
SYSTEM_QUEUES = frozenset({"webhooks"})


def summary_of(func: Callable[..., Any] | None, description: str | None) -> str:
    """``description``, else the first line of the function's docstring."""
    doc = (getattr(func, "__doc__", None) or "").strip().splitlines()
    return description or (doc[0] if doc else "")


def register(
    name: str,
    *,
    payload: type[Schema] | None = None,
    description: str | None = None,
    internal: bool = False,
    positional: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as task type ``name`` (``internal``: the system's only;
    ``positional``: called as ``func(*args, **kwargs)`` from an ``ArgsPayload``)."""
    if positional and payload is None:
        payload = ArgsPayload

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"task type {name!r} is registered twice")
        summary = summary_of(func, description)
        REGISTRY[name] = TaskType(name, func, summary, payload, internal, positional=positional)
        return func

    return decorator


def declare(
    name: str, *, payload: type[Schema] | None, description: str, internal: bool = True
) -> TaskType:
    """Declare a type whose function another layer binds (``implement``): the API knows it."""
    if name not in REGISTRY:
        REGISTRY[name] = TaskType(
            name, not_implemented, description, payload, internal, implemented=False
        )
    return REGISTRY[name]


def implement(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Bind the decorated function to the declared type ``name`` (its schema and flags kept)."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        declared = task_types().get(name)
        if declared is None:
            raise LookupError(f"task type {name!r} is not declared")
        if declared.implemented and declared.func is not func:
            raise ValueError(f"task type {name!r} is implemented twice")
        REGISTRY[name] = replace(declared, func=func, implemented=True)
        return func

    return decorator


def task_types() -> dict[str, TaskType]:
    """The registry: the built-in types and whatever this process has imported since."""
    import taskq.builtins  # noqa: F401  the built-in types register on import

    return REGISTRY


def import_task_modules(modules: Iterable[str] = ()) -> dict[str, TaskType]:
    """Import the user modules (``TASKQ_IMPORTS``, read at start-up) once; the registry.

    A module that cannot be imported is a SettingError naming TASKQ_IMPORTS.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SettingError(f"TASKQ_IMPORTS: cannot import {module!r}: {exc}") from None
    return task_types()


def user_task_types() -> dict[str, TaskType]:
    """The types users may create through the API: the registry without the internal ones."""
    return {name: t for name, t in task_types().items() if not t.internal}


def get_task_type(name: str) -> TaskType:
    """The registered type ``name``; KeyError when there is none."""
    return task_types()[name]
