"""Production topology: behind a transaction-mode PgBouncer, and worker groups on many hosts.

Real parts only: Debian's pgbouncer (pool of 6), ``taskq api`` under gunicorn,
``taskq worker`` processes, SSE over HTTP, a webhook receiver. A sampler reads
``pg_stat_activity`` (and PgBouncer's ``SHOW CLIENTS``) all along, so the
connection budget of ``taskq.connections.budget`` is held at every moment,
not just at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg.rows import dict_row

from bench.pgbouncer import pooled_url, show
from bench.sse_latency import local_token_factory
from taskq.connections import (
    DIRECT_ROLES,
    LEADER,
    POOLED_ROLES,
    budget,
    direct_total,
    role_of,
)
from tests.helpers import (
    API,
    PGBOUNCER_POOL,
    Receiver,
    api_server,
    insert_tasks,
    status_counts,
    wait_for,
    with_database,
)
from tests.worker_helpers import kill_group, start_worker, stop_worker
from tests.worker_tasks import LEDGER_DDL

pytestmark = pytest.mark.slow

SECRET = "topology-acceptance-secret-0123456789abcdef"
ME = "topology-test"  # this test's own connections, left out of every count
REAPER_INTERVAL = 5.0  # how often a non-leader tries the lock (the default)
IMPORTS = {"TASKQ_IMPORTS": "tests.worker_tasks", "TASKQ_ALLOW_PRIVATE_URLS": "1"}


def direct(database_url: str) -> psycopg.Connection:
    """An autocommit connection of this test, rows as dicts."""
    return psycopg.connect(database_url, autocommit=True, row_factory=dict_row,
                           application_name=ME)  # fmt: skip


class Sampler:
    """Samples the database's backends by role (and PgBouncer's clients) until stopped."""

    def __init__(self, database_url: str, pgbouncer_port: int | None = None) -> None:
        self.dbname = database_url.rsplit("/", 1)[1]
        self.server = direct(with_database(database_url, "postgres"))
        self.pgbouncer_port = pgbouncer_port
        self.peak_total = 0  # backends of the database, any role but this test's
        self.peak: Counter[str] = Counter()  # backends per role
        self.peak_clients: Counter[str] = Counter()  # PgBouncer's clients per role
        self.peak_pooled = 0  # backends of the pooled roles together
        self.most_holders = 0  # the most sessions holding the leader lock in one sample
        self.samples = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def backends(self) -> list[dict]:
        return self.server.execute(
            "SELECT a.application_name AS name, EXISTS (SELECT 1 FROM pg_locks l "
            " WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) AS leads "
            "FROM pg_stat_activity a WHERE a.datname = %s AND a.backend_type = 'client backend' "
            "AND a.application_name <> %s",
            [self.dbname, ME],
        ).fetchall()

    def sample(self) -> None:
        rows = self.backends()
        roles = Counter(role_of(r["name"]) for r in rows)
        self.peak_total = max(self.peak_total, len(rows))
        self.peak_pooled = max(self.peak_pooled, sum(roles[r] for r in POOLED_ROLES))
        self.peak |= roles
        self.most_holders = max(self.most_holders, sum(r["leads"] for r in rows))
        if self.pgbouncer_port is not None:
            clients = show(self.pgbouncer_port, "CLIENTS")
            ours = [c for c in clients if c["database"] == self.dbname]
            self.peak_clients |= Counter(role_of(c["application_name"]) for c in ours)
        self.samples += 1

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            self.sample()

    def leader(self) -> str | None:
        """The application_name of the session holding the leader lock now."""
        return next((r["name"] for r in self.backends() if r["leads"]), None)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.thread.join(10)
            self.server.close()


def run_exactly_once(conn: psycopg.Connection) -> dict[int, int]:
    """{task id: how many runs of it ended} from the ledger."""
    rows = conn.execute(
        "SELECT task_id, count(*) AS n FROM ledger WHERE phase = 'end' GROUP BY 1"
    ).fetchall()
    return {r["task_id"]: r["n"] for r in rows}


def sse_until(url: str, path: str, token: str, done: Callable[[dict], bool]) -> list[dict]:
    """Read the SSE stream at ``path`` until an event's data satisfies ``done``; its data."""
    seen = []
    with requests.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"},
                      stream=True, timeout=(5, 60)) as response:  # fmt: skip
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))
                if done(seen[-1]):
                    break
    return seen


