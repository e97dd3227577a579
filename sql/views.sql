-- Operator views: read them from psql (\dv), `taskq stats` and /api/v1/admin.
-- The views as the migrations at head define them. Migrations never read this
-- file: each carries its own SQL, so a view that changes needs a new migration
-- with the new text, and this file changes with it
-- (tests/integration/test_schema.py checks that the two agree).

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

CREATE OR REPLACE VIEW stuck_tasks AS
SELECT id, queue, task_type, worker_id, attempts, started_at, lease_expires_at,
       now() - lease_expires_at AS overdue
  FROM tasks
 WHERE status = 'PROCESSING' AND lease_expires_at < now();
COMMENT ON VIEW stuck_tasks IS 'Running tasks whose lease expired: their worker is gone; the reaper will return them.';

CREATE OR REPLACE VIEW live_workers AS
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.heartbeat_at,
       now() - w.heartbeat_at AS silent_for,
       (SELECT count(*) FROM tasks t WHERE t.status = 'PROCESSING' AND t.worker_id = w.id) AS running
  FROM workers w
 WHERE w.heartbeat_at > now() - interval '60 seconds';
COMMENT ON VIEW live_workers IS 'Workers heard from in the last minute, with the tasks they run.';

CREATE OR REPLACE VIEW recent_failures AS
SELECT h.id AS history_id, h.task_id, t.queue, t.task_type, h.to_status, h.attempt,
       h.error, h.created_at
  FROM task_history h JOIN tasks t ON t.id = h.task_id
 WHERE h.to_status IN ('FAILED', 'RETRYING')
   AND h.created_at > now() - interval '24 hours'
 ORDER BY h.id DESC;
COMMENT ON VIEW recent_failures IS 'Failed attempts of the last 24 hours, newest first.';

CREATE OR REPLACE VIEW task_history_partitions AS
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

CREATE OR REPLACE VIEW table_health AS
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

CREATE OR REPLACE VIEW queue_controls AS
WITH RECURSIVE waiting AS (
    -- The queues with waiting tasks, one probe of ix_tasks_claim per queue.
    (SELECT t.queue FROM tasks t WHERE t.status IN ('PENDING', 'RETRYING')
      ORDER BY t.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM tasks t
             WHERE t.status IN ('PENDING', 'RETRYING') AND t.queue > w.queue
             ORDER BY t.queue LIMIT 1)
      FROM waiting w WHERE w.queue IS NOT NULL
), served AS (
    -- Live as in live_workers: heard from in the last minute.
    SELECT s.queue, count(*) AS workers
      FROM workers w CROSS JOIN LATERAL unnest(w.queues) AS s(queue)
     WHERE w.heartbeat_at > now() - interval '60 seconds'
     GROUP BY s.queue
), known AS (
    SELECT name AS queue FROM queues
    UNION SELECT queue FROM served
    UNION SELECT queue FROM waiting WHERE queue IS NOT NULL
)
SELECT k.queue,
       coalesce(q.paused, false) AS paused,
       q.concurrency,
       q.rate_limit,
       q.rate_period,
       CASE WHEN q.rate_limit IS NOT NULL
            THEN q.rate_limit || '/' || trim_scale(extract(epoch FROM q.rate_period)) || 's'
       END AS rate,
       coalesce(q.description, '') AS description,
       coalesce(s.workers, 0) AS workers,
       EXISTS (SELECT 1 FROM waiting w WHERE w.queue = k.queue) AS has_waiting,
       coalesce(s.workers, 0) = 0
           AND EXISTS (SELECT 1 FROM waiting w WHERE w.queue = k.queue) AS unserved,
       q.updated_at
  FROM known k
  LEFT JOIN queues q ON q.name = k.queue
  LEFT JOIN served s ON s.queue = k.queue;
COMMENT ON VIEW queue_controls IS
    'Per queue: paused, limits, live workers serving it, and unserved = tasks waiting with no live worker.';
