"""The runner's interrupts, in a process of their own (signals belong to its main thread)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.worker_helpers import ROOT

CANCEL_A_SLEEPING_TASK = textwrap.dedent("""
    import threading, time
    from worker.completer import Completer
    from worker.config import WorkerConfig
    from worker.exchange import Claim
    from worker.registry import load_task_modules
    from worker.runner import SLOT_SIZE, Runner

    load_task_modules()
    completer = Completer(10, 50.0, exchange=None)
    config = WorkerConfig(database_url="postgresql:///unused", cancel_grace=5)
    runner = Runner(config, "w", [0] * SLOT_SIZE, completer)
    row = Claim(1, 7, "sleep", '{"duration": 20}', "default", 1, None, 0.0, 1)

    def cancel_once_running():  # the listener thread's part
        while runner.running is None:
            time.sleep(0.01)
        runner.cancel(1)

    threading.Thread(target=cancel_once_running, daemon=True).start()
    runner.start()
    runner.run(row)
    runner.stop()
    print(len(completer.pending), runner.running)
""")


def test_a_cancel_from_the_listener_thread_interrupts_the_sleeping_task() -> None:
    # The interrupt must reach the main thread: sent to the whole process, it could be
    # taken by the sending thread (it starts the grace timer's thread right after), and
    # the task slept on until the grace timer (5 s, of a 20 s sleep) killed the process.
    done = subprocess.run([sys.executable, "-c", CANCEL_A_SLEEPING_TASK], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "None"]  # cancelled: nothing to write, nothing running


RUN_A_POSITIONAL_TASK = textwrap.dedent("""
    import json
    from worker.completer import Completer
    from worker.config import WorkerConfig
    from worker.exchange import Claim
    from worker.registry import load_task_modules
    from worker.runner import SLOT_SIZE, Runner

    load_task_modules(["tests.worker_tasks"])
    completer = Completer(10, 50.0, exchange=None)
    runner = Runner(WorkerConfig(database_url="postgresql:///unused"), "w", [0] * SLOT_SIZE,
                    completer)
    for task_id, payload in ((1, '{"args": [10, 20], "kwargs": {"scale": 2}}'),
                             (2, '{"args": [10]}'), (3, '{"args": 5}')):
        runner.start()
        runner.run(Claim(task_id, 7, "add_numbers", payload, "default", 1, None, 0.0, 1))
        runner.stop()
    p = completer.pending
    print(json.dumps([p.done_ids, p.done_results, p.failed_ids, p.failed_errors]))
""")


def test_a_positional_task_is_called_with_its_args_and_kwargs() -> None:
    done = subprocess.run([sys.executable, "-c", RUN_A_POSITIONAL_TASK], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done_ids, results, failed_ids, errors = json.loads(done.stdout)
    assert (done_ids, results, failed_ids) == ([1], ["60"], [2, 3])  # (10 + 20) * 2
    assert "missing 1 required positional argument" in errors[0]  # a wrong call fails the task
    assert "invalid payload" in errors[1] and "args" in errors[1]  # args must be a list
