"""The layers: ``app`` and ``worker`` stand on the core ``taskq`` and never on each other.

Each module is imported in a fresh interpreter and ``sys.modules`` inspected,
so one module's imports cannot hide behind another's.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The composition root: the launchers may import every layer.
LAUNCHERS = {"taskq.cli", "taskq.serve", "taskq.up", "taskq.embedded", "taskq.migrate"}


def modules_of(package: str) -> list[str]:
    """Every module of ``package`` (the package itself included), by name."""
    path = ROOT / package
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def imported_by(module: str, then: str = "") -> set[str]:
    """The top-level packages a fresh interpreter holds after ``import module`` (and ``then``)."""
    code = f"import json, sys, {module}\n{then}\nprint(json.dumps(sorted(sys.modules)))"
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {name.split(".")[0] for name in json.loads(found.stdout.splitlines()[-1])}


def layer_cases() -> list[tuple[str, set[str]]]:
    cases = [(m, {"worker"}) for m in modules_of("app")]
    cases += [(m, {"app", "flask"}) for m in modules_of("worker")]
    cases += [(m, {"app", "worker", "flask"}) for m in modules_of("taskq") if m not in LAUNCHERS]
    return cases


@pytest.mark.parametrize(("module", "forbidden"), layer_cases(), ids=lambda v: str(v))
def test_a_layer_imports_no_layer_beside_or_above_it(module: str, forbidden: set[str]) -> None:
    assert imported_by(module) & forbidden == set()


def test_every_layer_is_checked() -> None:
    checked = {module for module, _ in layer_cases()}
    assert {"app.schemas", "app.tasks", "app.metrics", "worker.runner", "taskq.registry",
            "taskq.builtins", "taskq.enqueue", "taskq.models"} <= checked  # fmt: skip


# What the API does with the registry at run time (the imports inside functions).
SERVE_A_REQUEST = """
import inspect
from app import create_app
from app.schemas import TaskCreateSchema
app = create_app({"TASKQ_ENV": "test", "DATABASE_URL": None, "REDIS_URL": None})
with app.test_request_context():
    TaskCreateSchema().load({"title": "t", "task_type": "compute",
                             "payload": {"operation": "sum", "numbers": [1]}})
    inspect.unwrap(app.view_functions["tasks.task_types"])()
"""

# What a worker process does at start-up: its config (the registry, the periodic schedules).
START_A_WORKER = """
from worker.config import load_config
from worker.registry import load_task_modules
load_config(database_url="postgresql://nobody@127.0.0.1:1/none")
load_task_modules()
"""


def test_the_api_at_work_never_imports_the_worker() -> None:
    assert imported_by("app", SERVE_A_REQUEST) & {"worker"} == set()


def test_the_worker_at_start_up_never_imports_the_api_or_flask() -> None:
    assert imported_by("worker", START_A_WORKER) & {"app", "flask"} == set()
