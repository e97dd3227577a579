"""The runner's interrupts, in a process of their own (signals belong to its main thread)."""

from __future__ import annotations

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
