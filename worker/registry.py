"""The worker's view of the task registry, which lives in ``taskq.registry``.

``from worker.registry import register, TaskContext`` is the old import path,
kept for one release: import them from ``taskq``. ``load_task_modules`` is what
a worker process calls once at start-up: it binds the worker's implementations
of the system's types (``worker.cleanup``, ``worker.reindex``, ``worker.webhooks``)
by plain import and imports the user modules of TASKQ_IMPORTS (read into
``WorkerConfig.imports``).
"""

from __future__ import annotations

from collections.abc import Iterable

from taskq.registry import (
    REGISTRY,
    SYSTEM_QUEUES,
    Snooze,
    SoftTimeLimitExceeded,
    TaskCancelled,
    TaskContext,
    TaskType,
    declare,
    get_task_type,
    implement,
    import_task_modules,
    register,
    shared_connection,
    task_types,
    user_task_types,
)
from worker import cleanup, reindex, webhooks  # noqa: F401  the system types' functions bind on import

__all__ = [
    "REGISTRY",
    "SYSTEM_QUEUES",
    "Snooze",
    "SoftTimeLimitExceeded",
    "TaskCancelled",
    "TaskContext",
    "TaskType",
    "declare",
    "get_task_type",
    "implement",
    "import_task_modules",
    "load_task_modules",
    "register",
    "shared_connection",
    "task_types",
    "user_task_types",
]


def load_task_modules(imports: Iterable[str] = ()) -> dict[str, TaskType]:
    """The registry with the worker's implementations and the user modules ``imports``."""
    return import_task_modules(imports)
