-- name: insert_task
-- Create one task; with an Idempotency-Key already used by this user, nothing (no row back).
INSERT INTO tasks (user_id, title, description, task_type, payload, queue, priority,
                   scheduled_at, run_at, max_retries, retry_delay, timeout, tags, metadata,
                   idempotency_key, idempotency_fingerprint, callback_url, callback_events,
                   callback_headers, callback_secret, callback_max_attempts, callback_format,
                   trace_context)
VALUES (%(user_id)s, %(title)s, %(description)s, %(task_type)s, %(payload)s, %(queue)s,
        %(priority)s, %(scheduled_at)s, greatest(%(scheduled_at)s::timestamptz, now()),
        %(max_retries)s, %(retry_delay)s, %(timeout)s, %(tags)s, %(metadata)s,
        %(idempotency_key)s, %(idempotency_fingerprint)s, %(callback_url)s,
        %(callback_events)s, %(callback_headers)s, %(callback_secret)s,
        %(callback_max_attempts)s, %(callback_format)s, %(trace_context)s)
ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: get_task_by_idempotency_key
-- The task a user created earlier with this Idempotency-Key.
SELECT * FROM tasks WHERE user_id = %(user_id)s AND idempotency_key = %(idempotency_key)s;

-- name: reserve_task_ids
-- Ids for a batch of new tasks, and the transaction's now() (what the column defaults use).
-- The sequence is looked up once (a subquery), not once per id: 0.25 ms for 1,000, not 2.
SELECT ARRAY(SELECT nextval((SELECT pg_get_serial_sequence('tasks', 'id')::regclass))
               FROM generate_series(1, %(n)s)) AS ids,
       now() AS now;

-- name: copy_tasks
-- Load reserved-id tasks (COPY writes identity columns as given); defaults fill the rest.
COPY tasks (id, user_id, title, description, task_type, payload, queue, priority,
            scheduled_at, run_at, max_retries, retry_delay, timeout, tags, metadata,
            callback_url, callback_events, callback_headers, callback_secret,
            callback_max_attempts, callback_format, trace_context)
FROM STDIN (FORMAT BINARY);

-- name: list_tasks
-- A page of tasks; {where} and {order} are composed from the task_filter_* fragments.
SELECT t.* FROM tasks t
 WHERE {where}
 ORDER BY {order}
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_tasks
-- How many tasks match a list's filters.
SELECT count(*) AS count FROM tasks t WHERE {where};

-- name: task_filter_owner
-- List fragment: one owner's tasks (leads ix_tasks_user_created).
t.user_id = %(user_id)s

-- name: task_filter_status
-- List fragment: any of the given statuses.
t.status = ANY(%(status)s::task_status[])

-- name: task_filter_task_type
-- List fragment: one task type.
t.task_type = %(task_type)s

-- name: task_filter_queue
-- List fragment: one queue.
t.queue = %(queue)s

-- name: task_filter_priority
-- List fragment: one priority.
t.priority = %(priority)s

-- name: task_filter_tag
-- List fragment: tasks carrying a tag (array containment).
t.tags @> ARRAY[%(tag)s]::text[]

-- name: task_filter_start_date
-- List fragment: created at or after (a range on the column, so the index serves it).
t.created_at >= %(start_date)s

-- name: task_filter_end_date
-- List fragment: created before (exclusive bound).
t.created_at < %(end_date)s

-- name: task_filter_search
-- List fragment: text in title or description (pattern escaped by the caller).
(t.title ILIKE %(search)s OR t.description ILIKE %(search)s)

-- name: get_task
-- One of the caller's tasks.
SELECT * FROM tasks WHERE id = %(task_id)s AND user_id = %(user_id)s;

-- name: task_history
-- Transitions of a task, oldest first.
SELECT id, from_status, to_status, attempt, worker_id, error, created_at
  FROM task_history
 WHERE task_id = %(task_id)s
 ORDER BY id;

-- name: delete_task
-- Delete one of the caller's tasks unless a worker runs it (the trigger drops its history).
DELETE FROM tasks
 WHERE id = %(task_id)s AND user_id = %(user_id)s AND status <> 'PROCESSING'
RETURNING id;

-- name: cancel_task
-- Cancel a waiting or running task (a running one's worker hears taskq_cancel).
UPDATE tasks
   SET status = 'CANCELLED', completed_at = now(), updated_at = now()
 WHERE id = %(task_id)s AND user_id = %(user_id)s
   AND status IN ('PENDING', 'RETRYING', 'PROCESSING')
RETURNING *;

-- name: retry_task
-- Start a new attempt series of a failed or cancelled task; its open dead letters are closed.
WITH requeued AS (
    UPDATE tasks
       SET status = 'PENDING', attempts = 0, run_at = now(), result = NULL, error = NULL,
           started_at = NULL, completed_at = NULL, worker_id = NULL, lease_token = NULL,
           lease_expires_at = NULL, updated_at = now()
     WHERE id = %(task_id)s AND user_id = %(user_id)s AND status IN ('FAILED', 'CANCELLED')
    RETURNING *
), closed AS (
    UPDATE dead_letters SET reprocessed_at = now()
     WHERE task_id IN (SELECT id FROM requeued) AND reprocessed_at IS NULL
)
SELECT * FROM requeued;

-- name: task_stats
-- The caller's tasks per status, every status listed (in lifecycle order).
SELECT s.status::text AS status, count(t.id) AS count
  FROM unnest(enum_range(NULL::task_status)) AS s(status)
  LEFT JOIN tasks t ON t.status = s.status AND t.user_id = %(user_id)s
 GROUP BY s.status
 ORDER BY s.status;

-- name: list_dead_letters
-- A page of the caller's dead letters, newest first, with the task's current status.
SELECT d.*, t.status::text AS task_status
  FROM dead_letters d LEFT JOIN tasks t ON t.id = d.task_id
 WHERE d.user_id = %(user_id)s
 ORDER BY d.id DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_dead_letters
-- How many dead letters the caller has.
SELECT count(*) AS count FROM dead_letters WHERE user_id = %(user_id)s;

-- name: get_dead_letter
-- One of the caller's dead letters, with the task's current status.
SELECT d.*, t.status::text AS task_status
  FROM dead_letters d LEFT JOIN tasks t ON t.id = d.task_id
 WHERE d.id = %(dead_letter_id)s AND d.user_id = %(user_id)s;
