"""Where the server's time goes on the trigger-heavy statements, and an A/B of two schemas.

``python -m bench.trigger_cost URL`` prints, for a database migrated to head
(made and dropped here), the server time of each statement below as EXPLAIN
ANALYZE reports it, best and median of ``--repeats`` runs in one warm session,
with the time of each trigger it fired:

- ``insert_1000``: 1,000 tasks in one INSERT (the COPY of ``insert_tasks`` fires
  the same statement triggers; COPY itself cannot be EXPLAINed);
- ``claim_1`` / ``claim_0``: ``claim_tasks`` taking one task, and finding none
  (an idle worker's poll);
- ``complete_1`` / ``complete_0``: ``complete_tasks`` of that task, and of none;
- ``claim_1000`` / ``complete_1000``: the drain's batch (the worker's default batch
  size), 1,000 tasks claimed and then completed: a drain's server time per task.

Every run is rolled back. ``--before REV`` measures a second database migrated
to ``REV`` (e.g. 0013) too, alternating with head round by round on this noisy
machine, and adds batch enqueue (``insert_tasks``, 1,000 per call) of taskq at
both revisions and of PgQueuer (20,000 jobs a figure), alternating too; the ratios are
what to read. ``--pickup-rounds N`` adds ``taskq bench``'s idle pickup (p50, p99) of
taskq at both revisions, alternating. ``--writes-rounds N`` adds batch enqueue of
owned tasks with the insert trigger and the foreign key on and off
(``session_replication_role``), alternating: what those per-task writes weigh.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from bench.harness import FULL, admin, measure_enqueue_batch, with_database
from sql import queries

INSERT_1000 = """
INSERT INTO tasks (title, task_type, payload, queue, callback_events)
SELECT 'b' || g, 'bench_stamp', jsonb_build_object('key', 'b' || g), 'bench',
       ARRAY['task.succeeded', 'task.failed', 'task.cancelled']
  FROM generate_series(1, 1000) g
"""
INSERT_ONE = "INSERT INTO tasks (title, task_type, queue) VALUES ('one', 'bench_stamp', 'bench')"
CLAIM = {"queues": ["bench"], "limit": 1, "worker_id": "w", "lease_seconds": 30}
IDLE_CLAIM = {**CLAIM, "queues": ["idle"]}
CLAIM_1000 = {**CLAIM, "limit": 1000}


def explain(cur: psycopg.Cursor, query: str, params: dict | None = None) -> dict[str, float]:
    """Server time (ms) of ``query`` and of each trigger it fired, from EXPLAIN ANALYZE."""
    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)
    plan = cur.fetchone()[0][0]
    times = {"total": plan["Execution Time"]}
    for trigger in plan.get("Triggers", []):
        times[trigger["Trigger Name"]] = trigger["Time"]
    return times


def one_round(conn: psycopg.Connection) -> dict[str, dict[str, float]]:
    """Each statement once, in transactions that are rolled back."""
    measured = {}
    with conn.cursor() as cur:
        with conn.transaction(force_rollback=True):
            measured["insert_1000"] = explain(cur, INSERT_1000)
        with conn.transaction(force_rollback=True):
            cur.execute(INSERT_ONE)
            measured["claim_1"] = explain(cur, queries["claim_tasks"], CLAIM)
            task_id, token = cur.execute("SELECT id, lease_token FROM tasks").fetchone()
            done = {"ids": [task_id], "tokens": [token], "results": [json.dumps(1)]}
            measured["complete_1"] = explain(cur, queries["complete_tasks"], done)
            measured["complete_0"] = explain(cur, queries["complete_tasks"], done)
            measured["claim_0"] = explain(cur, queries["claim_tasks"], IDLE_CLAIM)
        with conn.transaction(force_rollback=True):
            cur.execute(INSERT_1000)
            measured["claim_1000"] = explain(cur, queries["claim_tasks"], CLAIM_1000)
            leased = cur.execute("SELECT id, lease_token FROM tasks ORDER BY id").fetchall()
            done = {"ids": [i for i, _ in leased], "tokens": [t for _, t in leased],
                    "results": [None] * len(leased)}  # fmt: skip
            measured["complete_1000"] = explain(cur, queries["complete_tasks"], done)
    return measured


class Profile:
    """The rounds of one database: per statement, per trigger, every time measured."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for _ in range(3):  # warm: plans cached, catalog read
            one_round(self.conn)

    def run(self) -> None:
        """One more round."""
        for statement, times in one_round(self.conn).items():
            for name, ms in times.items():
                self.times[statement][name].append(ms)

    def best(self, statement: str, name: str = "total") -> float:
        """Best time (ms) of ``name`` in ``statement``."""
        return min(self.times[statement][name])

    def report(self, label: str) -> list[str]:
        """Lines: statement, trigger, best and median ms."""
        lines = []
        for statement, names in self.times.items():
            for name, values in names.items():
                lines.append(
                    f"{label:7} {statement:13} {name:40} best {min(values):7.3f} ms"
                    f"  median {statistics.median(values):7.3f} ms"
                )
        return lines


