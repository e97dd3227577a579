"""taskq: a task queue and notification service on PostgreSQL alone.

The public API, importable from ``taskq`` alone::

    from taskq import register, TaskContext, SoftTimeLimitExceeded, TaskCancelled, Snooze
    from taskq import insert_tasks

The names load on first use (PEP 562), so a launcher that imports
``taskq.settings`` does not pay for marshmallow and psycopg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the core module that is its one home
PUBLIC = {
    "register": "taskq.registry",
    "TaskContext": "taskq.registry",
    "TaskType": "taskq.registry",
    "SoftTimeLimitExceeded": "taskq.registry",
    "TaskCancelled": "taskq.registry",
    "Snooze": "taskq.registry",
    "get_task_type": "taskq.registry",
    "task_types": "taskq.registry",
    "insert_tasks": "taskq.enqueue",
    "TaskSettings": "taskq.settings",
    "SettingError": "taskq.settings",
}
__all__ = [
    "SettingError",
    "Snooze",
    "SoftTimeLimitExceeded",
    "TaskCancelled",
    "TaskContext",
    "TaskSettings",
    "TaskType",
    "get_task_type",
    "insert_tasks",
    "register",
    "task_types",
]

if TYPE_CHECKING:  # pragma: no cover
    from taskq.enqueue import insert_tasks
    from taskq.registry import (
        Snooze,
        SoftTimeLimitExceeded,
        TaskCancelled,
        TaskContext,
        TaskType,
        get_task_type,
        register,
        task_types,
    )
    from taskq.settings import SettingError, TaskSettings


def __getattr__(name: str) -> Any:
    """The public names, imported from their home on first use."""
    module = PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'taskq' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