# ---------------------------------------------------------------- behind PgBouncer


@pytest.mark.timeout(900)  # ~1 min alone; a busy machine makes it several
def test_api_workers_sse_and_webhooks_through_a_transaction_pool_of_six(
    pg_server_url: str, template_database: str, pgbouncer_port: int
) -> None:
    api_processes, worker_groups, concurrency, pool_max = 2, 2, 2, 10
    receiver = Receiver([200])
    with api_server(
        pg_server_url, template_database, "taskq_topo", SECRET, api_processes,
        pgbouncer_port=pgbouncer_port, TASKQ_DB_POOL_MAX=str(pool_max),
        TASKQ_DB_POOL_TIMEOUT="60", **IMPORTS,
    ) as (url, database_url), direct(database_url) as conn:  # fmt: skip
        conn.execute(LEDGER_DDL)
        token = local_token_factory(database_url, SECRET, "ann")()
        headers = {"Authorization": f"Bearer {token}"}
        pooled = pooled_url(database_url, pgbouncer_port)
        sampler = Sampler(database_url, pgbouncer_port)
        with sampler.running():
            workers = [
                start_worker(
                    pooled,
                    "--concurrency",
                    str(concurrency),
                    TASKQ_HOSTNAME=f"host-{i}",
                    TASKQ_LISTEN_DATABASE_URL=database_url,
                    TASKQ_LEASE_SECONDS="10",
                    **IMPORTS,
                )
                for i in range(worker_groups)
            ]
            try:
                # A stream follows a task with a webhook to its end.
                hooked = requests.post(f"{url}{API}/tasks", headers=headers, timeout=30, json={
                    "title": "hooked", "task_type": "ledger", "payload": {"sleep": 0.5},
                    "callback_url": receiver.url}).json()["task"]  # fmt: skip
                with ThreadPoolExecutor(1) as pool:
                    stream = pool.submit(sse_until, url, f"{API}/tasks/{hooked['id']}/events",
                                         token, lambda e: e["status"] == "COMPLETED")  # fmt: skip
                    # 2,000 tasks in two batches, and 300 API calls at once.
                    for _ in range(2):
                        batch = [{"title": "b", "task_type": "ledger"}] * 1000
                        response = requests.post(f"{url}{API}/tasks/batch", headers=headers,
                                                 json={"tasks": batch}, timeout=60)  # fmt: skip
                        assert response.status_code == 201, response.text
                    start = threading.Barrier(300)

                    def create(i: int) -> int:
                        start.wait()
                        return requests.post(f"{url}{API}/tasks", headers=headers, timeout=120,
                                             json={"title": f"c{i}", "task_type": "ledger"}
                                             ).status_code  # fmt: skip

                    with ThreadPoolExecutor(300) as calls:
                        codes = Counter(calls.map(create, range(300)))
                    assert codes == {201: 300}
                    streamed = stream.result(timeout=120)
                wait_for(lambda: len(run_exactly_once(conn)) == 2301, 300,
                         "2,301 completions")  # fmt: skip
                wait_for(lambda: receiver.requests, 30, "the webhook")
            finally:
                outcomes = [stop_worker(w) for w in workers]
        assert [code for code, _ in outcomes] == [0] * worker_groups, outcomes
        assert status_counts(conn) == {"COMPLETED": 2302}  # and the webhook's delivery task
        runs = run_exactly_once(conn)
        assert len(runs) == 2301 and set(runs.values()) == {1}
        assert streamed[-1]["status"] == "COMPLETED" and streamed[-1]["id"] == hooked["id"]
        assert json.loads(receiver.requests[0][1])["task"]["id"] == hooked["id"]
    receiver.close()
    allowed = budget(api_processes, pool_max, worker_groups, concurrency)
    assert sampler.samples > 10
    # Postgres never saw more than the pool plus the direct connections.
    assert sampler.peak_pooled <= PGBOUNCER_POOL, sampler.peak
    assert sampler.peak_total <= PGBOUNCER_POOL + direct_total(allowed), sampler.peak
    for role in DIRECT_ROLES:
        assert sampler.peak[role] <= allowed[role], (role, sampler.peak)
    assert sampler.peak[LEADER] == worker_groups  # every supervisor holds (or tries) the lock
    # PgBouncer's clients stay within the budget too, role by role.
    assert sampler.peak_clients, "no pooled client was ever seen"
    for role, count in sampler.peak_clients.items():
        assert role in POOLED_ROLES and count <= allowed[role], (role, sampler.peak_clients)
    assert sampler.most_holders == 1


