"""procrastinate 3.x through its public API: ``defer_async``, ``batch_defer_async``, workers.

Fastest documented settings: an async task, the psycopg connector, and a
worker ``concurrency`` above 1 (procrastinate fetches one job per free slot;
``CONCURRENCY`` 4 was the best of 1, 4, 8, 16 and 32 on the 2-core bench machine).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path

from bench.system import (
    AsyncClient,
    Client,
    System,
    announce_ready,
    async_client,
    peer_worker_commands,
)

CONCURRENCY = int(os.environ.get("BENCH_PROCRASTINATE_CONCURRENCY", "4"))


def make_app(url: str, started: dict[str, float]):
    """A procrastinate App with one async no-op task that records its start."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(key: str) -> None:
        started[key] = time.time()

    return app, noop


class ProcrastinateClient(AsyncClient):
    """Defers through the task object: ``defer_async`` and ``batch_defer_async``."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.app, self.task = make_app(url, {})

    async def open(self) -> None:
        """Open the app's connection pool (outside the timings)."""
        await self.app.open_async()

    async def enqueue_one(self, key: str) -> None:
        """One job, one transaction."""
        await self.task.defer_async(key=key)

    async def enqueue_many(self, keys: Sequence[str]) -> None:
        """A batch in one call."""
        await self.task.batch_defer_async(*({"key": k} for k in keys))

    def close(self) -> None:
        """Close the pool, then the loop."""
        self.runner.run(self.app.close_async())
        super().close()


class ProcrastinateSystem(System):
    """procrastinate: finished jobs stay in ``procrastinate_jobs`` as ``succeeded``."""

    name = "procrastinate"
    unfinished_sql = (
        "SELECT count(*) FROM (SELECT 1 FROM procrastinate_jobs"
        " WHERE status IN ('todo', 'doing') LIMIT 1) s"
    )

    def install(self, url: str) -> None:
        """``schema_manager.apply_schema_async()``."""

        async def run() -> None:
            app, _ = make_app(url, {})
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(run())

    def client(self, url: str) -> AbstractContextManager[Client]:
        """A connected procrastinate client."""
        client = ProcrastinateClient(url)
        return async_client(client, client.open)

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """``procs`` separate worker processes."""
        return peer_worker_commands(__name__, url, procs, record)


async def serve(url: str, started: dict[str, float], stop: asyncio.Event) -> None:
    """Run one procrastinate worker until ``stop``."""
    app, _ = make_app(url, started)
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=CONCURRENCY, listen_notify=True, install_signal_handlers=False
            )
        )
        asyncio.get_running_loop().call_later(0.2, announce_ready)
        await stop.wait()
        worker.cancel()
        with suppress(asyncio.CancelledError):
            await worker
