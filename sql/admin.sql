-- name: admin_list_tasks
-- A page of every user's tasks with their owners; {where} and {order} as in list_tasks; with the snapshot they were read in.
SELECT t.*, u.username AS owner_username, u.email AS owner_email,
       pg_current_snapshot()::text AS snapshot
  FROM tasks t LEFT JOIN users u ON u.id = t.user_id
 WHERE {where}
 ORDER BY {order}
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: admin_count_tasks
-- How many tasks of every user match filters the counters cannot answer, counting at most %(count_limit)s.
SELECT count(*) AS count
  FROM (SELECT 1 FROM tasks t LEFT JOIN users u ON u.id = t.user_id WHERE {where}
         LIMIT %(count_limit)s) c;

-- name: admin_get_task
-- One task of any user, with its owner.
SELECT t.*, u.username AS owner_username, u.email AS owner_email
  FROM tasks t LEFT JOIN users u ON u.id = t.user_id
 WHERE t.id = %(task_id)s;

-- name: task_filter_username
-- Admin list fragment: one owner by username (case-insensitive).
lower(u.username) = lower(%(username)s)

-- name: admin_queue_stats
-- Per queue: waiting, due, running, oldest due age, completions in the last minute; with its
-- controls (paused, limits, live workers serving it, unserved) from queue_controls.
SELECT coalesce(s.queue, c.queue) AS queue,
       coalesce(s.waiting, 0) AS waiting, coalesce(s.due, 0) AS due,
       coalesce(s.running, 0) AS running, s.oldest_due_age,
       coalesce(s.completed_last_minute, 0) AS completed_last_minute,
       coalesce(s.failed_last_minute, 0) AS failed_last_minute,
       coalesce(c.paused, false) AS paused, c.concurrency, c.rate, c.rate_limit,
       extract(epoch FROM c.rate_period)::float8 AS rate_period,
       coalesce(c.description, '') AS description, coalesce(c.workers, 0) AS workers,
       coalesce(c.has_waiting, false) AS has_waiting, coalesce(c.unserved, false) AS unserved,
       c.updated_at
  FROM queue_stats s FULL JOIN queue_controls c ON c.queue = s.queue
 ORDER BY 1;

-- name: admin_live_workers
-- Workers heard from in the last minute, each with the tasks it runs now.
SELECT w.*,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                            'id', t.id, 'user_id', t.user_id, 'title', t.title,
                            'task_type', t.task_type, 'queue', t.queue,
                            'attempts', t.attempts, 'started_at', t.started_at)
                        ORDER BY t.id)
                   FROM tasks t
                  WHERE t.status = 'PROCESSING' AND t.worker_id = w.id), '[]') AS running_tasks
  FROM live_workers w
 ORDER BY w.id;

-- name: admin_stuck_tasks
-- Running tasks whose lease expired (the stuck_tasks view), longest overdue first.
SELECT * FROM stuck_tasks ORDER BY lease_expires_at, id LIMIT %(limit)s;
