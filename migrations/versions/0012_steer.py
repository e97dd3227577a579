"""Steering tasks: unique keys, snooze, progress, dependencies (a WAITING status).

- **Unique tasks**: ``unique_key`` (with ``unique_for`` seconds, or while the task
  is unfinished). Two partial unique indexes enforce it, so concurrent creates
  (single or batch) cannot both insert: ``uq_tasks_unique_unfinished`` holds the
  keys of unfinished tasks without a window (a task leaves it when it ends, and
  the key is free again); ``uq_tasks_unique_window`` holds ``(key, window)``,
  where ``unique_window`` is the start of the ``unique_for``-second bucket the
  task was created in (``taskq_unique_window``: aligned buckets, as River's
  ByPeriod). Only tasks with a key pay an index insertion.
- **Snooze**: ``snoozes`` counts the runs a task handed back to run later.
- **Progress**: ``progress`` (0-100), ``progress_message`` and ``progress_at``,
  written by the running task (no status change: no history row, a NOTIFY on
  ``taskq_progress`` instead).
- **Dependencies**: ``task_dependencies`` (parent -> child edges), a task's own
  ``depends_on`` and ``pending_parents`` (parents not COMPLETED yet), and
  ``has_dependents`` on a parent so the trigger skips every other task without
  a lookup. A child waits as ``WAITING`` (a new ``task_status`` value, ordered
  before PENDING; the claim takes only PENDING/RETRYING). The statement-level
  triggers ``tasks_updated_dependents`` / ``tasks_deleted_dependents`` settle
  the children of parents that ended: COMPLETED releases them (WAITING ->
  PENDING when none is left), FAILED, CANCELLED or deleted cancels them (and
  that cascades, as the cancel is itself an UPDATE of tasks). Both are UPDATEs of
  ``tasks.status``, so ``taskq_tasks_updated()`` writes their history and NOTIFY.

Safe on a big table while old workers run: the columns are added with constant
defaults (no rewrite; a short ACCESS EXCLUSIVE lock each), the enum value and the
indexes are created outside the migration's transaction (``ADD VALUE`` must
commit before use; the checks are added ``NOT VALID`` and validated after the
commit, the indexes built ``CONCURRENTLY``, so writes go on while they scan). Old workers never see WAITING tasks (their claim takes PENDING and
RETRYING only) and write none of the new columns.

The downgrade turns WAITING tasks back into PENDING ones (and their history
labels too), then removes the enum label from ``pg_enum``: Postgres has no
``ALTER TYPE … DROP VALUE``, so it needs a superuser.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ENUM = "ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'WAITING' BEFORE 'PENDING'"

UPGRADE = r"""
ALTER TABLE tasks
    ADD COLUMN unique_key text,
    ADD COLUMN unique_for integer,
    ADD COLUMN unique_window timestamptz,
    ADD COLUMN snoozes integer NOT NULL DEFAULT 0,
    ADD COLUMN progress real,
    ADD COLUMN progress_message text,
    ADD COLUMN progress_at timestamptz,
    ADD COLUMN depends_on bigint[],
    ADD COLUMN pending_parents integer NOT NULL DEFAULT 0,
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT ck_tasks_unique_for CHECK (unique_for IS NULL OR unique_for > 0) NOT VALID,
    ADD CONSTRAINT ck_tasks_progress CHECK (progress BETWEEN 0 AND 100) NOT VALID;
COMMENT ON COLUMN tasks.unique_key IS
    'Create returns the existing task with this key (per user) instead of a new one: while it is unfinished, or within unique_for.';
COMMENT ON COLUMN tasks.unique_for IS
    'Seconds of the uniqueness window of unique_key (NULL: while the task is unfinished).';
COMMENT ON COLUMN tasks.unique_window IS
    'Start of the unique_for-second bucket the task was created in (taskq_unique_window).';
COMMENT ON COLUMN tasks.snoozes IS 'Times the task asked to run again later (snooze); attempts are not spent.';
COMMENT ON COLUMN tasks.progress IS 'Percent done (0-100), reported by the running task.';
COMMENT ON COLUMN tasks.progress_message IS 'The running task''s last progress message.';
COMMENT ON COLUMN tasks.progress_at IS 'When progress was last written.';
COMMENT ON COLUMN tasks.depends_on IS 'Parent tasks this one waits for (all COMPLETED: it becomes due).';
COMMENT ON COLUMN tasks.pending_parents IS 'Parents not COMPLETED yet; the task is WAITING while this is above 0.';
COMMENT ON COLUMN tasks.has_dependents IS 'Some task depends on this one (the dependency trigger looks only at these).';

CREATE TABLE task_dependencies (
    parent_id  bigint NOT NULL,
    task_id    bigint NOT NULL,
    CONSTRAINT pk_task_dependencies PRIMARY KEY (parent_id, task_id)
);
COMMENT ON TABLE task_dependencies IS
    'Edges parent -> dependent task; the dependency triggers read them when a parent ends.';
