-- name: claim_webhook_delivery
-- Count the next attempt of a delivery that is due (pending, attempts left, asked by its running sender task); what sending needs.
-- One conditional UPDATE, so a task that is not the delivery's sender (a stray deliver_webhook made in psql),
-- a sender not claimed yet (its run_at, the next attempt time, still ahead) or a re-run after the
-- delivery finished sends nothing and changes nothing. Secret and headers stay in Postgres until now;
-- the task's trace context continues its trace (taskq.tracing).
WITH claimed AS (
    UPDATE webhook_deliveries w
       SET attempt = w.attempt + 1
     WHERE w.id = %(delivery_id)s
       AND w.sender_task_id = %(task_id)s
       AND w.status = 'pending'
       AND w.attempt < w.max_attempts
       AND EXISTS (SELECT 1 FROM tasks s WHERE s.id = w.sender_task_id AND s.status = 'PROCESSING')
    RETURNING w.id, w.task_id, w.event, w.url, w.payload, w.attempt, w.max_attempts)
SELECT c.*, t.callback_secret, t.callback_headers, t.trace_context
  FROM claimed c
  LEFT JOIN tasks t ON t.id = c.task_id;

-- name: webhook_delivery_state
-- Why a delivery was not claimed: its status, attempts and sender (none: deleted with its task).
SELECT status, attempt, max_attempts, sender_task_id FROM webhook_deliveries WHERE id = %(delivery_id)s;

-- name: record_webhook_attempt
-- The outcome of the attempt claim_webhook_delivery counted, on its delivery row and its attempt log.
UPDATE webhook_deliveries
   SET status = CASE WHEN %(delivered)s THEN 'delivered'
                     WHEN %(final)s THEN 'failed'
                     ELSE 'pending' END,
       status_code = %(status_code)s,
       duration_ms = %(duration_ms)s,
       error = %(error)s,
       delivered_at = CASE WHEN %(delivered)s THEN now() ELSE delivered_at END,
       attempt_log = attempt_log || jsonb_build_array(jsonb_build_object(
           'attempt', attempt, 'at', now(), 'status_code', %(status_code)s::integer,
           'duration_ms', %(duration_ms)s::float8, 'error', %(error)s::text))
 WHERE id = %(delivery_id)s AND attempt = %(attempt)s AND status = 'pending'
RETURNING attempt, max_attempts, status;

-- name: list_webhook_deliveries
-- A page of a task's deliveries, newest first; {after}: a cursor's keyset.
SELECT id, task_id, event, url, attempt, max_attempts, status, status_code, duration_ms,
       error, created_at, delivered_at, attempt_log
  FROM webhook_deliveries w
 WHERE task_id = %(task_id)s AND {after}
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: count_webhook_deliveries
-- How many deliveries a task has, counting at most %(count_limit)s.
SELECT count(*) AS count
  FROM (SELECT 1 FROM webhook_deliveries WHERE task_id = %(task_id)s LIMIT %(count_limit)s) w;

-- name: replay_webhook_delivery
-- A new delivery copying an old one (same event, URL and task snapshot), and its task.
WITH copy AS (
    INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
    SELECT task_id, event, url, payload, max_attempts
      FROM webhook_deliveries
     WHERE id = %(delivery_id)s AND task_id = %(task_id)s
    RETURNING id)
SELECT id AS delivery_id, taskq_enqueue_webhook_deliveries(ARRAY[id]) AS queued FROM copy;

-- name: trigger_webhook
-- A delivery of the task as it is now, for an event the caller names, and its task.
WITH copy AS (
    INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
    SELECT id, %(event)s, callback_url,
           to_jsonb(tasks) - 'callback_secret' - 'callback_headers',
           greatest(callback_max_attempts, 1)
      FROM tasks
     WHERE id = %(task_id)s AND callback_url IS NOT NULL
    RETURNING id)
SELECT id AS delivery_id, taskq_enqueue_webhook_deliveries(ARRAY[id]) AS queued FROM copy;

-- name: task_callback
-- The callback settings of a task (trigger-webhook checks them first).
SELECT id, status, callback_url, callback_events FROM tasks WHERE id = %(task_id)s;
