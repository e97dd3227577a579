"""taskq in production topologies: the figures of the README's deploy guide.

Three variants of ``taskq`` run the shared workloads (enqueue, drain with one
worker host of 1 and 2 children, pickup), only when named with ``--system``:

- ``taskq_direct``: straight to Postgres, prepared statements on (the default);
- ``taskq_unprepared``: straight to Postgres, ``TASKQ_DATABASE_POOLED=1``, so
  the difference to ``taskq_direct`` is the cost of no prepared statements;
- ``taskq_pgbouncer``: workers and clients through a transaction-mode PgBouncer
  (pool of ``POOL``), LISTEN and the leader lock direct.

Each adds the connections one worker host of 2 children holds while it
drains (peaks sampled from ``pg_stat_activity`` every 20 ms, and from
PgBouncer's ``SHOW CLIENTS``): direct sessions, pooled server connections,
and, behind PgBouncer, pooled clients.

    taskq bench --quick --system taskq_direct --system taskq_unprepared --system taskq_pgbouncer

On a busy machine the variants' figures drift with the load between them;
``python -m bench.taskq_topology URL`` runs their drains in turn instead
(``--rounds`` of each), so a drift hits all three alike.
"""

from __future__ import annotations

import atexit
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.pgbouncer import pooled_url, running_pgbouncer, show
from bench.system import Client
from bench.taskq_system import TaskqClient, TaskqSystem
from taskq.connections import DIRECT_ROLES, POOLED_ROLES, role_of

POOL = 6  # PgBouncer's server connections per database
HOST_CHILDREN = 2  # the worker host whose connections are counted


class TaskqDirectSystem(TaskqSystem):
    """taskq straight to Postgres, with the connection figures of one worker host."""

    name = "taskq_direct"
    on_request = True  # only when named: ``taskq bench --system taskq_direct``
    pooled = False

    def worker_env(self, url: str, record: Path) -> dict[str, str]:
        """The worker's environment; TASKQ_DATABASE_POOLED says whether statements are prepared."""
        return {**super().worker_env(url, record), "TASKQ_DATABASE_POOLED": str(int(self.pooled))}

    def extra_metrics(
        self, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
    ) -> list[tuple[str, float, str]]:
        """The connections of one worker host of HOST_CHILDREN children while it drains."""
        return host_connections(self, fresh, sizes)

    def pgbouncer_port(self, url: str) -> int | None:
        """The PgBouncer the workers go through (None: none)."""
        return None


class TaskqUnpreparedSystem(TaskqDirectSystem):
    """taskq straight to Postgres without prepared statements (as when pooled)."""

    name = "taskq_unprepared"
    pooled = True


class TaskqPgbouncerSystem(TaskqDirectSystem):
    """taskq through a transaction-mode PgBouncer; LISTEN and the leader lock direct."""

    name = "taskq_pgbouncer"
    pooled = True

    def __init__(self) -> None:
        self.port: int | None = None

    def pgbouncer_port(self, url: str) -> int:
        """The bench's PgBouncer, started on first use in front of ``url``'s server."""
        if self.port is None:
            stack = ExitStack()
            self.port = stack.enter_context(running_pgbouncer(url, pool_size=POOL))
            atexit.register(stack.close)
        return self.port

    def worker_env(self, url: str, record: Path) -> dict[str, str]:
        """DATABASE_URL through PgBouncer; TASKQ_LISTEN_DATABASE_URL straight to Postgres."""
        return {
            **super().worker_env(url, record),
            "DATABASE_URL": pooled_url(url, self.pgbouncer_port(url)),
            "TASKQ_LISTEN_DATABASE_URL": url,
        }

    @contextmanager
    def client(self, url: str) -> Iterator[Client]:
        """The API's insert queries through PgBouncer, without prepared statements."""
        client = TaskqClient(pooled_url(url, self.pgbouncer_port(url)))
        client.conn.prepare_threshold = None
        try:
            yield client
        finally:
            client.conn.close()