COMMENT ON COLUMN task_dependencies.parent_id IS 'The task waited for.';
COMMENT ON COLUMN task_dependencies.task_id IS 'The task that waits (WAITING while a parent is unfinished).';

CREATE FUNCTION taskq_unique_window(unique_for integer) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM now()) / unique_for) * unique_for)
$$;
COMMENT ON FUNCTION taskq_unique_window(integer) IS
    'Start of the unique_for-second bucket of now() (NULL for NULL): the window of a unique_key.';

CREATE OR REPLACE FUNCTION taskq_webhook_events(to_status task_status) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE to_status
               WHEN 'WAITING'    THEN ARRAY['task.waiting']
               WHEN 'PENDING'    THEN ARRAY['task.queued']
               WHEN 'PROCESSING' THEN ARRAY['task.started']
               WHEN 'RETRYING'   THEN ARRAY['task.retrying']
               WHEN 'COMPLETED'  THEN ARRAY['task.succeeded']
               WHEN 'FAILED'     THEN ARRAY['task.failed']
               WHEN 'CANCELLED'  THEN ARRAY['task.cancelled', 'task.revoked']
           END
$$;

-- Settle the dependent tasks of parents that ended. Children are locked in id order
-- first, by every settler, so two transactions finishing parents of the same children
-- at once wait for each other instead of deadlocking; the decrement is then computed
-- on the row version the lock returned (READ COMMITTED re-reads it), so concurrent
-- completions of different parents each count once.
CREATE FUNCTION taskq_settle_dependents(ended_ids bigint[], ended_statuses text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    children bigint[];
BEGIN
    SELECT array_agg(DISTINCT d.task_id) INTO children
      FROM task_dependencies d WHERE d.parent_id = ANY(ended_ids);
    IF children IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM tasks t
     WHERE t.id = ANY(children) AND t.status = 'WAITING'
     ORDER BY t.id
       FOR NO KEY UPDATE;
    -- A parent that failed, was cancelled or deleted: its waiting children are cancelled
    -- (their own children follow, through this trigger on that UPDATE).
    UPDATE tasks t
       SET status = 'CANCELLED',
           error = c.reason,
           completed_at = now(),
           updated_at = now()
      FROM (SELECT d.task_id,
                   format('Cancelled: parent task %s ended %s.', min(e.id), min(e.status)) AS reason
              FROM task_dependencies d
              JOIN unnest(ended_ids, ended_statuses) AS e(id, status) ON e.id = d.parent_id
             WHERE e.status <> 'COMPLETED' AND d.task_id = ANY(children)
             GROUP BY d.task_id) c
     WHERE t.id = c.task_id AND t.status = 'WAITING';
    -- Completed parents: one fewer to wait for each; none left, the task is due.
    UPDATE tasks t
       SET pending_parents = greatest(t.pending_parents - c.n, 0),
           status = CASE WHEN t.pending_parents - c.n <= 0 THEN 'PENDING'::task_status
                         ELSE t.status END,
           run_at = CASE WHEN t.pending_parents - c.n <= 0 THEN greatest(t.scheduled_at, now())
                         ELSE t.run_at END,
           updated_at = now()
      FROM (SELECT d.task_id, count(*)::integer AS n
              FROM task_dependencies d
              JOIN unnest(ended_ids, ended_statuses) AS e(id, status) ON e.id = d.parent_id
             WHERE e.status = 'COMPLETED' AND d.task_id = ANY(children)
             GROUP BY d.task_id) c
     WHERE t.id = c.task_id AND t.status = 'WAITING';
END $$;
COMMENT ON FUNCTION taskq_settle_dependents(bigint[], text[]) IS
    'Release (COMPLETED) or cancel (anything else) the WAITING children of parents that ended.';

CREATE FUNCTION taskq_tasks_dependents_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    candidate_ids bigint[];
    candidate_statuses text[];
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    -- Most statements end no task that has dependents: one scan of the new rows, no join.
    SELECT array_agg(n.id), array_agg(n.status::text) INTO candidate_ids, candidate_statuses
      FROM new_rows n
     WHERE n.has_dependents AND n.status IN ('COMPLETED', 'FAILED', 'CANCELLED');
    IF candidate_ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Planned for this call's sizes (EXECUTE), not a plan cached for an earlier batch.
    EXECUTE 'SELECT array_agg(c.id ORDER BY c.id), array_agg(c.status ORDER BY c.id)
               FROM unnest($1, $2) AS c(id, status)
               JOIN old_rows o ON o.id = c.id
              WHERE o.status::text <> c.status'
       INTO ended_ids, ended_statuses
      USING candidate_ids, candidate_statuses;
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_dependents_updated() IS
    'After an UPDATE of tasks: settle the dependents of the parents that ended in it.';

CREATE FUNCTION taskq_tasks_dependents_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ended_ids bigint[];
    ended_statuses text[];
BEGIN
    -- A deleted parent that had not completed cancels its waiting children.
    SELECT array_agg(o.id ORDER BY o.id), array_agg('DELETED'::text ORDER BY o.id)
      INTO ended_ids, ended_statuses
      FROM old_rows o WHERE o.has_dependents AND o.status <> 'COMPLETED';
    IF ended_ids IS NOT NULL THEN
        PERFORM taskq_settle_dependents(ended_ids, ended_statuses);
    END IF;
    DELETE FROM task_dependencies d USING old_rows o
     WHERE o.has_dependents AND d.parent_id = o.id;
    DELETE FROM task_dependencies d
     USING (SELECT o.id, unnest(o.depends_on) AS parent_id
              FROM old_rows o WHERE o.depends_on IS NOT NULL) c
     WHERE d.parent_id = c.parent_id AND d.task_id = c.id;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_dependents_deleted() IS
    'After a DELETE of tasks: cancel the waiting children of unfinished parents; drop the edges.';

CREATE TRIGGER tasks_updated_dependents AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_dependents_updated();
CREATE TRIGGER tasks_deleted_dependents AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_dependents_deleted();
"""

# After the commit of the columns: validating scans the table under a lock that lets
# writes go on, and the indexes build CONCURRENTLY.
CONCURRENT = (
    "ALTER TABLE tasks VALIDATE CONSTRAINT ck_tasks_unique_for",
    "ALTER TABLE tasks VALIDATE CONSTRAINT ck_tasks_progress",
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_tasks_unique_unfinished"
    " ON tasks (user_id, unique_key)"
    " WHERE unique_key IS NOT NULL AND unique_window IS NULL"
    " AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')",
    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_tasks_unique_window"
    " ON tasks (user_id, unique_key, unique_window) WHERE unique_window IS NOT NULL",
)

DOWNGRADE = r"""
DROP INDEX IF EXISTS uq_tasks_unique_unfinished;
DROP INDEX IF EXISTS uq_tasks_unique_window;
DROP TRIGGER tasks_updated_dependents ON tasks;
DROP TRIGGER tasks_deleted_dependents ON tasks;
DROP FUNCTION taskq_tasks_dependents_updated();
DROP FUNCTION taskq_tasks_dependents_deleted();
DROP FUNCTION taskq_settle_dependents(bigint[], text[]);
DROP FUNCTION taskq_unique_window(integer);
DROP TABLE task_dependencies;
-- Waiting tasks lose their parents: they become due (the history keeps their path, relabelled).
UPDATE tasks SET status = 'PENDING', run_at = greatest(scheduled_at, now()), updated_at = now()
 WHERE status = 'WAITING';
UPDATE task_history SET from_status = 'PENDING' WHERE from_status = 'WAITING';
UPDATE task_history SET to_status = 'PENDING' WHERE to_status = 'WAITING';
-- 0005's map, verbatim.
CREATE OR REPLACE FUNCTION taskq_webhook_events(to_status task_status) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE to_status
               WHEN 'PENDING'    THEN ARRAY['task.queued']
               WHEN 'PROCESSING' THEN ARRAY['task.started']
               WHEN 'RETRYING'   THEN ARRAY['task.retrying']
               WHEN 'COMPLETED'  THEN ARRAY['task.succeeded']
               WHEN 'FAILED'     THEN ARRAY['task.failed']
               WHEN 'CANCELLED'  THEN ARRAY['task.cancelled', 'task.revoked']
           END
$$;
ALTER TABLE tasks
    DROP CONSTRAINT ck_tasks_unique_for,
    DROP CONSTRAINT ck_tasks_progress,
    DROP COLUMN unique_key,
    DROP COLUMN unique_for,
    DROP COLUMN unique_window,
    DROP COLUMN snoozes,
    DROP COLUMN progress,
    DROP COLUMN progress_message,
    DROP COLUMN progress_at,
    DROP COLUMN depends_on,
    DROP COLUMN pending_parents,
    DROP COLUMN has_dependents;
DELETE FROM pg_enum WHERE enumtypid = 'task_status'::regtype AND enumlabel = 'WAITING';
"""


def upgrade() -> None:
    """The enum value (committed first), the columns, table and triggers, then the indexes."""
    with op.get_context().autocommit_block():
        op.execute(ENUM)
    op.execute(UPGRADE)
    with op.get_context().autocommit_block():
        for statement in CONCURRENT:
            op.execute(statement)


def downgrade() -> None:
    """Back to 0008: no WAITING tasks, no steering columns, no WAITING label."""
    op.execute(DOWNGRADE)
