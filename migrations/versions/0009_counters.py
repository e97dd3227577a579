"""Counters instead of counting, and a search index off the hot path.

Reads that counted ``tasks`` (``GET /tasks/stats``, a list's ``count``,
``queue_stats`` behind ``/metrics``, ``taskq stats`` and ``/admin/queues``)
grew with every task ever kept. Now:

- ``taskq_tasks_derived()``, a new statement-level trigger on ``tasks``
  (INSERT, UPDATE, DELETE; transition tables), writes
  the statement's net change per (owner, queue, task type, status) as a few
  grouped rows of ``task_count_deltas``: insert-only, so no counter row is a
  lock that writers queue on. ``entered`` counts the transitions into each
  status (what the history records), for the per-minute rates.
- The worker leader folds deltas into ``task_counts`` (owner x queue x type x
  status), ``queue_counts`` (queue x status) and ``status_entries`` (transitions
  per queue, status and second, kept two minutes) in small batches: one
  statement deletes a batch and upserts its sums (``roll_up_task_counts`` in
  ``sql/counters.sql``), so a delta is counted exactly once. A read sums the
  rolled-up rows and the pending deltas in one snapshot: exact at every moment.
- ``TRUNCATE tasks`` empties the counters too.
- ``queue_stats`` reads waiting and running from the counters, due and oldest
  due age from the runnable rows only (the claim index's predicate), and the
  last minute's completions and failures from ``status_entries`` (to the
  second) instead of scanning ``task_history``. ``queue_depth`` reads the
  live rows through the two partial indexes. Same columns as before.
- ``task_search`` holds ``to_tsvector('simple', title || ' ' || description)``
  of every task under a GIN index, written by the same trigger on insert,
  dropped with the task, and rewritten by a row trigger on ``UPDATE OF title,
  description`` (only an operator's UPDATE changes them; claims and
  completions never queue it). An
  index on ``tasks`` itself would take a GIN insertion at every claim and
  completion (``status`` is in partial-index predicates, so those updates are
  never HOT); this one costs only the insert.
- ``ix_tasks_created (created_at DESC, id DESC)``: the admin list's default
  order over every user, which sorted the whole table for each page. It is one
  more index insertion per row version of ``tasks``: measured in the drain.

On a big table: creating the triggers locks ``tasks`` against writes
(SHARE ROW EXCLUSIVE) until the migration commits, so the backfills (one
grouped scan of ``tasks`` for the counters, one for the search documents and
the GIN build after them, and the build of ``ix_tasks_created``) see exactly the rows the triggers will not; writers
wait for those scans (at 1M tasks, seconds), readers do not. Old workers keep
running: they only write ``tasks``, and the triggers count what they write.
Until a new worker leads, deltas wait in ``task_count_deltas`` (reads stay
exact; they get slower as deltas pile up).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE task_count_deltas (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    user_id     bigint NOT NULL,
    queue       text NOT NULL,
    task_type   text NOT NULL,
    status      task_status NOT NULL,
    tasks       bigint NOT NULL,
    entered     bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT pk_task_count_deltas PRIMARY KEY (id)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 5000);
COMMENT ON TABLE task_count_deltas IS
    'Pending counter changes, a few rows per statement on tasks; the worker leader folds them into task_counts, queue_counts and status_entries.';
COMMENT ON COLUMN task_count_deltas.user_id IS 'Owner of the tasks; 0 for tasks without one.';
COMMENT ON COLUMN task_count_deltas.tasks IS 'Net change of the number of tasks with this key.';
COMMENT ON COLUMN task_count_deltas.entered IS 'Transitions into this status (history rows written).';
COMMENT ON COLUMN task_count_deltas.at IS 'When the statement wrote it (the second of the transitions).';

CREATE TABLE task_counts (
    user_id     bigint NOT NULL,
    queue       text NOT NULL,
    task_type   text NOT NULL,
    status      task_status NOT NULL,
    tasks       bigint NOT NULL,
    CONSTRAINT pk_task_counts PRIMARY KEY (user_id, queue, task_type, status)
) WITH (fillfactor = 50);
COMMENT ON TABLE task_counts IS
    'Tasks per owner, queue, type and status, as of the last roll-up (add task_count_deltas for now).';
COMMENT ON COLUMN task_counts.user_id IS 'Owner; 0 for tasks without one.';
COMMENT ON COLUMN task_counts.tasks IS 'How many tasks have this key (as rolled up).';

CREATE TABLE queue_counts (
    queue       text NOT NULL,
    status      task_status NOT NULL,
    tasks       bigint NOT NULL,
    CONSTRAINT pk_queue_counts PRIMARY KEY (queue, status)
) WITH (fillfactor = 50);
COMMENT ON TABLE queue_counts IS
    'Tasks per queue and status, as of the last roll-up (add task_count_deltas for now).';
COMMENT ON COLUMN queue_counts.tasks IS 'How many tasks of the queue have this status (as rolled up).';

CREATE TABLE status_entries (
    queue       text NOT NULL,
    status      task_status NOT NULL,
    at          timestamptz NOT NULL,
    entered     bigint NOT NULL,
    CONSTRAINT pk_status_entries PRIMARY KEY (queue, status, at)
);
COMMENT ON TABLE status_entries IS
    'Transitions into each status per queue and second, kept two minutes: the rates of queue_stats.';
COMMENT ON COLUMN status_entries.at IS 'The second the transitions were written in (its start).';
COMMENT ON COLUMN status_entries.entered IS 'How many tasks entered the status in that second.';

CREATE TABLE task_search (
    task_id     bigint NOT NULL,
    document    tsvector NOT NULL,
    CONSTRAINT pk_task_search PRIMARY KEY (task_id)
);
COMMENT ON TABLE task_search IS
    'The words of each task''s title and description (to_tsvector simple), for the list''s search.';
COMMENT ON COLUMN task_search.document IS
    'to_tsvector(''simple'', title || '' '' || description), of the first 20,000 characters.';

CREATE FUNCTION taskq_tasks_derived() RETURNS trigger
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
        DELETE FROM task_search s USING old_rows o WHERE s.task_id = o.id;
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
COMMENT ON FUNCTION taskq_tasks_derived() IS
    'Per statement on tasks: its net change per owner, queue, type and status (task_count_deltas); the search documents of new and deleted tasks.';

-- A title or description changes only by an operator's UPDATE (the API has no edit):
-- a row trigger on those columns, which a claim or a completion never queues.
CREATE FUNCTION taskq_task_retitled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id IS DISTINCT FROM NEW.id THEN
        DELETE FROM task_search WHERE task_id = OLD.id;
    END IF;
    INSERT INTO task_search (task_id, document)
    VALUES (NEW.id, to_tsvector('simple', left(NEW.title || ' ' || NEW.description, 20000)))
    ON CONFLICT (task_id) DO UPDATE SET document = excluded.document;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_task_retitled() IS
    'The search document of a task whose title or description an UPDATE changed.';

CREATE FUNCTION taskq_tasks_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_count_deltas, task_counts, queue_counts, status_entries, task_search;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_truncated() IS 'TRUNCATE tasks empties the counters and the search documents.';

CREATE TRIGGER tasks_derived_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_derived_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_derived_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_derived();
CREATE TRIGGER tasks_derived_truncated AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_truncated();
CREATE TRIGGER tasks_retitled AFTER UPDATE OF id, title, description ON tasks
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.title IS DISTINCT FROM NEW.title
                       OR OLD.description IS DISTINCT FROM NEW.description)
    EXECUTE FUNCTION taskq_task_retitled();

-- The backfills: the triggers above hold writers off until commit, so these scans and
-- the triggers together count every task once.
INSERT INTO task_counts (user_id, queue, task_type, status, tasks)
SELECT coalesce(user_id, 0), queue, task_type, status, count(*)
  FROM tasks GROUP BY 1, 2, 3, 4;
INSERT INTO queue_counts (queue, status, tasks)
SELECT queue, status, sum(tasks) FROM task_counts GROUP BY 1, 2;
INSERT INTO task_search (task_id, document)
SELECT id, to_tsvector('simple', left(title || ' ' || description, 20000)) FROM tasks;
CREATE INDEX ix_task_search_document ON task_search USING gin (document);
-- The admin list's default order over every user's tasks (the owner's list has
-- ix_tasks_user_created): a page is an index walk instead of a sort of the table.
CREATE INDEX ix_tasks_created ON tasks (created_at DESC, id DESC);
"""