class ConnectionSampler:
    """Peak backends of one database per role, and PgBouncer's clients, every 20 ms."""

    def __init__(self, url: str, pgbouncer_port: int | None) -> None:
        self.url = url
        self.dbname = url.rsplit("/", 1)[1].partition("?")[0]
        self.port = pgbouncer_port
        self.backends: Counter[str] = Counter()  # peak per role
        self.direct = self.pooled = self.clients = 0  # peaks of the sums
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        """Sample until ``stop`` (the thread's body)."""
        with psycopg.connect(self.url, autocommit=True, application_name="bench-sampler") as conn:
            while not self.stop.wait(0.02):
                rows = conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = %s",
                    [self.dbname],
                ).fetchall()
                roles = Counter(role_of(name) for (name,) in rows)
                self.backends |= roles
                self.direct = max(self.direct, sum(roles[r] for r in DIRECT_ROLES))
                pooled = sum(roles[r] for r in POOLED_ROLES)
                if self.port is not None:  # behind PgBouncer, names are the last client's
                    pooled = len(self.ours("SERVERS"))
                    self.clients = max(self.clients, len(self.ours("CLIENTS")))
                self.pooled = max(self.pooled, pooled)

    def ours(self, what: str) -> list[dict]:
        """PgBouncer's ``SHOW what`` rows of this database."""
        return [row for row in show(self.port, what) if row["database"] == self.dbname]


def host_connections(
    system: TaskqDirectSystem, fresh: Callable[[], AbstractContextManager[str]], sizes: Any
) -> list[tuple[str, float, str]]:
    """Drain ``sizes.drain_n`` with one host of HOST_CHILDREN children, sampling its connections."""
    from bench.harness import keys, running_workers, unfinished, wait_until_done

    with fresh() as db:
        port = system.pgbouncer_port(db)
        count = unfinished(system, db)
        sampler = ConnectionSampler(db, port)
        try:
            with (
                running_workers(system, db, HOST_CHILDREN, sizes.settle),
                system.client(db) as client,
            ):
                sampler.thread.start()
                client.enqueue_batch(keys("h", sizes.drain_n), 1000)
                wait_until_done(count, 600)
        finally:
            sampler.stop.set()
            sampler.thread.join(5)
            count.close()
    figures = [
        ("host_direct_connections", float(sampler.direct), "conns"),
        ("host_pooled_server_connections", float(sampler.pooled), "conns"),
    ]
    if port is not None:
        figures.append(("host_pooled_clients", float(sampler.clients), "conns"))
    return figures


def alternate_drains(url: str, rounds: int, drain_n: int, children: int) -> dict[str, list[float]]:
    """Drains of the three variants in turn, ``rounds`` times: load drifts hit each alike."""
    from dataclasses import replace

    from bench.harness import QUICK, fresh_database, measure_drain, system_template

    sizes = replace(QUICK, drain_n=drain_n)
    systems = [TaskqDirectSystem(), TaskqUnpreparedSystem(), TaskqPgbouncerSystem()]
    runs: dict[str, list[float]] = {s.name: [] for s in systems}
    with system_template(url, systems[0]) as template:
        for _ in range(rounds):
            for system in systems:
                with fresh_database(url, template) as db:
                    runs[system.name].append(measure_drain(system, db, sizes, children))
    return runs


def main() -> None:
    """``python -m bench.taskq_topology URL``: alternating drains, median per variant."""
    import argparse
    import statistics

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url", help="the server (like taskq bench --database-url)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--children", type=int, default=2)
    args = parser.parse_args()
    runs = alternate_drains(args.url, args.rounds, args.drain, args.children)
    base = statistics.median(runs["taskq_direct"])
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name}: drain {median:,.0f} jobs/s [{min(values):,.0f}-{max(values):,.0f}] "
              f"({median / base:.2f}x direct), runs {[round(v) for v in values]}")  # fmt: skip


if __name__ == "__main__":
    main()
