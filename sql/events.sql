-- name: fetch_events
-- The SSE event of each history id of one notification batch written between since and until, with the task's current fields.
-- The bounds prune the partitions when the statement starts: a batch just written is looked for in the hour around now, not in every day kept (an id per partition, each).
SELECT h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.id = ANY(%(ids)s)
   AND h.created_at >= %(since)s::timestamptz AND h.created_at < %(until)s::timestamptz
 ORDER BY h.id;

-- name: stream_task_owner
-- A task the caller may follow (their own, or any for an admin): its status and progress, or no row.
SELECT t.id, t.status, t.user_id, t.progress, t.progress_message, t.progress_at
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
-- Replay of a user's transitions after a stream position, in the all-tasks order, final places only.
-- Walks ix_task_history_xact_id from that position (no user index: every history row would pay for it), so its cost is every user's events since then.
SELECT h.xact_id, h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at,
       h.xmin::text::bigint = mod(h.xact_id::text::bigint, 4294967296) AS place_is_writer
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE h.user_id = %(user_id)s
   AND (h.xact_id, h.id) > (%(xact_id)s::xid8, %(after)s)
   AND h.xact_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY h.xact_id, h.id
 LIMIT %(limit)s;

-- name: all_events_since
-- Replay of every user's transitions after a stream position (the admins' stream), in the all-tasks order, final places only.
SELECT h.xact_id, h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt, h.error,
       h.created_at, t.result, t.started_at, t.completed_at, t.updated_at,
       h.xmin::text::bigint = mod(h.xact_id::text::bigint, 4294967296) AS place_is_writer
  FROM task_history h
  LEFT JOIN tasks t ON t.id = h.task_id
 WHERE (h.xact_id, h.id) > (%(xact_id)s::xid8, %(after)s)
   AND h.xact_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY h.xact_id, h.id
 LIMIT %(limit)s;

-- name: event_position
-- The all-tasks place of one history id (a Last-Event-ID from a task stream, or from before 0008).
SELECT xact_id, id FROM task_history WHERE id = %(id)s;

-- name: events_start
-- Where a process joins the all-tasks order: the last final place, and the newest place of a committed row still waiting behind an open transaction.
SELECT coalesce(last.xact_id, '0') AS xact_id, coalesce(last.id, 0) AS id,
       (SELECT w.xact_id FROM task_history w
         WHERE w.xact_id >= pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY w.xact_id DESC LIMIT 1) AS waiting
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (
        SELECT h.xact_id, h.id FROM task_history h
         WHERE h.xact_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY h.xact_id DESC, h.id DESC
         LIMIT 1) last ON true;

-- name: ready_events
-- The all-tasks order after a place: rows now final (every transaction that could still write before them has ended) as events of the users asked for (all users for an admin's stream); then one row: the last place reached, rows passed, the horizon, and the newest place of an announced row still waiting.
-- place_is_writer: the row was inserted by its place's transaction itself (not by a subtransaction, nor under the place of the task's previous row), so a client may test that xact against a snapshot (GET /tasks/stats).
WITH ready AS MATERIALIZED (
    SELECT h.xact_id, h.id, h.task_id, h.user_id, h.from_status, h.to_status, h.attempt,
           h.error, h.created_at, h.xmin AS row_xmin
      FROM task_history h
     WHERE (h.xact_id, h.id) > (%(xact_id)s::xid8, %(after)s)
       AND h.xact_id < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY h.xact_id, h.id
     LIMIT %(limit)s
), unpassed AS MATERIALIZED (
    -- Announced rows this page did not pass, looked up by id one by one (not by a range of
    -- xact_id: behind a long transaction, what waits can be a lot).
    SELECT (SELECT w.xact_id FROM task_history w WHERE w.id = a.id) AS xact_id
      FROM unnest(%(announced)s::bigint[]) a(id)
     WHERE a.id NOT IN (SELECT id FROM ready))
SELECT 'event' AS kind, r.xact_id, r.id, r.task_id, r.user_id, r.from_status, r.to_status,
       r.attempt, r.error, r.created_at, t.result, t.started_at, t.completed_at, t.updated_at,
       r.row_xmin::text::bigint = mod(r.xact_id::text::bigint, 4294967296) AS place_is_writer,
       NULL::bigint AS passed, NULL::xid8 AS horizon, NULL::xid8 AS waiting
  FROM ready r
  LEFT JOIN tasks t ON t.id = r.task_id
 WHERE %(everyone)s OR r.user_id = ANY(%(user_ids)s)
UNION ALL
SELECT 'end', last.xact_id, last.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, (SELECT count(*) FROM ready), pg_snapshot_xmin(pg_current_snapshot()),
       (SELECT max(xact_id) FROM unpassed
         WHERE xact_id >= pg_snapshot_xmin(pg_current_snapshot()))
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT xact_id, id FROM ready ORDER BY xact_id DESC, id DESC LIMIT 1) last
    ON true;
