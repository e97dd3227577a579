-- name: fetch_events
-- The SSE event of each history id of one notification batch, with the task's current fields.
SELECT h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.id = ANY(%(ids)s)
 ORDER BY h.id;

-- name: stream_task_owner
-- A task the caller may follow (their own, or any for an admin): its status, or no row.
SELECT t.id, t.status, t.user_id
  FROM tasks t
  JOIN users u ON u.id = %(user_id)s
 WHERE t.id = %(task_id)s AND (t.user_id = u.id OR u.is_admin);

-- name: task_events_since
-- Replay of one task's transitions after the client's Last-Event-ID, oldest first.
SELECT h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.task_id = %(task_id)s AND h.id > %(after)s
 ORDER BY h.id
 LIMIT %(limit)s;

-- name: user_events_since
-- Replay of all of a user's transitions after the client's Last-Event-ID, oldest first.
-- Walks the primary key from that id (no user index: every history row would pay for it), so its cost is every user's events since the reconnect.
SELECT h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.user_id = %(user_id)s AND h.id > %(after)s
 ORDER BY h.id
 LIMIT %(limit)s;

-- name: all_events_since
-- Replay of every user's transitions after the admin's Last-Event-ID, oldest first (the primary key from that id).
SELECT h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.id > %(after)s
 ORDER BY h.id
 LIMIT %(limit)s;
