"""History partitioned by day; autovacuum tuned for the hot ``tasks`` table; table health.

``task_history`` becomes a table range-partitioned on ``created_at``: one
partition per UTC day in schema ``taskq_history``, a default partition that
catches a row no daily partition covers (so no transition can ever fail for a
missing partition), and the rows written before this migration in one
partition for the past. The worker leader creates the days ahead
(``taskq_history_add_partitions``) and drops whole days older than
TASKQ_HISTORY_DAYS (``taskq_history_drop_partitions``): retention is a catalog
change, never a DELETE, a long lock or a table rewrite.

Safe on a big history, while old workers run. Three steps:

1. A CHECK ``created_at < B`` is added ``NOT VALID`` (no scan), B the UTC
   midnight at least a day ahead, so rows written meanwhile still pass.
2. Outside a transaction: the CHECK is validated (SHARE UPDATE EXCLUSIVE: it
   scans while inserts go on) and the unique index ``(id, created_at)`` the new
   primary key needs is built ``CONCURRENTLY``.
3. One short transaction (``lock_timeout`` 5 s: rather fail, and be run again,
   than queue every writer behind a long reader): the old table moves to
   ``taskq_history``, its identity becomes a plain sequence with the same next
   value, the partitioned ``task_history`` is created and the old table
   ATTACHed for ``[MINVALUE, B)``. The validated CHECK proves the bound, and
   the old indexes match the new ones (an index another migration added to
   the old table is made on the new one first), so ATTACH neither scans nor
   builds.
   The views that read ``task_history`` are re-created from their own
   definitions (a view follows a table by oid, not by name).

Each step can be run again after a failure. The trigger functions name
``task_history`` in their text, so they insert into the new table as soon as
the switch commits (their plans are re-made); old workers notice nothing but a
short wait. History ids keep their sequence, so SSE event ids, Last-Event-ID
resumes and the ``(xact_id, id)`` order go on across the switch and across
partitions. The primary key is ``(id, created_at)`` (a partitioned table's key
must hold the partition key); ids stay unique because one sequence hands them out.

``taskq_tasks_updated()`` changes in one line: its lookup of a task's
previous place (0008) reads only the partitions from an hour before the
transaction began. A row written before the transaction began was written by a
transaction that took its id first, so it can never hold a later place; the
hour is a margin for the clock. Probing every kept day for every transition
(35 partitions at the default 30 days) cost half the drain throughput.

``tasks`` autovacuum: a status change can never be a HOT update (``status`` is
in the partial indexes' predicates), so every transition leaves a dead tuple
and dead index entries in the claim index. At the default scale factor (0.2)
a 10M-row table waits for 2M dead tuples before a vacuum while the claim scan
wades through them; ``autovacuum_vacuum_scale_factor = 0.01`` with a threshold
of 1000 vacuums after ~1% (100k at 10M): cheap in Postgres 15, which skips
all-visible pages (old finished tasks) and bypasses index vacuuming below
2% dead pages. ``autovacuum_vacuum_insert_scale_factor = 0.02`` keeps the
visibility map of a fast-growing table current (index-only scans, freezing in
small steps); ``autovacuum_analyze_scale_factor = 0.02`` keeps the status
statistics fresh as the backlog moves; ``autovacuum_vacuum_cost_delay = 1``
(ms, default 2) lets a vacuum of the hot table finish within a drain.
``fillfactor`` stays 80 (0001): the free fifth of each page takes the new
version of an updated row on the same page, even when it cannot be HOT.
These settings take SHARE UPDATE EXCLUSIVE and rewrite nothing.

``table_health``: per taskq table (history partitions summed into it): live and
dead tuples, table and index bytes, last (auto)vacuum and analyze;
``task_history_partitions``: every partition with its bounds and size.

Downgrade copies every history row back into one plain table: it rewrites the
history under an exclusive lock; take a maintenance window for a big one.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Step 1: the bound B of the partition for the past, proved later without a long lock.
MARK_BOUND = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'task_history'::regclass
                      AND conname = 'ck_task_history_before_partitions') THEN
        EXECUTE format('ALTER TABLE task_history ADD CONSTRAINT ck_task_history_before_partitions'
                       ' CHECK (created_at < %L) NOT VALID',
                       date_trunc('day', now(), 'UTC') + interval '48 hours');
    END IF;
END $$;
"""

# Step 2, outside a transaction (an index a failed run left invalid is built again).
PREPARE = [
    "ALTER TABLE task_history VALIDATE CONSTRAINT ck_task_history_before_partitions",
    "DROP INDEX CONCURRENTLY IF EXISTS uq_task_history_id_created_at",
    "CREATE UNIQUE INDEX CONCURRENTLY uq_task_history_id_created_at"
    " ON task_history (id, created_at)",
]