VIEWS = r"""
CREATE OR REPLACE VIEW queue_depth AS
SELECT queue,
       status,
       count(*)                                  AS tasks,
       max(now() - created_at)                   AS oldest_age,
       count(*) FILTER (WHERE run_at <= now())   AS due
  FROM (SELECT queue, status, created_at, run_at
          FROM tasks WHERE status IN ('PENDING', 'RETRYING')
        UNION ALL
        SELECT queue, status, created_at, run_at
          FROM tasks WHERE status = 'PROCESSING') live
 GROUP BY queue, status;
COMMENT ON VIEW queue_depth IS 'Unfinished tasks per queue and status, with the age of the oldest.';

CREATE OR REPLACE VIEW queue_stats AS
WITH counted AS (
    SELECT queue,
           coalesce(sum(tasks) FILTER (WHERE status IN ('PENDING', 'RETRYING')), 0)::bigint
               AS waiting,
           coalesce(sum(tasks) FILTER (WHERE status = 'PROCESSING'), 0)::bigint AS running
      FROM (SELECT queue, status, tasks FROM queue_counts
             WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')
            UNION ALL
            SELECT queue, status, tasks FROM task_count_deltas
             WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')) c
     GROUP BY queue
    HAVING sum(tasks) > 0
), due AS (
    SELECT queue, count(*) AS due, max(now() - run_at) AS oldest_due_age
      FROM tasks
     WHERE status IN ('PENDING', 'RETRYING') AND run_at <= now()
     GROUP BY queue
), recent AS (
    SELECT queue,
           coalesce(sum(entered) FILTER (WHERE status = 'COMPLETED'), 0)::bigint
               AS completed_last_minute,
           coalesce(sum(entered) FILTER (WHERE status = 'FAILED'), 0)::bigint
               AS failed_last_minute
      FROM (SELECT queue, status, entered FROM status_entries
             WHERE at > now() - interval '1 minute' AND status IN ('COMPLETED', 'FAILED')
            UNION ALL
            SELECT queue, status, entered FROM task_count_deltas
             WHERE at > now() - interval '1 minute' AND status IN ('COMPLETED', 'FAILED')
               AND entered > 0) r
     GROUP BY queue
)
SELECT coalesce(l.queue, r.queue)               AS queue,
       coalesce(l.waiting, 0)                   AS waiting,
       coalesce(d.due, 0)                       AS due,
       coalesce(l.running, 0)                   AS running,
       d.oldest_due_age,
       coalesce(r.completed_last_minute, 0)     AS completed_last_minute,
       coalesce(r.failed_last_minute, 0)        AS failed_last_minute
  FROM counted l
  FULL JOIN recent r ON r.queue = l.queue
  LEFT JOIN due d ON d.queue = l.queue;
COMMENT ON VIEW queue_stats IS 'Per queue: waiting, due and running tasks, oldest due age, completions in the last minute.';
"""

