-- name: roll_up_task_counts
-- Fold the oldest %(limit)s pending deltas into the counters, in one statement: what it deletes it adds, so no delta is lost or counted twice.
-- Rows a concurrent roll-up holds are skipped, rows not yet committed are not seen (the next round takes them);
-- a reader's snapshot sees a delta either pending or rolled up, never both. Counters are upserted in key
-- order, so two roll-ups at once (two leaders for a moment) wait for each other instead of deadlocking.
WITH batch AS (
    SELECT id FROM task_count_deltas ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM task_count_deltas d USING batch WHERE d.id = batch.id
    RETURNING d.user_id, d.queue, d.task_type, d.status, d.tasks, d.entered, d.at
), by_key AS (
    INSERT INTO task_counts AS c (user_id, queue, task_type, status, tasks)
    SELECT user_id, queue, task_type, status, sum(tasks)
      FROM taken GROUP BY 1, 2, 3, 4 HAVING sum(tasks) <> 0
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (user_id, queue, task_type, status) DO UPDATE SET tasks = c.tasks + excluded.tasks
), by_queue AS (
    INSERT INTO queue_counts AS c (queue, status, tasks)
    SELECT queue, status, sum(tasks)
      FROM taken GROUP BY 1, 2 HAVING sum(tasks) <> 0
     ORDER BY 1, 2
    ON CONFLICT (queue, status) DO UPDATE SET tasks = c.tasks + excluded.tasks
), entries AS (
    INSERT INTO status_entries AS e (queue, status, at, entered)
    SELECT queue, status, date_trunc('second', at), sum(entered)
      FROM taken WHERE entered > 0 GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3
    ON CONFLICT (queue, status, at) DO UPDATE SET entered = e.entered + excluded.entered
)
SELECT count(*) AS deltas FROM taken;

-- name: forget_old_status_entries
-- Drop per-second transition counts older than the two minutes queue_stats may read.
DELETE FROM status_entries WHERE at < now() - interval '2 minutes';

-- name: forget_empty_task_counts
-- Drop counters that reached zero (a deleted user's, a queue gone quiet); a later delta recreates them.
DELETE FROM task_counts WHERE tasks = 0;

-- name: counted_tasks
-- How many tasks match {where} (fragments on user_id, queue, task_type, status), from the counters and the pending deltas.
SELECT coalesce(sum(t.tasks), 0)::bigint AS count
  FROM (SELECT user_id, queue, task_type, status, tasks FROM task_counts
        UNION ALL
        SELECT user_id, queue, task_type, status, tasks FROM task_count_deltas) t
 WHERE {where};

-- name: admin_counted_tasks
-- counted_tasks for the admin list, whose fragments may name the owner (u).
SELECT coalesce(sum(t.tasks), 0)::bigint AS count
  FROM (SELECT user_id, queue, task_type, status, tasks FROM task_counts
        UNION ALL
        SELECT user_id, queue, task_type, status, tasks FROM task_count_deltas) t
  LEFT JOIN users u ON u.id = t.user_id
 WHERE {where};

-- name: queue_counted_tasks
-- counted_tasks when only queue and status filter: from the per-queue counters.
SELECT coalesce(sum(t.tasks), 0)::bigint AS count
  FROM (SELECT queue, status, tasks FROM queue_counts
        UNION ALL
        SELECT queue, status, tasks FROM task_count_deltas) t
 WHERE {where};

-- name: task_stats
-- The caller's tasks per status, every status listed (in lifecycle order), from the counters; with the snapshot they were read in.
-- pg_current_snapshot() is this statement's own snapshot: the counts hold exactly the transitions of the transactions it sees.
SELECT s.status::text AS status, coalesce(sum(c.tasks), 0)::bigint AS count,
       pg_current_snapshot()::text AS snapshot
  FROM unnest(enum_range(NULL::task_status)) AS s(status)
  LEFT JOIN (SELECT status, tasks FROM task_counts WHERE user_id = %(user_id)s
             UNION ALL
             SELECT status, tasks FROM task_count_deltas WHERE user_id = %(user_id)s) c
    ON c.status = s.status
 GROUP BY s.status
 ORDER BY s.status;