# Re-creating the views that read a table: each from its own definition, read before
# the table is swapped (pg_get_viewdef names tables as the search path finds them).
SAVE_VIEWS = r"""
CREATE TEMP TABLE taskq_saved_views ON COMMIT DROP AS
SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS definition
  FROM pg_depend d
  JOIN pg_rewrite r ON r.oid = d.objid
  JOIN pg_class v ON v.oid = r.ev_class
 WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = 'task_history'::regclass AND v.oid <> 'task_history'::regclass;
"""
RESTORE_VIEWS = r"""
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT name, definition FROM taskq_saved_views ORDER BY name LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v.name, v.definition);
    END LOOP;
END $$;
"""

# Step 3: the switch, in one transaction.
SWITCH = r"""
SET LOCAL lock_timeout = '5s';
LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE;
CREATE SCHEMA taskq_history;
COMMENT ON SCHEMA taskq_history IS 'The partitions of task_history (one per UTC day, the default, the past).';

CREATE SEQUENCE taskq_history_ids AS bigint;
SELECT setval('taskq_history_ids', last_value, is_called) FROM task_history_id_seq;
ALTER TABLE task_history ALTER COLUMN id DROP IDENTITY;
ALTER SEQUENCE taskq_history_ids RENAME TO task_history_id_seq;
ALTER TABLE task_history SET SCHEMA taskq_history;
ALTER TABLE taskq_history.task_history RENAME TO task_history_past;
ALTER TABLE taskq_history.task_history_past
    DROP CONSTRAINT pk_task_history,
    ADD CONSTRAINT task_history_past_pkey PRIMARY KEY USING INDEX uq_task_history_id_created_at;
ALTER INDEX taskq_history.ix_task_history_task_id RENAME TO task_history_past_task_id_id_idx;
ALTER INDEX taskq_history.ix_task_history_xact_id RENAME TO task_history_past_xact_id_id_idx;

CREATE TABLE task_history (
    id          bigint NOT NULL DEFAULT nextval('task_history_id_seq'),
    task_id     bigint NOT NULL,
    user_id     bigint,
    from_status task_status,
    to_status   task_status NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    xact_id     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT pk_task_history PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE task_history_id_seq OWNED BY task_history.id;
CREATE INDEX ix_task_history_task_id ON task_history (task_id, id);
CREATE INDEX ix_task_history_xact_id ON task_history (xact_id, id);
COMMENT ON TABLE task_history IS
    'One row per status transition, written by trigger; its id is the SSE event id. Partitioned by day (taskq_history).';
COMMENT ON COLUMN task_history.from_status IS 'NULL for the creation of the task.';
COMMENT ON COLUMN task_history.xact_id IS
    'Place in the all-tasks order (xact_id, id): the writing transaction, or the task''s previous row''s if later; 0 before migration 0008.';
COMMENT ON COLUMN task_history.created_at IS 'The partition key: rows live in the partition of their UTC day.';

DO $$
DECLARE
    bound timestamptz;
    extra record;
BEGIN
    -- An index another migration gave the old table is made on the new one too (on the
    -- empty parent it costs nothing; ATTACH then adopts the old table's, no build).
    FOR extra IN SELECT pg_get_indexdef(i.indexrelid) AS def
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = 'taskq_history.task_history_past'::regclass
                    AND c.relname NOT IN ('task_history_past_pkey',
                                          'task_history_past_task_id_id_idx',
                                          'task_history_past_xact_id_id_idx') LOOP
        EXECUTE replace(extra.def, ' ON taskq_history.task_history_past ', ' ON task_history ');
    END LOOP;
    SELECT substring(pg_get_constraintdef(oid) FROM '''([^'']+)''')::timestamptz INTO bound
      FROM pg_constraint
     WHERE conrelid = 'taskq_history.task_history_past'::regclass
       AND conname = 'ck_task_history_before_partitions';
    EXECUTE format('ALTER TABLE task_history ATTACH PARTITION taskq_history.task_history_past'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', bound);
END $$;
ALTER TABLE taskq_history.task_history_past DROP CONSTRAINT ck_task_history_before_partitions;
CREATE TABLE taskq_history.task_history_default PARTITION OF task_history DEFAULT;
COMMENT ON TABLE taskq_history.task_history_default IS
    'Rows no daily partition covered when written; the leader moves them into the day it creates.';
"""

