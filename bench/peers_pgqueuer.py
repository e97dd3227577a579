"""PgQueuer 1.x through its public API: ``Queries.enqueue`` and ``PgQueuer.run``.

Fastest documented settings, as in PgQueuer's own ``tools/benchmark.py``: the
asyncpg driver, an async entrypoint, and ``batch_size=100`` dequeues.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from bench.system import (
    AsyncClient,
    Client,
    System,
    announce_ready,
    async_client,
    peer_worker_commands,
)

BATCH_SIZE = 100
ENTRYPOINT = "noop"


async def connect_queries(url: str):
    """PgQueuer ``Queries`` over one asyncpg connection."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    return Queries(AsyncpgDriver(await asyncpg.connect(dsn=url)))


class PgQueuerClient(AsyncClient):
    """Enqueues through ``Queries.enqueue`` (scalar: one job; lists: one batch)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.queries = None

    async def open(self) -> None:
        """Connect (outside the timings)."""
        self.queries = await connect_queries(self.url)

    async def enqueue_one(self, key: str) -> None:
        """One job, one statement."""
        await self.queries.enqueue(ENTRYPOINT, key.encode(), 0)

    async def enqueue_many(self, keys: Sequence[str]) -> None:
        """A batch in one statement."""
        n = len(keys)
        await self.queries.enqueue([ENTRYPOINT] * n, [k.encode() for k in keys], [0] * n)


class PgQueuerSystem(System):
    """PgQueuer: jobs leave the ``pgqueuer`` table when they are done."""

    name = "pgqueuer"
    unfinished_sql = "SELECT count(*) FROM (SELECT 1 FROM pgqueuer LIMIT 1) s"

    def install(self, url: str) -> None:
        """``Queries.install()``: tables, triggers, functions."""

        async def run() -> None:
            queries = await connect_queries(url)
            await queries.install()

        asyncio.run(run())

    def client(self, url: str) -> AbstractContextManager[Client]:
        """A connected PgQueuer client."""
        client = PgQueuerClient(url)
        return async_client(client, client.open)

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """``procs`` separate processes, one PgQueuer each."""
        return peer_worker_commands(__name__, url, procs, record)


async def serve(url: str, started: dict[str, float], stop: asyncio.Event) -> None:
    """Run one PgQueuer consumer until ``stop``."""
    from pgqueuer import PgQueuer

    pgq = PgQueuer((await connect_queries(url)).driver)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job) -> None:
        started[job.payload.decode()] = time.time()

    async def stopper() -> None:
        await stop.wait()
        pgq.shutdown.set()

    asyncio.get_running_loop().call_later(0.2, announce_ready)
    stopping = asyncio.create_task(stopper())
    await pgq.run(batch_size=BATCH_SIZE)
    await stopping
