"""Reads at size, and the drain with and without the counters' trigger (issue 10, first half).

``python -m bench.scale_read reads --sizes 10000,100000,1000000`` fills one database
through the product's write paths (``taskq.insert_tasks``, the COPY of
``POST /tasks/batch``; then each finished task's claim and completion as set-wise
UPDATEs, which the triggers turn into 3 history rows per task), with one user
owning N finished tasks and a 10k backlog, rolls the counters up as the worker
leader would, and times each read through the app in-process (best and median
of 7). ``python -m bench.scale_read drain`` runs ``taskq bench``'s drain
(and batch enqueue) figure back to back on fresh databases, alternating the
schema as shipped with the write path as it was before migration 0009 (its
``tasks_derived_*`` triggers disabled, ``ix_tasks_created`` dropped): the
machine is shared and noisy, so compare the ratios of neighbouring runs.

``python -m bench.scale_read shares`` reads, from EXPLAIN ANALYZE of each statement,
the share of its server time spent in 0009's trigger (load weighs on both alike).
``python -m bench.scale_read statements`` times the server side alone: a batch
of 1,000 tasks inserted (COPY), claimed and completed (set-wise UPDATEs), with
0009's triggers enabled and disabled in alternation, medians per task.

Databases are named ``scale_read_*`` and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

WORDS = [f"w{i:03d}" for i in range(1000)]  # a rare word: one task in a thousand
BATCH = 20_000
# The last revision in which 0009's triggers are triggers of their own (0014 folded every
# statement trigger of an event into one): the A/B of 0009's cost runs on it.
DERIVED_REVISION = "0013"
DERIVED_TRIGGERS = (
    "tasks_derived_inserted",
    "tasks_derived_updated",
    "tasks_derived_deleted",
    "tasks_retitled",
)


def title(i: int) -> str:
    """Every title has "report"; one in a thousand a given w-word; the first 100 "needle"."""
    return f"report {i} {WORDS[i % 1000]}" + (" needle" if i < 100 else "")


def fill(url: str, user_id: int, upto: int, have: int) -> None:
    """Finished tasks of ``user_id`` from ``have`` up to ``upto``, claimed and completed."""
    from taskq.enqueue import insert_tasks

    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(have, upto, BATCH):
            n = min(BATCH, upto - start)
            tasks = [{"title": title(start + i), "task_type": "noop"} for i in range(n)]
            with conn.transaction():
                ids = [row["id"] for row in insert_tasks(conn, user_id, tasks)]
            for status in ("PROCESSING", "COMPLETED"):
                conn.execute(
                    "UPDATE tasks SET status = %s, completed_at = now() WHERE id = ANY(%s)",
                    (status, ids),
                )


def backlog(url: str, user_id: int, n: int) -> None:
    """``n`` waiting tasks of ``user_id``, due now, on a queue no worker serves."""
    from taskq.enqueue import insert_tasks

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        insert_tasks(conn, user_id, [{"title": f"waiting {i}", "queue": "backlog"}
                                     for i in range(n)])  # fmt: skip


def settle(url: str) -> None:
    """What the leader and autovacuum do between reads: roll up, vacuum, analyze."""
    from taskq.counters import roll_up_task_counts

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        while roll_up_task_counts(conn):
            pass
        conn.execute("VACUUM ANALYZE")


def timed(call: Callable[[], Any], runs: int = 7) -> tuple[float, float]:
    """(best, median) milliseconds of ``runs`` calls after one warm-up."""
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times)


def reads(url: str, cursor_depth: int) -> dict[str, tuple[float, float]]:
    """Each read the issue lists (and the cursor and offset forms), through the app."""
    from app import create_app

    app = create_app({"DATABASE_URL": url, "TASKQ_ENV": "test", "REDIS_URL": None,
                      "RATELIMIT_ENABLED": False, "TASKQ_METRICS_TOKEN": None})  # fmt: skip
    client = app.test_client()
    user = login(client, "scale_read_user")
    admin = login(client, "scale_read_admin")
    deep = client.get("/api/v1/tasks?page_size=20", headers=user).get_json()["next_cursor"]
    for _ in range(cursor_depth):  # walk cursor_depth pages in to time a deep cursor page
        deep = client.get(f"/api/v1/tasks?page_size=100&cursor={deep}", headers=user).get_json()[
            "next_cursor"
        ]

    def get(path: str, headers: dict) -> Callable[[], Any]:
        def call() -> None:
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.get_data(as_text=True)[:300])

        return call

    with psycopg.connect(url, autocommit=True) as conn:

        def view(name: str) -> Callable[[], Any]:
            return lambda: conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)))

        results = {
            "GET /tasks (first page, count)": timed(get("/api/v1/tasks", user)),
            "GET /tasks?cursor= (deep page)": timed(get(f"/api/v1/tasks?cursor={deep}", user)),
            "GET /tasks?page=50 (offset)": timed(get("/api/v1/tasks?page=50", user)),
            "GET /tasks?search=<word of 100 tasks>": timed(
                get("/api/v1/tasks?search=needle", user)
            ),
            "GET /tasks?search=<word of 0.1% of tasks>": timed(
                get("/api/v1/tasks?search=w123", user)
            ),
            "GET /tasks?search=<every task's word>": timed(
                get("/api/v1/tasks?search=report", user)
            ),
            "GET /tasks/stats": timed(get("/api/v1/tasks/stats", user)),
            "GET /admin/tasks": timed(get("/api/v1/admin/tasks", admin)),
            "GET /admin/queues": timed(get("/api/v1/admin/queues", admin)),
            "GET /metrics": timed(get("/metrics", {})),
            "SELECT * FROM queue_stats": timed(view("queue_stats")),
            "SELECT * FROM queue_depth": timed(view("queue_depth")),
        }
    return results


def login(client, username: str) -> dict[str, str]:
    """Bearer headers of ``username`` (password ``Sturdy-Lamp-42``)."""
    response = client.post(
        "/api/v1/auth/login", json={"username": username, "password": "Sturdy-Lamp-42"}
    )
    return {"Authorization": f"Bearer {response.get_json()['tokens']['access']}"}


def run_reads(server: str, sizes: list[int]) -> dict[int, dict[str, tuple[float, float]]]:
    """Fill one database size after size; the read timings at each."""
    from app.auth import create_admin_user
    from bench.harness import create_database, drop_database
    from taskq.migrate import upgrade

    name = f"scale_read_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    out: dict[int, dict[str, tuple[float, float]]] = {}
    try:
        upgrade(url)
        user_id = create_admin_user(url, "scale_read_user", None, "Sturdy-Lamp-42")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE users SET is_admin = false WHERE id = %s", (user_id,))
        create_admin_user(url, "scale_read_admin", None, "Sturdy-Lamp-42")
        backlog(url, user_id, 10_000)
        have = 0
        for size in sizes:
            started = time.monotonic()
            fill(url, user_id, size, have)
            have = size
            settle(url)
            print(f"-- {size:,} finished tasks (filled in {time.monotonic() - started:.0f} s)")
            out[size] = reads(url, cursor_depth=10)
            for read, (best, median) in out[size].items():
                print(f"{read:42s} best {best:8.1f} ms   median {median:8.1f} ms", flush=True)
    finally:
        drop_database(server, name)
    return out


def run_drain(server: str, rounds: int, n: int) -> list[dict[str, Any]]:
    """Drain (1 and 2 processes) and batch enqueue, alternating triggers on and off."""
    from bench.harness import (
        QUICK,
        fresh_database,
        measure_drain,
        measure_enqueue_batch,
        system_template,
    )
    from bench.taskq_system import TaskqSystem

    sizes = replace(QUICK, drain_n=n, enqueue_n=n)
    system = TaskqSystem(DERIVED_REVISION)
    figures = []
    with system_template(server, system) as template:
        for round_ in range(rounds):
            for derived in (True, False) if round_ % 2 == 0 else (False, True):
                row: dict[str, Any] = {"round": round_, "migration_0009": derived}
                for metric, measure in (
                    ("drain_1proc", lambda d: measure_drain(system, d, sizes, 1)),
                    ("drain_2proc", lambda d: measure_drain(system, d, sizes, 2)),
                    ("enqueue_batch", lambda d: measure_enqueue_batch(system, d, sizes)),
                ):
                    with fresh_database(server, template) as db:
                        if not derived:
                            as_before_0009(db)
                        row[metric] = measure(db)
                print(json.dumps(row), flush=True)
                figures.append(row)
    return figures


def run_statements(server: str, rounds: int, n: int) -> dict[str, Any]:
    """Server time of one task's insert (COPY), claim and completion, in batches of ``n``,
    with 0009's triggers on and off in alternation (medians, µs per task)."""
    from bench.harness import create_database, drop_database
    from taskq.enqueue import insert_tasks
    from taskq.migrate import upgrade

    name = f"scale_read_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    times: dict[tuple[bool, str], list[float]] = {}
    try:
        upgrade(url, DERIVED_REVISION)
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for round_ in range(rounds):
                for on in (True, False) if round_ % 2 == 0 else (False, True):
                    verb = "ENABLE" if on else "DISABLE"
                    for trigger in DERIVED_TRIGGERS:
                        conn.execute(
                            sql.SQL("ALTER TABLE tasks {} TRIGGER {}").format(
                                sql.SQL(verb), sql.Identifier(trigger)
                            )
                        )
                    tasks = [{"title": title(i), "task_type": "noop"} for i in range(n)]
                    start = time.perf_counter()
                    with conn.transaction():
                        ids = [row["id"] for row in insert_tasks(conn, None, tasks)]
                    marks = [("insert", time.perf_counter() - start)]
                    for status in ("PROCESSING", "COMPLETED"):
                        start = time.perf_counter()
                        conn.execute(
                            "UPDATE tasks SET status = %s WHERE id = ANY(%s)", (status, ids)
                        )
                        marks.append((status.lower(), time.perf_counter() - start))
                    for step, seconds in marks:
                        times.setdefault((on, step), []).append(seconds * 1e6 / n)
    finally:
        drop_database(server, name)
    result = {}
    for step in ("insert", "processing", "completed"):
        on = statistics.median(times[(True, step)])
        off = statistics.median(times[(False, step)])
        result[step] = {"with_0009_us": round(on, 1), "without_us": round(off, 1),
                        "ratio": round(on / off, 3)}  # fmt: skip
        print(f"{step:10s} with 0009 {on:6.1f} µs/task  without {off:6.1f}  ratio {on / off:.3f}")
    return result