FUNCTIONS = r"""
CREATE VIEW task_history_partitions AS
SELECT c.relname AS partition,
       CASE WHEN b.bounds IS NULL THEN NULL
            WHEN b.bounds[1] = 'MINVALUE' THEN '-infinity'::timestamptz
            ELSE trim(BOTH '''' FROM b.bounds[1])::timestamptz END AS from_time,
       CASE WHEN b.bounds IS NULL THEN NULL
            ELSE trim(BOTH '''' FROM b.bounds[2])::timestamptz END AS to_time,
       b.bounds IS NULL AS is_default,
       c.reltuples::bigint AS estimated_rows,
       pg_total_relation_size(c.oid) AS total_bytes
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                          'FROM \((.+)\) TO \((.+)\)') AS bounds) b
 WHERE i.inhparent = 'task_history'::regclass
 ORDER BY is_default, from_time;
COMMENT ON VIEW task_history_partitions IS
    'The partitions of task_history: UTC time range (none for the default), estimated rows, bytes.';

CREATE FUNCTION taskq_history_add_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql SET lock_timeout = '2s' AS $$
DECLARE
    day timestamptz;
    last_day timestamptz := date_trunc('day', now(), 'UTC') + make_interval(hours => 24 * days_ahead);
    made integer := 0;
    part text;
BEGIN
    -- From the end of the newest daily partition (or today), one partition per UTC day.
    SELECT greatest(max(to_time), date_trunc('day', now(), 'UTC')) INTO day
      FROM task_history_partitions WHERE NOT is_default;
    WHILE day <= last_day LOOP
        part := 'task_history_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
        -- A table of its own, then ATTACH: that takes SHARE UPDATE EXCLUSIVE on
        -- task_history, where CREATE TABLE … PARTITION OF would block every writer.
        EXECUTE format('CREATE TABLE taskq_history.%I (LIKE task_history INCLUDING DEFAULTS)', part);
        -- Rows of that day the default partition caught move with their ids and places.
        EXECUTE format('WITH moved AS (DELETE FROM taskq_history.task_history_default'
                       ' WHERE created_at >= %L AND created_at < %L RETURNING *)'
                       ' INSERT INTO taskq_history.%I SELECT * FROM moved',
                       day, day + interval '24 hours', part);
        EXECUTE format('ALTER TABLE task_history ATTACH PARTITION taskq_history.%I'
                       ' FOR VALUES FROM (%L) TO (%L)', part, day, day + interval '24 hours');
        made := made + 1;
        day := day + interval '24 hours';
    END LOOP;
    RETURN made;
END $$;
COMMENT ON FUNCTION taskq_history_add_partitions(integer) IS
    'Create the daily task_history partitions through days_ahead UTC days from today; how many.';

CREATE FUNCTION taskq_history_drop_partitions(keep_days integer) RETURNS integer
LANGUAGE plpgsql SET lock_timeout = '2s' AS $$
DECLARE
    p record;
    dropped integer := 0;
BEGIN
    -- Whole partitions whose every row is older than keep_days; the lock is a
    -- catalog change's, and lock_timeout keeps writers from queueing behind a long wait.
    FOR p IN SELECT partition FROM task_history_partitions
              WHERE NOT is_default AND to_time <= now() - make_interval(hours => 24 * keep_days)
              ORDER BY to_time LOOP
        EXECUTE format('DROP TABLE taskq_history.%I', p.partition);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
COMMENT ON FUNCTION taskq_history_drop_partitions(integer) IS
    'Drop the task_history partitions entirely older than keep_days days; how many.';

CREATE VIEW table_health AS
SELECT coalesce(parent.relname, c.relname)::text AS table_name,
       count(*)                                  AS partitions,
       sum(s.n_live_tup)::bigint                 AS live_tuples,
       sum(s.n_dead_tup)::bigint                 AS dead_tuples,
       round(100.0 * sum(s.n_dead_tup) / nullif(sum(s.n_live_tup + s.n_dead_tup), 0), 1)
                                                 AS dead_percent,
       sum(pg_table_size(c.oid))::bigint         AS table_bytes,
       sum(pg_indexes_size(c.oid))::bigint       AS index_bytes,
       max(greatest(s.last_vacuum, s.last_autovacuum)) AS last_vacuum,
       max(greatest(s.last_analyze, s.last_autoanalyze)) AS last_analyze
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_stat_user_tables s ON s.relid = c.oid
  LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
  LEFT JOIN pg_class parent ON parent.oid = i.inhparent
 WHERE c.relkind = 'r' AND n.nspname IN ('public', 'taskq_history')
   AND c.relname <> 'alembic_version'
 GROUP BY 1
 ORDER BY 1;
COMMENT ON VIEW table_health IS
    'Per taskq table (history partitions summed): live and dead tuples, bytes, last vacuum and analyze.';

SELECT taskq_history_add_partitions(3);

ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                       autovacuum_vacuum_insert_scale_factor = 0.02,
                       autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1);
"""

