"""The benchmark's own taskq task type, loaded by workers through ``TASKQ_IMPORTS``.

``bench_stamp`` is a no-op that notes when it started, so taskq's pickup
latency is measured at the same point as the peers' (the job function's
first line), not at a database timestamp.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

from taskq import TaskContext, register

_stamps = None


@register("bench_stamp", description="Benchmark no-op: notes its start time (bench/ only).")
def bench_stamp(payload: Any, ctx: TaskContext) -> None:
    """Append ``key start_time`` to the file ``BENCH_STAMP_FILE`` names (per process)."""
    global _stamps
    if _stamps is None:
        # Block-buffered, written out as the child exits (the supervisor stops it with
        # SIGTERM and it leaves through sys.exit): as the peers' workers keep their start
        # times in memory until they exit. Line-buffered, one write(2) per task was a
        # ≈ 15 % of a drain's child CPU (py-spy) that no peer paid.
        path = f"{os.environ['BENCH_STAMP_FILE']}.{os.getpid()}"
        _stamps = open(path, "a", buffering=1 << 20)  # noqa: SIM115 - open for the process's life
        atexit.register(_stamps.close)
    _stamps.write(f"{payload['key']} {time.time()}\n")
