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