# The downgrade: what upgrade() added goes first (the partitions view reads
# task_history's oid, so it must not be taken for a view to keep).
UNDO_ADDITIONS = r"""
ALTER TABLE tasks RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                         autovacuum_vacuum_insert_scale_factor,
                         autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay);
DROP VIEW table_health;
DROP FUNCTION taskq_history_drop_partitions(integer);
DROP FUNCTION taskq_history_add_partitions(integer);
DROP VIEW task_history_partitions;
"""

# Then every row into one plain table, which takes the name (and the views) before the
# partitioned table and its schema go.
FLATTEN = r"""
SET LOCAL lock_timeout = '5s';
LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE;
CREATE TABLE taskq_history_flat (
    id          bigint NOT NULL,
    task_id     bigint NOT NULL,
    user_id     bigint,
    from_status task_status,
    to_status   task_status NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    xact_id     xid8 NOT NULL DEFAULT pg_current_xact_id()
);
INSERT INTO taskq_history_flat SELECT * FROM task_history ORDER BY id;
CREATE TEMP TABLE taskq_history_next ON COMMIT DROP AS
SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS next_id
  FROM task_history_id_seq;
ALTER TABLE task_history SET SCHEMA taskq_history;
ALTER TABLE taskq_history_flat RENAME TO task_history;
ALTER TABLE task_history ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
DO $$
BEGIN
    EXECUTE format('ALTER TABLE task_history ALTER COLUMN id RESTART WITH %s',
                   (SELECT next_id FROM taskq_history_next));
END $$;
ALTER TABLE task_history ADD CONSTRAINT pk_task_history PRIMARY KEY (id);
CREATE INDEX ix_task_history_task_id ON task_history (task_id, id);
CREATE INDEX ix_task_history_xact_id ON task_history (xact_id, id);
COMMENT ON TABLE task_history IS 'One row per status transition, written by trigger; its id is the SSE event id.';
COMMENT ON COLUMN task_history.from_status IS 'NULL for the creation of the task.';
COMMENT ON COLUMN task_history.xact_id IS
    'Place in the all-tasks order (xact_id, id): the writing transaction, or the task''s previous row''s if later; 0 before migration 0008.';
"""