# ---------------------------------------------------------------- many hosts


@pytest.mark.timeout(600)
def test_three_hosts_the_leaders_group_killed_another_takes_over_without_double_ticks(
    database_url: str,
) -> None:
    hosts, concurrency = ("host-a", "host-b", "host-c"), 2
    every_second = json.dumps([{"name": "beat", "schedule": "* * * * * *", "task_type": "noop"}])
    with direct(database_url) as conn:
        conn.execute(LEDGER_DDL)
        ids = insert_tasks(conn, 150, task_type="ledger", payload={"sleep": 0.2}, retry_delay=0)
        sampler = Sampler(database_url)
        groups = {
            host: start_worker(
                database_url,
                "--concurrency",
                str(concurrency),
                TASKQ_HOSTNAME=host,
                TASKQ_PERIODIC=every_second,
                TASKQ_REAPER_INTERVAL=str(REAPER_INTERVAL),
                **IMPORTS,
            )
            for host in hosts
        }
        with sampler.running():
            try:
                wait_for(lambda: conn.execute("SELECT count(DISTINCT hostname) AS n FROM workers")
                         .fetchone()["n"] == 3, 60, "three hosts' workers")  # fmt: skip
                leader = wait_for(sampler.leader, 30, "a leader")
                ticks_before = wait_for(
                    lambda: (n := tick_count(conn)) >= 2 and n, 30, "two ticks from the leader"
                )
                wait_for(lambda: conn.execute("SELECT 1 FROM ledger").fetchone(), 30, "tasks run")
                steady = Counter(sampler.peak)
                dead_host = leader.partition("@")[2]
                killed_at = conn.execute("SELECT now() AS t").fetchone()["t"]
                kill_group(groups.pop(dead_host))
                killed = time.monotonic()
                successor = wait_for(lambda: (name := sampler.leader()) and name != leader and name,
                                     30, "another group to lead")  # fmt: skip
                takeover = time.monotonic() - killed
                wait_for(
                    lambda: conn.execute(
                        "SELECT 1 FROM periodic_ticks WHERE tick_at > %s + interval '1 s'",
                        [killed_at]).fetchone(), 30, "ticks from the new leader")  # fmt: skip
                wait_for(lambda: len(run_exactly_once(conn)) == len(ids), 120, "every ledger task")
            finally:
                outcomes = [stop_worker(w) for w in groups.values()]
        assert [code for code, _ in outcomes] == [0, 0], outcomes
    with direct(database_url) as conn:
        assert successor.partition("@")[2] in set(hosts) - {dead_host}
        # The dead session frees the lock at once and the others try it every
        # TASKQ_REAPER_INTERVAL: a few seconds, with room for a loaded machine.
        assert takeover < 3 * REAPER_INTERVAL, takeover
        assert tick_count(conn) > ticks_before
        # No tick was enqueued twice, by either leader.
        twice = conn.execute(
            "SELECT metadata->>'tick_at' AS tick, count(*) AS n FROM tasks "
            "WHERE metadata->>'periodic' = 'beat' GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        assert twice == []
        # Only the dead host's leases were reaped; every task has exactly one outcome.
        reaped = conn.execute(
            "SELECT task_id, substring(error FROM 'worker ([^:]*):') AS host "
            "FROM task_history WHERE error LIKE 'lease expired%%'"
        ).fetchall()
        assert {r["host"] for r in reaped} <= {dead_host}
        outcomes = conn.execute(
            "SELECT task_id, count(*) AS n FROM task_history "
            "WHERE to_status = 'COMPLETED' AND task_id = ANY(%s) GROUP BY 1",
            [ids],
        ).fetchall()
        assert {r["task_id"]: r["n"] for r in outcomes} == dict.fromkeys(ids, 1)
        # A run ends twice only where the killed host's run had ended and its outcome
        # died with the host before it committed (at-least-once): its lease was reaped.
        ended_twice = {task for task, n in run_exactly_once(conn).items() if n > 1}
        assert ended_twice <= {r["task_id"] for r in reaped}
        assert status_counts(conn).get("PROCESSING", 0) == 0
    # One lock holder at a time in every sample; the budget of three hosts held by role.
    assert sampler.most_holders == 1
    allowed = budget(0, 0, len(hosts), concurrency)
    for role, count in steady.items():
        assert count <= allowed[role], (role, steady)
    assert steady[LEADER] == len(hosts)


def tick_count(conn: psycopg.Connection) -> int:
    """How many periodic ticks were enqueued."""
    return conn.execute("SELECT count(*) AS n FROM periodic_ticks").fetchone()["n"]


def unshared(command: list[str]) -> list[str]:
    """``command`` in a new pid namespace (its first process is pid 1), as in a container."""
    return ["unshare", "--pid", "--fork", "--mount-proc", *command]


def parent_pid(entry: Path) -> int | None:
    """The parent of the process /proc/``entry`` (None when it is gone or not a process)."""
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    """The host pids of the processes whose parent is ``pid``."""
    entries = (e for e in Path("/proc").iterdir() if e.name.isdigit())
    return [int(e.name) for e in entries if parent_pid(e) == pid]


def worker_children(supervisor: int) -> list[int]:
    """The host pids of a supervisor's worker children (multiprocessing's spawned ones)."""
    return [kid for kid in children_of(supervisor)
            if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes()]  # fmt: skip


@pytest.mark.skipif(
    subprocess.run(unshared(["true"]), capture_output=True).returncode != 0,
    reason="unshare --pid is not permitted here (it needs root or user namespaces)",
)
def test_two_hosts_with_one_name_and_the_same_pids_keep_their_tasks_apart(
    database_url: str,
) -> None:
    """Containers on the host's network share its host name, and each numbers its processes
    from 1: the two groups' children have the same name and pid. Killing one's child must
    settle its task alone, not the other group's, which runs on to one outcome."""
    with direct(database_url) as conn:
        conn.execute(LEDGER_DDL)
        ids = insert_tasks(conn, 2, task_type="ledger", payload={"sleep": 4}, retry_delay=0)
        env = {"TASKQ_HOSTNAME": "twin", "TASKQ_LEASE_SECONDS": "30", **IMPORTS}
        groups = [start_worker(database_url, "--concurrency", "1", wrap=unshared, **env)
                  for _ in range(2)]  # fmt: skip
        try:
            running = "SELECT id, worker_id FROM tasks WHERE status = 'PROCESSING'"
            held = wait_for(lambda: len(rows := conn.execute(running).fetchall()) == 2 and rows,
                            60, "both tasks running")  # fmt: skip
            assert sorted(r["id"] for r in held) == ids
            pids = [w["pid"] for w in conn.execute("SELECT pid FROM workers").fetchall()]
            assert len(pids) == 2, pids  # one row for two processes: their ids were one
            assert pids[0] == pids[1]  # the same name and pid: only the instance tells them apart
            assert len({r["worker_id"] for r in held}) == 2, held
            # unshare's one child is the supervisor (pid 1 in its namespace)
            (victim,) = worker_children(children_of(groups[0].pid)[0])
            os.kill(victim, signal.SIGKILL)
            done = "SELECT count(*) AS n FROM tasks WHERE status = 'COMPLETED'"
            wait_for(lambda: conn.execute(done).fetchone()["n"] == 2, 60, "both tasks completed")
        finally:
            for group in groups:  # unshare passes no signal on, but its child's exit code
                for supervisor in children_of(group.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(supervisor, signal.SIGTERM)
            outcomes = [stop_worker(group, signalled=True) for group in groups]
        assert [code for code, _ in outcomes] == [0, 0], outcomes
        runs = conn.execute(
            "SELECT task_id, count(*) AS n FROM ledger WHERE phase = 'start' GROUP BY 1"
        ).fetchall()
        runs = {r["task_id"]: r["n"] for r in runs}
        assert sorted(runs.values()) == [1, 2], runs  # the killed one ran again, the other once
        (survivor,) = [task for task, n in runs.items() if n == 1]
        steps = conn.execute(
            "SELECT from_status::text AS f, to_status::text AS t FROM task_history"
            " WHERE task_id = %s ORDER BY id",
            (survivor,),
        ).fetchall()
        assert [(r["f"], r["t"]) for r in steps] == [
            (None, "PENDING"),
            ("PENDING", "PROCESSING"),
            ("PROCESSING", "COMPLETED"),
        ]
