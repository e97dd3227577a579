-- name: delete_finished_tasks
-- One window of %(limit)s tasks after id %(after)s: its COMPLETED/FAILED tasks finished more than %(days)s days ago are deleted (the trigger drops their history); where the window ended, and whether every task in it is younger than the horizon (the walk stops there).
-- A keyset walk of the primary key (no index on completed_at: every completion would pay for it): each window reads at most %(limit)s tasks, so no batch reads on to the end of the table.
WITH scanned AS MATERIALIZED (
    SELECT id, created_at FROM tasks WHERE id > %(after)s ORDER BY id LIMIT %(limit)s
), doomed AS (
    SELECT id FROM tasks
     WHERE id > %(after)s AND id <= (SELECT max(id) FROM scanned)
       AND status IN ('COMPLETED', 'FAILED')
       AND completed_at < now() - make_interval(days => %(days)s)
       FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM tasks t USING doomed WHERE t.id = doomed.id RETURNING t.id
)
SELECT (SELECT max(id) FROM scanned) AS last_id,
       (SELECT count(*) FROM deleted) AS deleted,
       coalesce((SELECT min(created_at) FROM scanned)
                >= now() - make_interval(days => %(days)s), true) AS past_horizon;

-- name: delete_old_ticks
-- Forget periodic ticks older than the clean-up horizon (their uniqueness no longer matters).
DELETE FROM periodic_ticks WHERE tick_at < now() - make_interval(days => greatest(%(days)s, 1));

-- name: delete_silent_workers
-- Drop worker rows silent for a day: processes that died without saying goodbye.
DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day';

-- name: add_history_partitions
-- The daily task_history partitions through %(days_ahead)s UTC days ahead (rows the default partition caught move in).
SELECT taskq_history_add_partitions(%(days_ahead)s) AS made;

-- name: drop_history_partitions
-- Drop the task_history partitions whose every row is older than %(keep_days)s days (a catalog change, lock_timeout 2 s).
SELECT taskq_history_drop_partitions(%(keep_days)s) AS dropped;

-- name: invalid_queue_indexes
-- What interrupted REINDEX CONCURRENTLY runs left on tasks: invalid copies (_ccnew) that every
-- write still maintains, or invalid originals (_ccold) the swap did not drop.
SELECT c.relname AS name
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'tasks'::regclass AND NOT i.indisvalid
   AND c.relname ~ '_cc(new|old)[0-9]*$'
 ORDER BY 1;

-- name: queue_index_sizes
-- The queue's partial indexes: their size, and what their live entries need (the entries
-- vacuum or analyze last counted, at 64 bytes each, and 16 pages of room).
SELECT c.relname AS name, pg_relation_size(c.oid) AS bytes,
       greatest(c.reltuples, 0)::bigint * 64 + 16 * current_setting('block_size')::bigint AS needed
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'tasks'::regclass AND c.relname IN ('ix_tasks_claim', 'ix_tasks_lease')
 ORDER BY 1;

-- name: index_bytes
-- The size of one index.
SELECT pg_relation_size(%(name)s::regclass) AS bytes;

-- name: drop_index_concurrently
-- Drop {index} (an invalid leftover) without blocking the table's writers.
DROP INDEX CONCURRENTLY IF EXISTS {index};

-- name: reindex_concurrently
-- Rebuild {index} beside the old one, then swap them: no claim, insert or completion waits.
REINDEX INDEX CONCURRENTLY {index};