# The transition trigger of 0008 with its lookup of the task's previous place kept to
# recent partitions (with every day of TASKQ_HISTORY_DAYS kept, probing them all for
# every transition halved the drain).
TRIGGER = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
DECLARE
    sent bigint;
    delivery_ids bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload, n.callback_url,
               n.callback_events, n.callback_max_attempts,
               CASE WHEN n.callback_url IS NOT NULL
                    THEN to_jsonb(n) - 'callback_secret' - 'callback_headers' END AS snapshot
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
    ), overtaken AS (
        -- Only a transaction younger than this one can have written a task's previous
        -- transition with a later place; while none has ended, the lookups are skipped.
        SELECT pg_snapshot_xmax(pg_current_snapshot()) > pg_current_xact_id() AS younger_ended
    ), hist AS (
        -- A transaction that took its id before the one that wrote the task's previous
        -- transition (it waited for that one's row lock) keeps that one's place, so a task's
        -- transitions are in the all-tasks order as they happened. Only a row written after
        -- this transaction began can hold a later place (a row written before it began was
        -- written by a transaction that took its id first), so the lookup reads the
        -- partitions from an hour before it began (a margin for the clock), not every day kept.
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id,
                                  error, xact_id)
        SELECT c.id, c.user_id, c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('FAILED', 'RETRYING') THEN c.error END,
               CASE WHEN (SELECT younger_ended FROM overtaken)
                    THEN greatest(pg_current_xact_id(),
                                  (SELECT p.xact_id FROM task_history p
                                    WHERE p.task_id = c.id
                                      AND p.created_at > now() - interval '1 hour'
                                    ORDER BY p.id DESC LIMIT 1))
                    ELSE pg_current_xact_id() END
          FROM changed c ORDER BY c.id
        RETURNING id, task_id, user_id, to_status
    ), dead AS (
        INSERT INTO dead_letters (task_id, user_id, task_type, queue, payload, error, attempts)
        SELECT id, user_id, task_type, queue, payload, error, attempts
          FROM changed WHERE to_status = 'FAILED'
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM changed WHERE to_status IN ('PENDING', 'RETRYING')) q
    ), cancels AS (
        SELECT pg_notify('taskq_cancel', id::text)
          FROM changed WHERE from_status = 'PROCESSING' AND to_status = 'CANCELLED'
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM (SELECT c.*, (
                       -- The first event of the transition the task subscribed to (NULL
                       -- callback_events: succeeded, failed, cancelled).
                       SELECT x.name
                         FROM unnest(taskq_webhook_events(c.to_status))
                              WITH ORDINALITY AS x(name, pos)
                        WHERE x.name = ANY(coalesce(c.callback_events,
                                  ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                        ORDER BY x.pos
                        LIMIT 1) AS event
                  FROM changed c WHERE c.callback_url IS NOT NULL) due
         WHERE event IS NOT NULL
         ORDER BY id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT array_agg(id ORDER BY id) FROM deliveries)
      INTO sent, delivery_ids;
    IF delivery_ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
    END IF;
    RETURN NULL;
END $$;
"""

# 0008's trigger function, verbatim.
TRIGGER_0008 = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
DECLARE
    sent bigint;
    delivery_ids bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload, n.callback_url,
               n.callback_events, n.callback_max_attempts,
               CASE WHEN n.callback_url IS NOT NULL
                    THEN to_jsonb(n) - 'callback_secret' - 'callback_headers' END AS snapshot
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
    ), overtaken AS (
        -- Only a transaction younger than this one can have written a task's previous
        -- transition with a later place; while none has ended, the lookups are skipped.
        SELECT pg_snapshot_xmax(pg_current_snapshot()) > pg_current_xact_id() AS younger_ended
    ), hist AS (
        -- A transaction that took its id before the one that wrote the task's previous
        -- transition (it waited for that one's row lock) keeps that one's place, so a task's
        -- transitions are in the all-tasks order as they happened.
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id,
                                  error, xact_id)
        SELECT c.id, c.user_id, c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('FAILED', 'RETRYING') THEN c.error END,
               CASE WHEN (SELECT younger_ended FROM overtaken)
                    THEN greatest(pg_current_xact_id(),
                                  (SELECT p.xact_id FROM task_history p
                                    WHERE p.task_id = c.id ORDER BY p.id DESC LIMIT 1))
                    ELSE pg_current_xact_id() END
          FROM changed c ORDER BY c.id
        RETURNING id, task_id, user_id, to_status
    ), dead AS (
        INSERT INTO dead_letters (task_id, user_id, task_type, queue, payload, error, attempts)
        SELECT id, user_id, task_type, queue, payload, error, attempts
          FROM changed WHERE to_status = 'FAILED'
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM changed WHERE to_status IN ('PENDING', 'RETRYING')) q
    ), cancels AS (
        SELECT pg_notify('taskq_cancel', id::text)
          FROM changed WHERE from_status = 'PROCESSING' AND to_status = 'CANCELLED'
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM (SELECT c.*, (
                       -- The first event of the transition the task subscribed to (NULL
                       -- callback_events: succeeded, failed, cancelled).
                       SELECT x.name
                         FROM unnest(taskq_webhook_events(c.to_status))
                              WITH ORDINALITY AS x(name, pos)
                        WHERE x.name = ANY(coalesce(c.callback_events,
                                  ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                        ORDER BY x.pos
                        LIMIT 1) AS event
                  FROM changed c WHERE c.callback_url IS NOT NULL) due
         WHERE event IS NOT NULL
         ORDER BY id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT array_agg(id ORDER BY id) FROM deliveries)
      INTO sent, delivery_ids;
    IF delivery_ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
    END IF;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    """Partition task_history by day in three steps; tune tasks; add the health views."""
    op.execute(MARK_BOUND)
    with op.get_context().autocommit_block():  # commits what came before
        for statement in PREPARE:
            op.execute(statement)
        # The switch in a transaction of its own: its exclusive lock lasts as long as
        # the switch, not as long as whatever migrations come after it in this run.
        op.execute("BEGIN;" + SAVE_VIEWS + SWITCH + RESTORE_VIEWS + "COMMIT;")
    op.execute(FUNCTIONS)
    op.execute(TRIGGER)


def downgrade() -> None:
    """Back to one plain task_history (every row copied) and 0008's tasks settings."""
    op.execute(TRIGGER_0008)
    op.execute(UNDO_ADDITIONS)
    op.execute(SAVE_VIEWS)
    op.execute(FLATTEN)
    op.execute(RESTORE_VIEWS)
    op.execute("DROP SCHEMA taskq_history CASCADE")