@contextmanager
def migrated(url: str, revision: str) -> Iterator[str]:
    """A database migrated to ``revision``, dropped after; its URL."""
    from taskq.migrate import upgrade

    name = f"trigger_cost_{revision}_{uuid.uuid4().hex[:6]}"
    admin(url, psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    try:
        db = with_database(url, name)
        upgrade(db, revision)
        yield db
    finally:
        admin(url, psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            psycopg.sql.Identifier(name)))  # fmt: skip


def batch_rounds(url: str, before: str, rounds: int, log: Callable[[str], None]) -> None:
    """Batch enqueue jobs/s of taskq at ``before``, at head, and of PgQueuer, alternating."""
    from bench.harness import fresh_database, system_template
    from bench.peers_pgqueuer import PgQueuerSystem
    from bench.taskq_system import TaskqSystem

    systems = {f"taskq@{before}": TaskqSystem(before), "taskq@head": TaskqSystem(),
               "pgqueuer": PgQueuerSystem()}  # fmt: skip
    figures: dict[str, list[float]] = defaultdict(list)
    with (
        system_template(url, systems[f"taskq@{before}"]) as t_before,
        system_template(url, systems["taskq@head"]) as t_head,
        system_template(url, systems["pgqueuer"]) as t_pgq,
    ):
        templates = {f"taskq@{before}": t_before, "taskq@head": t_head, "pgqueuer": t_pgq}
        for n in range(rounds):
            order = list(systems) if n % 2 == 0 else list(reversed(systems))
            for label in order:
                with fresh_database(url, templates[label]) as db:
                    figures[label].append(measure_enqueue_batch(systems[label], db, FULL))
            done = ", ".join(f"{label} {figures[label][-1]:,.0f}" for label in systems)
            log(f"round {n + 1}: {done}")
    medians = {label: statistics.median(values) for label, values in figures.items()}
    for label, value in medians.items():
        log(f"batch enqueue {label:12} median {value:9,.0f} jobs/s  runs {figures[label]}")
    for a, b in (("taskq@head", "pgqueuer"), (f"taskq@{before}", "pgqueuer"),
                 ("taskq@head", f"taskq@{before}")):  # fmt: skip
        log(f"ratio {a} / {b}: {medians[a] / medians[b]:.2f}")


