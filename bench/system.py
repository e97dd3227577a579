"""What a benchmarked system provides: small adapters the shared workload driver calls.

A system installs its schema in a database, gives a client that enqueues no-op
jobs through the system's public API, names the command of one worker process,
and says how to count unfinished jobs and when each job started. The workloads
themselves (timing, repeats, percentiles) live in ``bench.harness`` only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol


class Client(Protocol):
    """Enqueues no-op jobs; each job carries a string key so its start can be found."""

    def enqueue_single(self, keys: Sequence[str]) -> None:
        """One job per call (one INSERT and one commit each)."""

    def enqueue_batch(self, keys: Sequence[str], batch: int) -> None:
        """Jobs in batches of ``batch`` per call (one transaction each)."""

    def enqueue_paced(self, keys: Sequence[str], gap: float) -> list[float]:
        """One job per call, ``gap`` seconds apart; the wall-clock time of each commit."""


class SystemUnavailable(RuntimeError):
    """A system that cannot run here (no interpreter for it, its pin does not install)."""


class System:
    """Base of the adapters; subclasses fill in the blanks."""

    name = "system"
    on_request = False  # True: benchmarked only when named (``taskq bench --system NAME``)
    # How many concurrent jobs one worker process runs (the system's fastest setting).
    unfinished_sql = ""

    def prepare(self) -> None:
        """Get ready to run, once per bench run (raise SystemUnavailable to be skipped)."""

    def install(self, url: str) -> None:
        """Create the system's schema in the (empty) database ``url``."""
        raise NotImplementedError

    def client(self, url: str) -> AbstractContextManager[Client]:
        """A connected client; connecting is not part of any timing."""
        raise NotImplementedError

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """Commands that together run ``procs`` worker processes on ``url``.

        Each process writes ``{key: start_time}`` of the jobs it ran to a file
        whose name starts with ``record`` when it stops.
        """
        raise NotImplementedError

    def worker_env(self, url: str, record: Path) -> dict[str, str]:
        """Extra environment of the worker processes."""
        return {}

    def wait_ready(self, url: str, procs: int, lines: Callable[[], int], timeout: float) -> None:
        """Block until the workers listen; default: each printed ``ready``."""
        deadline = time.monotonic() + timeout
        while lines() < procs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: workers not ready after {timeout} s")
            time.sleep(0.02)

    def start_times(self, url: str, record: Path) -> dict[str, float]:
        """Wall-clock start time of each job, by key (default: the workers' record files)."""
        return read_records(record)

    def extra_metrics(
        self, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
    ) -> list[tuple[str, float, str]]:
        """System-only figures (HTTP, SSE, RSS, ceiling) as (metric, value, unit).

        ``fresh()`` gives a new database with the system's schema (its URL).
        """
        return []


def read_records(record: Path) -> dict[str, float]:
    """Merge the ``{key: start_time}`` files the worker processes wrote."""
    merged: dict[str, float] = {}
    for path in sorted(record.parent.glob(record.name + "*")):
        merged.update(json.loads(path.read_text()))
    return merged


class AsyncClient:
    """A sync face over an asyncio peer client; whole loops run inside one coroutine.

    Running the loop inside the event loop (not one ``run()`` per job) keeps
    the harness's own overhead out of the peer's figures.
    """

    # The event loop a peer documents as its fastest (oban-py's CLI runs uvloop); None: asyncio's.
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None

    def __init__(self) -> None:
        self.runner = asyncio.Runner(loop_factory=self.loop_factory)

    async def enqueue_one(self, key: str) -> None:
        """Enqueue one job (one commit)."""
        raise NotImplementedError

    async def enqueue_many(self, keys: Sequence[str]) -> None:
        """Enqueue ``keys`` in one call (one transaction)."""
        raise NotImplementedError

    def enqueue_single(self, keys: Sequence[str]) -> None:
        """One job per call."""

        async def loop() -> None:
            for key in keys:
                await self.enqueue_one(key)

        self.runner.run(loop())

    def enqueue_batch(self, keys: Sequence[str], batch: int) -> None:
        """Jobs ``batch`` per call."""

        async def loop() -> None:
            for start in range(0, len(keys), batch):
                await self.enqueue_many(keys[start : start + batch])

        self.runner.run(loop())

    def enqueue_paced(self, keys: Sequence[str], gap: float) -> list[float]:
        """One job per call, ``gap`` seconds apart; commit times."""

        async def loop() -> list[float]:
            committed = []
            for key in keys:
                await self.enqueue_one(key)
                committed.append(time.time())
                await asyncio.sleep(gap)
            return committed

        return self.runner.run(loop())

    def close(self) -> None:
        """Close the event loop."""
        self.runner.close()


@contextmanager
def async_client(client: AsyncClient, opened: Callable[[], Awaitable[None]]) -> Iterator[Client]:
    """Open ``client`` (``opened`` runs in its loop), yield it, close it."""
    try:
        client.runner.run(opened())
        yield client
    finally:
        client.close()


Serve = Callable[[dict[str, float], asyncio.Event], Awaitable]


def serve_worker(
    record: str,
    serve: Serve,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Main of a peer worker process: serve until SIGTERM, then write the start record.

    ``serve(started, stop)`` runs the peer's worker, stores ``key → time.time()``
    in ``started`` when a job starts, prints ``ready`` once listening, and
    returns soon after ``stop`` is set. ``loop_factory`` picks the event loop.
    """
    started: dict[str, float] = {}

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(started, stop)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    Path(record).write_text(json.dumps(started))


def peer_worker_commands(module: str, url: str, procs: int, record: Path) -> list[list[str]]:
    """``procs`` separate worker processes running ``module.serve``."""
    return [
        [sys.executable, "-m", "bench.peer_worker", module, url, f"{record}.{i}"]
        for i in range(procs)
    ]


def announce_ready() -> None:
    """Tell the harness this worker process is listening."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
