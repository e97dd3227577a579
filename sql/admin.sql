-- name: admin_list_tasks
-- A page of every user's tasks with their owners; {where} and {order} as in list_tasks.
SELECT t.*, u.username AS owner_username, u.email AS owner_email
  FROM tasks t LEFT JOIN users u ON u.id = t.user_id
 WHERE {where}
 ORDER BY {order}
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: admin_count_tasks
-- How many tasks of every user match the filters.
SELECT count(*) AS count FROM tasks t LEFT JOIN users u ON u.id = t.user_id WHERE {where};

-- name: task_filter_username
-- Admin list fragment: one owner by username (case-insensitive).
lower(u.username) = lower(%(username)s)

-- name: admin_queue_stats
-- Per queue: waiting, due, running, oldest due age, completions in the last minute.
SELECT * FROM queue_stats ORDER BY queue;

-- name: admin_live_workers
-- Workers heard from in the last minute.
SELECT * FROM live_workers ORDER BY id;
