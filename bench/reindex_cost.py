"""What ``rebuild_queue_indexes`` gives back after a backlog drains, and how long it takes.

``python -m bench.reindex_cost URL --tasks 1000000`` makes a database at head
(dropped after), inserts that many waiting tasks in one statement, marks them
COMPLETED (a drained backlog), vacuums, and runs the rebuild: it prints the
claim index's bytes before and after and the rebuild's seconds.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from psycopg.rows import dict_row

from bench.trigger_cost import migrated
from worker.reindex import rebuild_queue_indexes


def main() -> None:
    """Fill, drain, vacuum, rebuild; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="server to make the database on")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with (
        migrated(args.url, "head") as db,
        psycopg.connect(db, autocommit=True, row_factory=dict_row) as conn,
    ):
        conn.execute(
            "INSERT INTO tasks (title, task_type) SELECT 't' || g, 'noop'"
            " FROM generate_series(1, %s) g",
            [args.tasks],
        )
        conn.execute("UPDATE tasks SET status = 'COMPLETED', completed_at = now()")
        conn.execute("VACUUM (ANALYZE) tasks")
        started = time.perf_counter()
        done = rebuild_queue_indexes(conn, min_mb=1, ratio=4)
        seconds = time.perf_counter() - started
    for index in done["rebuilt"]:
        print(f"{index['index']}: {index['before_bytes']:,} -> {index['after_bytes']:,} bytes")
    print(f"{args.tasks:,} drained tasks; rebuild {seconds:.2f} s; checked {done['checked']}")


if __name__ == "__main__":
    main()