def run_shares(server: str, rounds: int, n: int) -> dict[str, Any]:
    """The share of a statement's server time spent in 0009's trigger, from EXPLAIN ANALYZE
    of the statement itself (so the machine's load weighs on both parts alike): a batch of
    ``n`` tasks inserted, claimed and completed, ``rounds`` times, medians."""
    from bench.harness import create_database, drop_database
    from taskq.migrate import upgrade

    name = f"scale_read_{uuid.uuid4().hex[:8]}"
    url = create_database(server, name)
    shares: dict[str, list[float]] = {}
    steps = {
        "insert": "INSERT INTO tasks (title, task_type, queue) SELECT 'report ' || g || ' w' "
        "|| (g %% 1000), 'noop', 'bench' FROM generate_series(1, %(n)s) g",
        "claim": "UPDATE tasks SET status = 'PROCESSING', attempts = attempts + 1, "
        "started_at = now() WHERE queue = 'bench' AND status = 'PENDING'",
        "complete": "UPDATE tasks SET status = 'COMPLETED', completed_at = now() "
        "WHERE queue = 'bench' AND status = 'PROCESSING'",
    }
    try:
        upgrade(url, DERIVED_REVISION)
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(rounds):
                for step, statement in steps.items():
                    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + statement
                    plan = conn.execute(explain, {"n": n}).fetchone()[0][0]
                    ours = sum(t["Time"] for t in plan.get("Triggers", [])
                               if t["Trigger Name"].startswith("tasks_derived"))  # fmt: skip
                    shares.setdefault(step, []).append(ours / plan["Execution Time"])
                conn.execute("UPDATE tasks SET queue = 'done' WHERE queue = 'bench'")
    finally:
        drop_database(server, name)
    result = {step: round(statistics.median(values), 4) for step, values in shares.items()}
    for step, share in result.items():
        print(f"{step:10s} 0009's trigger: {share:.1%} of the statement's server time (median)")
    return result


def as_before_0009(url: str) -> None:
    """The write path as it was before migration 0009: its triggers off, its index gone."""
    with psycopg.connect(url, autocommit=True) as conn:
        for trigger in DERIVED_TRIGGERS:
            conn.execute(
                sql.SQL("ALTER TABLE tasks DISABLE TRIGGER {}").format(sql.Identifier(trigger))
            )
        conn.execute("DROP INDEX ix_tasks_created")


def main() -> None:
    """Command line: ``reads`` or ``drain``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["reads", "drain", "statements", "shares"])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--drain-n", type=int, default=20_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.what == "reads":
        result: Any = run_reads(args.database_url, [int(s) for s in args.sizes.split(",")])
    elif args.what == "shares":
        result = run_shares(args.database_url, args.rounds, 1000)
    elif args.what == "statements":
        result = run_statements(args.database_url, args.rounds, 1000)
    else:
        result = run_drain(args.database_url, args.rounds, args.drain_n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
