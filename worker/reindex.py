"""The ``rebuild_queue_indexes`` task type's implementation (declared in ``taskq.builtins``).

The partial indexes the queue lives on (``ix_tasks_claim``: waiting tasks,
``ix_tasks_lease``: running ones) take an entry on every transition and lose it
on the next, so after a backlog of millions drains, vacuum leaves them the
size of the backlog with a handful of live entries. Scans skip the emptied
pages, but the planner prices a scan by pages (at 10M tasks a 5 ms read of
the operator views paid 30-50 ms of JIT) and the pages stay on disk and in
cache. The periodic scheduler enqueues this type on the leader
(TASKQ_REINDEX_SCHEDULE, daily at 00:30 UTC); it rebuilds such an index with
``REINDEX INDEX CONCURRENTLY``, which blocks no claim, insert or completion,
when it is at least ``min_mb`` and ``ratio`` times what its live entries need.
A rebuild that was interrupted (a killed worker, a cancelled statement) leaves
an invalid copy that every write still maintains: those are dropped first.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from sql import queries
from taskq.registry import TaskContext, implement


def rebuild_queue_indexes(conn: Any, min_mb: float, ratio: float) -> dict[str, Any]:
    """Drop the invalid leftovers of interrupted rebuilds, then rebuild each queue index
    that is bloated; what was found and done. ``conn`` must be in autocommit."""
    with conn.cursor(row_factory=dict_row) as cur:
        leftovers = [row["name"] for row in cur.execute(queries["invalid_queue_indexes"])]
        for name in leftovers:
            cur.execute(on_index("drop_index_concurrently", name))
        checked = cur.execute(queries["queue_index_sizes"]).fetchall()
        rebuilt = []
        for index in checked:
            if index["bytes"] < min_mb * 2**20 or index["bytes"] < ratio * index["needed"]:
                continue
            cur.execute(on_index("reindex_concurrently", index["name"]))
            after = cur.execute(queries["index_bytes"], {"name": index["name"]}).fetchone()
            rebuilt.append({"index": index["name"], "before_bytes": index["bytes"],
                            "after_bytes": after["bytes"]})  # fmt: skip
    return {"dropped_invalid": leftovers, "rebuilt": rebuilt,
            "checked": {index["name"]: index["bytes"] for index in checked}}  # fmt: skip


def on_index(query: str, name: str) -> sql.Composed:
    """The DDL ``query`` of sql/maintenance.sql on the index ``name``."""
    return sql.SQL(queries[query]).format(index=sql.Identifier(name))


@implement("rebuild_queue_indexes")
def rebuild_queue_indexes_task(payload: dict, ctx: TaskContext) -> dict:
    """Rebuilds the queue's partial indexes once they are mostly empty pages."""
    return rebuild_queue_indexes(ctx.connection(), payload["min_mb"], payload["ratio"])
