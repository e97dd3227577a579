"""The task-type registry: ``@register("name")`` and the lookup the API and worker share.

A task type is a function ``fn(payload: dict, ctx) -> JSON-able result`` and a
marshmallow schema for its payload. The API validates payloads with the same
schema (400 with ``payload.<field>`` errors) and lists it at /task-types; the
worker looks the function up by name. Users register their own types in a
module named by ``TASKQ_IMPORTS`` (comma-separated module paths).

A type registered with ``internal=True`` is the system's own (clean-up, webhook
delivery): only the system enqueues it (triggers, the periodic scheduler), so
the API neither lists it nor creates it, for anyone. The queues in
``SYSTEM_QUEUES`` are the system's as well: the API creates no task in them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema

from taskq.settings import env


class SoftTimeLimitExceeded(Exception):
    """Raised inside a running task at its soft time limit; catch it to clean up quickly."""


class TaskCancelled(BaseException):
    """Raised inside a running task that was cancelled; a BaseException so that a task's
    ``except Exception`` does not swallow it."""


@dataclass
class TaskContext:
    """What a task function may know about its run, passed as ``ctx``."""

    task_id: int
    attempt: int
    queue: str
    task_type: str
    worker_id: str
    database_url: str | None = None

    def connection(self):
        """An autocommit psycopg connection to the queue's database, shared per process."""
        return shared_connection(self.database_url)


_CONNECTIONS: dict[str | None, Any] = {}


def shared_connection(database_url: str | None):
    """One lazily opened autocommit connection per process and URL, reopened when broken."""
    import psycopg

    from taskq.settings import database_url as env_database_url

    conn = _CONNECTIONS.get(database_url)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(database_url or env_database_url(), autocommit=True)
        _CONNECTIONS[database_url] = conn
    return conn


@dataclass(frozen=True)
class TaskType:
    """One registered task type."""

    name: str
    func: Callable[..., Any]
    description: str
    payload_schema: type[Schema] | None
    internal: bool = False

    def validate(self, payload: Any) -> dict[str, Any]:
        """The payload as the task will see it; raises marshmallow.ValidationError."""
        if self.payload_schema is None:
            return payload
        return self.payload_schema(unknown=EXCLUDE).load(payload)


REGISTRY: dict[str, TaskType] = {}
# Queues the system enqueues into (webhook deliveries): not for tasks made through the API.
SYSTEM_QUEUES = frozenset({"webhooks"})


def register(
    name: str,
    *,
    payload: type[Schema] | None = None,
    description: str | None = None,
    internal: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as task type ``name`` (``internal``: the system's only)."""

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"task type {name!r} is registered twice")
        doc = (func.__doc__ or "").strip().splitlines()
        summary = description or (doc[0] if doc else "")
        REGISTRY[name] = TaskType(name, func, summary, payload, internal)
        return func

    return decorator


def load_task_modules() -> dict[str, TaskType]:
    """Import the built-in types and the modules of TASKQ_IMPORTS; the registry."""
    importlib.import_module("worker.builtins")
    importlib.import_module("worker.webhooks")
    for module in filter(None, (m.strip() for m in (env("TASKQ_IMPORTS") or "").split(","))):
        importlib.import_module(module)
    return REGISTRY


def user_task_types() -> dict[str, TaskType]:
    """The types users may create through the API: the registry without the internal ones."""
    return {name: t for name, t in load_task_modules().items() if not t.internal}


def get_task_type(name: str) -> TaskType:
    """The registered type ``name``; KeyError when there is none."""
    return load_task_modules()[name]