def pickup_rounds(url: str, before: str, rounds: int, log: Callable[[str], None]) -> None:
    """Idle pickup p50/p99 (ms, enqueue commit to the task's first line) of taskq at
    ``before`` and at head, alternating: ``taskq bench``'s pickup workload, quick sizes."""
    from bench.harness import QUICK, fresh_database, measure_pickup, percentile, system_template
    from bench.taskq_system import TaskqSystem

    systems = {f"taskq@{before}": TaskqSystem(before), "taskq@head": TaskqSystem()}
    figures: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with (
        system_template(url, systems[f"taskq@{before}"]) as t_before,
        system_template(url, systems["taskq@head"]) as t_head,
    ):
        templates = {f"taskq@{before}": t_before, "taskq@head": t_head}
        for n in range(rounds):
            for label in list(systems) if n % 2 == 0 else list(reversed(systems)):
                with fresh_database(url, templates[label]) as db:
                    latencies = measure_pickup(systems[label], db, QUICK)
                for pct in (50, 99):
                    figures[label][pct].append(percentile(latencies, pct))
            log(f"pickup round {n + 1}: " + ", ".join(
                f"{label} p50 {figures[label][50][-1]:.2f} p99 {figures[label][99][-1]:.2f} ms"
                for label in systems))  # fmt: skip
    for label, by_pct in figures.items():
        p50, p99 = statistics.median(by_pct[50]), statistics.median(by_pct[99])
        log(f"pickup {label:12} median p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def writes_rounds(url: str, rounds: int, log: Callable[[str], None], calls: int = 20) -> None:
    """What the per-task writes of the insert trigger and the owner's foreign key weigh in
    batch enqueue: ``insert_tasks`` of 1,000 owned tasks per call, ``calls`` calls a figure,
    as usual and with ``session_replication_role = replica`` (which skips both: measured,
    never a mode to run in), alternating; jobs/s and the client's CPU per task."""
    import time

    from taskq.enqueue import insert_tasks

    tasks = [{"title": f"t{n}", "task_type": "noop", "payload": {"n": n}} for n in range(1000)]
    figures: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with migrated(url, "head") as db, psycopg.connect(db, autocommit=True) as conn:
        owner = conn.execute(
            "INSERT INTO users (username, email, password_hash)"
            " VALUES ('bench', 'bench@example.com', 'x') RETURNING id"
        ).fetchone()[0]
        for n in range(rounds):
            for role in ("origin", "replica") if n % 2 == 0 else ("replica", "origin"):
                conn.execute("SELECT set_config('session_replication_role', %s, false)", [role])
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    insert_tasks(conn, owner, tasks)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                figures[role].append((calls * 1000 / wall, cpu / (calls * 1000) * 1e6))
            log(f"writes round {n + 1}: " + ", ".join(
                f"{role} {figures[role][-1][0]:,.0f} jobs/s" for role in figures))  # fmt: skip
    for role, runs in figures.items():
        rate = statistics.median(r for r, _ in runs)
        client = statistics.median(c for _, c in runs)
        log(f"batch enqueue, triggers {'off' if role == 'replica' else 'on'}: median"
            f" {rate:,.0f} jobs/s, client CPU {client:.1f} us a task")  # fmt: skip


def main() -> None:
    """Profile head (and ``--before``), alternating; print best/median per trigger."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="server to make the databases on")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--before", default=None, help="also this revision, e.g. 0013")
    parser.add_argument("--batch-rounds", type=int, default=6)
    parser.add_argument("--pickup-rounds", type=int, default=0)
    parser.add_argument(
        "--writes-rounds", type=int, default=0, help="batch enqueue, triggers on and off"
    )
    args = parser.parse_args()
    labels = {"head": "head"} if args.before is None else {"before": args.before, "head": "head"}
    with profiled_databases(args.url, labels) as profiles:
        for _ in range(args.repeats):
            for profile in profiles.values():
                profile.run()
        for label, profile in profiles.items():
            print("\n".join(profile.report(label)))
        if args.before is not None:
            for statement in (
                "insert_1000",
                "claim_1",
                "claim_0",
                "complete_1",
                "complete_0",
                "claim_1000",
                "complete_1000",
            ):
                b, h = profiles["before"].best(statement), profiles["head"].best(statement)
                print(f"{statement:13} best: before {b:7.3f} ms, head {h:7.3f} ms, "
                      f"head/before {h / b:.2f}")  # fmt: skip
    if args.before is not None and args.batch_rounds:
        batch_rounds(args.url, args.before, args.batch_rounds, print)
    if args.before is not None and args.pickup_rounds:
        pickup_rounds(args.url, args.before, args.pickup_rounds, print)
    if args.writes_rounds:
        writes_rounds(args.url, args.writes_rounds, print)


@contextmanager
def profiled_databases(url: str, labels: dict[str, str]) -> Iterator[dict[str, Profile]]:
    """A migrated database and its Profile per label."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        profiles = {}
        for label, revision in labels.items():
            db = stack.enter_context(migrated(url, revision))
            profiles[label] = Profile(db)
            stack.callback(profiles[label].conn.close)
        yield profiles


if __name__ == "__main__":
    main()