# The views as 0001 made them, verbatim; then the tables, triggers and functions go.
DOWNGRADE = r"""
CREATE OR REPLACE VIEW queue_depth AS
SELECT queue,
       status,
       count(*)                                  AS tasks,
       max(now() - created_at)                   AS oldest_age,
       count(*) FILTER (WHERE run_at <= now())   AS due
  FROM tasks
 WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')
 GROUP BY queue, status;
COMMENT ON VIEW queue_depth IS 'Unfinished tasks per queue and status, with the age of the oldest.';

CREATE OR REPLACE VIEW queue_stats AS
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING')) AS waiting,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING') AND run_at <= now()) AS due,
           count(*) FILTER (WHERE status = 'PROCESSING')               AS running,
           max(now() - run_at) FILTER (WHERE status IN ('PENDING', 'RETRYING')
                                         AND run_at <= now())          AS oldest_due_age
      FROM tasks
     WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')
     GROUP BY queue
), recent AS (
    SELECT t.queue,
           count(*) FILTER (WHERE h.to_status = 'COMPLETED') AS completed_last_minute,
           count(*) FILTER (WHERE h.to_status = 'FAILED')    AS failed_last_minute
      FROM task_history h JOIN tasks t ON t.id = h.task_id
     WHERE h.created_at > now() - interval '1 minute'
       AND h.to_status IN ('COMPLETED', 'FAILED')
     GROUP BY t.queue
)
SELECT coalesce(l.queue, r.queue)               AS queue,
       coalesce(l.waiting, 0)                   AS waiting,
       coalesce(l.due, 0)                       AS due,
       coalesce(l.running, 0)                   AS running,
       l.oldest_due_age,
       coalesce(r.completed_last_minute, 0)     AS completed_last_minute,
       coalesce(r.failed_last_minute, 0)        AS failed_last_minute
  FROM live l FULL JOIN recent r ON r.queue = l.queue;
COMMENT ON VIEW queue_stats IS 'Per queue: waiting, due and running tasks, oldest due age, completions in the last minute.';

DROP TRIGGER tasks_derived_inserted ON tasks;
DROP TRIGGER tasks_derived_updated ON tasks;
DROP TRIGGER tasks_derived_deleted ON tasks;
DROP TRIGGER tasks_derived_truncated ON tasks;
DROP TRIGGER tasks_retitled ON tasks;
DROP FUNCTION taskq_tasks_derived(), taskq_tasks_truncated(), taskq_task_retitled();
DROP TABLE task_count_deltas, task_counts, queue_counts, status_entries, task_search;
DROP INDEX ix_tasks_created;
"""


def upgrade() -> None:
    """Counters, search documents, their triggers and backfills; the views that read them."""
    op.execute(UPGRADE)
    op.execute(VIEWS)


def downgrade() -> None:
    """Back to 0008: the views count tasks again; the new tables and triggers go."""
    op.execute(DOWNGRADE)
