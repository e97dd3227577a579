"""Old import path of the built-in task types, kept for one release.

The types live in ``taskq.builtins`` (the core), ``parse_seconds`` in
``taskq.settings`` and the clean-up's implementation in ``worker.cleanup``.
"""

from taskq.builtins import *  # noqa: F403
from taskq.settings import parse_seconds
from worker.cleanup import cleanup_old_tasks, delete_finished_tasks

__all__ = ["cleanup_old_tasks", "delete_finished_tasks", "parse_seconds"]
