"""A clean-up's search documents go by their primary key, not by a scan of task_search.

``taskq_tasks_derived()`` (0009) runs with ``enable_nestloop = off`` (its joins
of the transition tables must not become nested loops over row counts the
planner may take for 1). That also held for its ``DELETE FROM task_search ...
USING old_rows``: a join, so without a nested loop a hash join over a scan of
all of ``task_search``, once per statement that deletes tasks. At 10M tasks one
1,000-task window of ``cleanup_old_tasks`` spent 7 s there (~1,000 tasks/s; at
1M, 4,800). Now the ids are an array the primary key is probed with (one index
scan, no join), as ``taskq_tasks_deleted()`` already drops the history.

Safe beside running workers and API processes: ``CREATE OR REPLACE FUNCTION``
is a catalog change; a statement already running keeps the old body.

Revision ID: 0015
Revises: 0013
"""

from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_derived() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
BEGIN
    -- Counters: one grouped row per key the statement changed (a batch claim of 1,000
    -- tasks of one owner, queue and type writes two: PENDING -1000, PROCESSING +1000).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT coalesce(user_id, 0), queue, task_type, status, count(*), count(*)
          FROM new_rows
         GROUP BY 1, 2, 3, 4;
        INSERT INTO task_search (task_id, document)
        SELECT id, to_tsvector('simple', left(title || ' ' || description, 20000))
          FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT coalesce(user_id, 0), queue, task_type, status, -count(*), 0
          FROM old_rows
         GROUP BY 1, 2, 3, 4;
        {search_delete}
    ELSE
        INSERT INTO task_count_deltas (user_id, queue, task_type, status, tasks, entered)
        SELECT user_id, queue, task_type, status, sum(tasks), sum(entered)
          FROM (SELECT coalesce(o.user_id, 0) AS user_id, o.queue, o.task_type, o.status,
                       -1 AS tasks, 0 AS entered
                  FROM old_rows o
                 UNION ALL
                SELECT coalesce(n.user_id, 0), n.queue, n.task_type, n.status, 1,
                       CASE WHEN o.status IS DISTINCT FROM n.status THEN 1 ELSE 0 END
                  FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id) changes
         GROUP BY 1, 2, 3, 4
        HAVING sum(tasks) <> 0 OR sum(entered) <> 0;
    END IF;
    RETURN NULL;
END $$;
"""

# The ids as an array: an index scan of pk_task_search, which enable_nestloop does not touch.
SEARCH_DELETE = "DELETE FROM task_search WHERE task_id = ANY (ARRAY(SELECT o.id FROM old_rows o));"
# 0009's, verbatim.
SEARCH_DELETE_0009 = "DELETE FROM task_search s USING old_rows o WHERE s.task_id = o.id;"


def upgrade() -> None:
    """taskq_tasks_derived() deletes search documents by their primary key."""
    op.execute(FUNCTION.replace("{search_delete}", SEARCH_DELETE))


def downgrade() -> None:
    """Back to 0009's taskq_tasks_derived()."""
    op.execute(FUNCTION.replace("{search_delete}", SEARCH_DELETE_0009))
