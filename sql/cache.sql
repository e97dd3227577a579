-- name: task_cache_version
-- The version of a task's cached detail: its newest history id (read before the detail).
SELECT coalesce(max(id), 0) AS version FROM task_history WHERE task_id = %(task_id)s;
