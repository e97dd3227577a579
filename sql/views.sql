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
