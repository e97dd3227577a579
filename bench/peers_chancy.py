"""chancy through its public API (``Chancy.push``, ``push_many``, ``Worker``), in its own venv.

chancy runs on the harness's Python too, but its pin wants a newer psycopg
than taskq's, so it gets its own venv like oban-py. Fastest documented
settings, all on the one bench queue (declared at install, so stored in the
template every figure's database is cloned from):

- ``executor=Chancy.Executor.Async`` with an ``async def`` job: the docs'
  choice for many small IO-bound jobs (the default process pool pays a
  process hop per job);
- ``concurrency`` ``CONCURRENCY`` = 100: the AsyncExecutor's own default;
  10, 100 and 200 were within the noise of a trial on the shared 2-core
  machine (``BENCH_CHANCY_CONCURRENCY`` overrides it);
- ``eager_polling=True``: refetch as soon as a job completes (the docs'
  setting "where jobs are expected to be continuously available");
- notifications on (the default): a push wakes the queue at once;
  ``polling_interval`` 1 s is only the backstop;
- the worker's ``send_outgoing_interval`` (how often finished jobs are written
  back, batched; the docs say to set this attribute to tune it) at 0.05 s
  instead of 1 s: a drain ends when the last result is written;
- the application's logger at WARNING: at INFO it logs a line per job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from bench.isolated import IsolatedSystem
from bench.system import AsyncClient, Client, announce_ready, async_client

QUEUE = "bench"
CONCURRENCY = int(os.environ.get("BENCH_CHANCY_CONCURRENCY", "100"))
OUTGOING_INTERVAL = 0.05
STARTED: dict[str, float] = {}


async def stamp(key: str) -> None:
    """The bench job: an async no-op that notes its start."""
    STARTED[key] = time.time()


def make_app(url: str):
    """A Chancy application whose logger only speaks up for warnings."""
    from chancy import Chancy

    log = logging.getLogger("bench.chancy")
    log.setLevel(logging.WARNING)
    return Chancy(url, log=log)


def bench_job(key: str):
    """The ``stamp`` job for ``key`` on the bench queue."""
    from chancy import Job

    return Job.from_func(stamp, kwargs={"key": key}, queue=QUEUE)


class ChancyClient(AsyncClient):
    """Pushes with ``Chancy.push`` and ``Chancy.push_many``."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.app = make_app(url)

    async def open(self) -> None:
        """Open the pool (outside the timings)."""
        await self.app.__aenter__()

    async def enqueue_one(self, key: str) -> None:
        """One job, one transaction."""
        await self.app.push(bench_job(key))

    async def enqueue_many(self, keys: Sequence[str]) -> None:
        """A batch in one transaction."""
        jobs = [bench_job(k) for k in keys]
        async for _ in self.app.push_many(jobs, batch_size=len(jobs)):
            pass

    def close(self) -> None:
        """Close the pool, then the loop."""
        self.runner.run(self.app.__aexit__(None, None, None))
        super().close()


class ChancySystem(IsolatedSystem):
    """chancy: finished jobs stay in ``chancy_jobs`` as ``succeeded``."""

    name = "chancy"
    requirement = "chancy==0.26.0"
    min_python = (3, 11)
    unfinished_sql = (
        "SELECT count(*) FROM (SELECT 1 FROM chancy_jobs"
        " WHERE state IN ('pending', 'running', 'retrying') LIMIT 1) s"
    )

    def local_install(self, url: str) -> None:
        """``Chancy.migrate()`` and the bench queue's declaration."""
        from chancy import Chancy, Queue

        async def run() -> None:
            async with make_app(url) as app:
                await app.migrate()
                queue = Queue(
                    name=QUEUE,
                    concurrency=CONCURRENCY,
                    executor=Chancy.Executor.Async,
                    eager_polling=True,
                    polling_interval=1,
                )
                await app.declare(queue, upsert=True)

        asyncio.run(run())

    @contextmanager
    def local_client(self, url: str) -> Iterator[Client]:
        """A connected chancy client."""
        client = ChancyClient(url)
        with async_client(client, client.open) as opened:
            yield opened


async def serve(url: str, started: dict[str, float], stop: asyncio.Event) -> None:
    """Run one chancy Worker until ``stop``."""
    from chancy import Worker

    global STARTED
    STARTED = started
    async with make_app(url) as app:
        worker = Worker(app, register_signal_handlers=False)
        worker.send_outgoing_interval = OUTGOING_INTERVAL
        await worker.start()
        asyncio.get_running_loop().call_later(0.2, announce_ready)
        await stop.wait()
        await worker.stop()
