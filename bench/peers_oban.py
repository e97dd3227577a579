"""oban-py (the Oban team's Python port) through its public API, in its own Python >= 3.12 venv.

Enqueue is ``Oban.enqueue(Worker.new(args))`` per job and ``Oban.enqueue_many``
per batch (one transaction; oban-py inserts row by row, bulk inserts are an
Oban Pro feature). Workers are ``Oban(pool, queues={QUEUE: {"limit": LIMIT}})``,
embedded as its docs show, with what its own ``oban start`` CLI sets up for
speed: uvloop and orjson for psycopg's JSON. Fastest documented settings:

- an ``async def process`` worker: it runs on the event loop, no thread hop;
- ``limit`` (jobs run at once, and the most one fetch claims) ``LIMIT`` = 100:
  a drain at 10 (the docs' example) ran at half the rate of 100 or 200 in a
  trial on the shared 2-core machine, and 100 and 200 were within its noise
  (``BENCH_OBAN_LIMIT`` overrides it; worth a retune on a quiet machine);
- the producer's ``debounce_interval`` left at its 5 ms default (the docs' only
  example raises it to 50 ms; lower refetches more often per completion);
- insert notifications (the default): a job is fetched when its NOTIFY
  arrives, the 1 s stager poll is the backstop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from bench.isolated import IsolatedSystem
from bench.system import AsyncClient, Client, announce_ready, async_client

QUEUE = "bench"
LIMIT = int(os.environ.get("BENCH_OBAN_LIMIT", "100"))
STARTED: dict[str, float] = {}
_worker_class = None


def loop_factory():
    """uvloop's event loop, as ``oban start`` runs."""
    import uvloop

    return uvloop.new_event_loop()


def use_orjson() -> None:
    """psycopg's JSON through orjson, as ``oban start`` sets it."""
    import orjson
    from psycopg.types.json import set_json_dumps, set_json_loads

    set_json_dumps(orjson.dumps)
    set_json_loads(orjson.loads)


def stamp_worker():
    """The ``Stamp`` worker: an async no-op that notes its start in ``STARTED``."""
    global _worker_class
    if _worker_class is None:
        from oban import worker

        class Stamp:
            async def process(self, job) -> None:
                STARTED[job.args["key"]] = time.time()

        Stamp.__qualname__ = "Stamp"  # resolvable as bench.peers_oban.Stamp
        _worker_class = worker(queue=QUEUE)(Stamp)
    return _worker_class


async def open_pool(url: str, max_size: int = 10):
    """An open psycopg pool (Oban.create_pool; 10 is its default maximum)."""
    from oban import Oban

    return await Oban.create_pool(url, min_size=1, max_size=max_size)


class ObanClient(AsyncClient):
    """Enqueues with ``Oban.enqueue`` and ``Oban.enqueue_many`` (client mode: no queues)."""

    loop_factory = staticmethod(loop_factory)

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.pool = self.oban = None

    async def open(self) -> None:
        """Open the pool (outside the timings)."""
        from oban import Oban

        use_orjson()
        self.pool = await open_pool(self.url, max_size=1)
        self.oban = Oban(pool=self.pool)
        self.worker = stamp_worker()

    async def enqueue_one(self, key: str) -> None:
        """One job, one transaction."""
        await self.oban.enqueue(self.worker.new({"key": key}))

    async def enqueue_many(self, keys: Sequence[str]) -> None:
        """A batch in one transaction."""
        await self.oban.enqueue_many([self.worker.new({"key": k}) for k in keys])

    def close(self) -> None:
        """Close the pool, then the loop."""
        if self.pool is not None:
            self.runner.run(self.pool.close())
        super().close()


class ObanSystem(IsolatedSystem):
    """oban-py: finished jobs stay in ``oban_jobs`` as ``completed``."""

    name = "oban"
    requirement = "oban==0.7.0"
    min_python = (3, 12)
    unfinished_sql = (
        "SELECT count(*) FROM (SELECT 1 FROM oban_jobs"
        " WHERE state IN ('available', 'scheduled', 'executing', 'retryable') LIMIT 1) s"
    )

    def local_install(self, url: str) -> None:
        """``oban.schema.install`` (what ``oban install`` runs)."""
        from oban.schema import install

        async def run() -> None:
            pool = await open_pool(url, max_size=1)
            try:
                await install(pool)
            finally:
                await pool.close()

        asyncio.run(run())

    @contextmanager
    def local_client(self, url: str) -> Iterator[Client]:
        """A connected oban-py client."""
        client = ObanClient(url)
        with async_client(client, client.open) as opened:
            yield opened


def __getattr__(name: str):
    # Oban resolves a job's worker by its dotted name: bench.peers_oban.Stamp.
    if name == "Stamp":
        return stamp_worker()
    raise AttributeError(name)


async def serve(url: str, started: dict[str, float], stop: asyncio.Event) -> None:
    """Run one embedded Oban with the bench queue until ``stop``."""
    from oban import Oban

    global STARTED
    STARTED = started
    use_orjson()
    stamp_worker()
    pool = await open_pool(url)
    try:
        async with Oban(pool=pool, queues={QUEUE: {"limit": LIMIT}}):
            asyncio.get_running_loop().call_later(0.2, announce_ready)
            await stop.wait()
    finally:
        await pool.close()
