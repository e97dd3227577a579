"""The public API is ``taskq``; the old import paths are the same objects, for one release."""

from __future__ import annotations

import pytest

import taskq


def test_the_public_names_come_from_taskq() -> None:
    from taskq.enqueue import insert_tasks
    from taskq.registry import SoftTimeLimitExceeded, TaskCancelled, TaskContext, register

    assert taskq.register is register and taskq.TaskContext is TaskContext
    assert taskq.SoftTimeLimitExceeded is SoftTimeLimitExceeded
    assert taskq.TaskCancelled is TaskCancelled and taskq.insert_tasks is insert_tasks
    assert set(taskq.__all__) == set(taskq.PUBLIC)
    with pytest.raises(AttributeError):
        _ = taskq.no_such_name


def test_the_old_paths_are_aliases() -> None:
    import worker.builtins
    import worker.registry

    assert worker.registry.register is taskq.register
    assert worker.registry.TaskContext is taskq.TaskContext
    assert worker.registry.SoftTimeLimitExceeded is taskq.SoftTimeLimitExceeded
    assert worker.builtins.echo is taskq.get_task_type("echo").func


def test_the_system_types_are_declared_by_the_core_and_implemented_by_the_worker() -> None:
    from taskq.registry import task_types

    declared = task_types()
    assert declared["deliver_webhook"].internal and declared["cleanup_old_tasks"].internal
    from worker.registry import load_task_modules
    from worker.webhooks import deliver_webhook

    bound = load_task_modules()
    assert bound["deliver_webhook"].func is deliver_webhook and bound["deliver_webhook"].implemented
