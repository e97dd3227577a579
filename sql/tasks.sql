-- name: insert_task
-- Create one task; nothing (no row back) when its Idempotency-Key or its unique_key is taken.
INSERT INTO tasks (user_id, title, description, task_type, payload, queue, priority, status,
                   scheduled_at, run_at, max_retries, retry_delay, timeout, tags, metadata,
                   idempotency_key, idempotency_fingerprint, callback_url, callback_events,
                   callback_headers, callback_secret, callback_max_attempts, callback_format,
                   trace_context, unique_key, unique_for, unique_window, depends_on, pending_parents)
VALUES (%(user_id)s, %(title)s, %(description)s, %(task_type)s, %(payload)s, %(queue)s,
        %(priority)s, %(status)s, %(scheduled_at)s,
        greatest(%(scheduled_at)s::timestamptz, now()), %(max_retries)s, %(retry_delay)s,
        %(timeout)s, %(tags)s, %(metadata)s, %(idempotency_key)s, %(idempotency_fingerprint)s,
        %(callback_url)s, %(callback_events)s, %(callback_headers)s, %(callback_secret)s,
        %(callback_max_attempts)s, %(callback_format)s, %(trace_context)s, %(unique_key)s,
        %(unique_for)s, taskq_unique_window(%(unique_for)s), %(depends_on)s, %(pending_parents)s)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_task_by_unique_key
-- The unfinished task holding a user's unique_key (no window): uq_tasks_unique_unfinished.
SELECT * FROM tasks
 WHERE user_id = %(user_id)s AND unique_key = %(unique_key)s
   AND unique_key IS NOT NULL AND unique_window IS NULL
   AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');

-- name: get_task_by_unique_window
-- The task holding a user's unique_key in the current unique_for window: uq_tasks_unique_window.
SELECT * FROM tasks
 WHERE user_id = %(user_id)s AND unique_key = %(unique_key)s
   AND unique_window = taskq_unique_window(%(unique_for)s) AND unique_window IS NOT NULL;

-- name: lock_parent_tasks
-- The caller's tasks among new tasks' parents, locked in id order (every creator locks in
-- this order), so none ends unseen between this count and the new tasks' edges committing.
-- (user_id NULL: the tasks without an owner, as insert_tasks(conn, None, ...) makes them.)
SELECT id, status::text AS status FROM tasks
 WHERE id = ANY(%(ids)s::bigint[]) AND user_id IS NOT DISTINCT FROM %(user_id)s
 ORDER BY id
   FOR NO KEY UPDATE;

-- name: mark_parent_tasks
-- Parents that now have a dependent: the dependency trigger looks at these when they end.
UPDATE tasks SET has_dependents = true
 WHERE id = ANY(%(ids)s::bigint[]) AND NOT has_dependents;

-- name: insert_task_dependencies
-- The edges parent -> new task, as two arrays of the same length.
INSERT INTO task_dependencies (parent_id, task_id)
SELECT * FROM unnest(%(parent_ids)s::bigint[], %(task_ids)s::bigint[]);

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
-- A page of tasks; {where} and {order} are composed from the task_filter_* fragments; with the snapshot they were read in.
SELECT t.*, pg_current_snapshot()::text AS snapshot FROM tasks t
 WHERE {where}
 ORDER BY {order}
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_tasks
-- How many tasks match filters the counters cannot answer, counting at most %(count_limit)s.
SELECT count(*) AS count FROM (SELECT 1 FROM tasks t WHERE {where} LIMIT %(count_limit)s) c;

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
-- List fragment: tasks among the search's matches (the matched CTE of search_by_index), as an array the primary key is probed with (no hash sized for the estimate).
t.id = ANY (ARRAY(SELECT m.task_id FROM matched m))

-- name: search_by_walk
-- A search's page from the first %(limit)s tasks of the list query nested here (without the search, in its order, through its index), checking each one's document: a frequent word fills the page within the walk; when it does not, search_by_index.
SELECT t.* FROM ({list}) t
  JOIN task_search s ON s.task_id = t.id AND s.document @@ %(search)s::tsquery
 ORDER BY {order}
 LIMIT %(page_limit)s OFFSET %(page_offset)s;

-- name: search_by_index
-- A search's page (or count) from its matches in task_search's GIN index first, then the list (or count) query below it (with task_filter_search). Materialized because the planner cannot tell a rare word from a frequent one (a prefix's estimate is a fixed share of the table), and walking the list's order for a rare word reads every task.
WITH matched AS MATERIALIZED (
    SELECT s.task_id FROM task_search s WHERE s.document @@ %(search)s::tsquery
)
{list}

-- name: read_plan_settings
-- For the rest of the transaction: no JIT and no parallel workers. Estimates that grow with the tables buy both for reads that touch little: a search (a prefix's fixed estimate is a share of the whole table), and the operator views over the claim index (its pages, not its live rows, price the scan), where at 10M tasks a 5 ms read took 30-50 ms of JIT compiling.
SELECT set_config('jit', 'off', true), set_config('max_parallel_workers_per_gather', '0', true);

-- name: search_tsquery
-- The tsquery of a search: each of its own to_tsvector('simple') words, quoted (backslash and quote escaped), as a prefix.
-- NULL, which matches nothing, when the search has no word in it.
SELECT string_agg('''' || replace(replace(w, '\', '\\'), '''', '\''') || ''':*', ' & ') AS query
  FROM unnest(tsvector_to_array(to_tsvector('simple', %(search)s))) w;

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
-- Delete a task unless a worker runs it (the trigger drops its history): the caller's own, or
-- any with any_owner (an admin).
DELETE FROM tasks
 WHERE id = %(task_id)s AND (user_id = %(user_id)s OR %(any_owner)s)
   AND status <> 'PROCESSING'
RETURNING id;

-- name: cancel_task
-- Cancel a waiting or running task (a running one's worker hears taskq_cancel; dependents of
-- it are cancelled by the dependency trigger): the caller's own, or any with any_owner.
UPDATE tasks
   SET status = 'CANCELLED', completed_at = now(), updated_at = now()
 WHERE id = %(task_id)s AND (user_id = %(user_id)s OR %(any_owner)s)
   AND status IN ('WAITING', 'PENDING', 'RETRYING', 'PROCESSING')
RETURNING *;

-- name: retry_task
-- Start a new attempt series of a failed or cancelled task; its open dead letters are closed.
-- A task with a parent that is there and not COMPLETED is not retried (it would wait for nothing).
WITH requeued AS (
    UPDATE tasks
       SET status = 'PENDING', attempts = 0, run_at = now(), result = NULL, error = NULL,
           started_at = NULL, completed_at = NULL, worker_id = NULL, lease_token = NULL,
           lease_expires_at = NULL, pending_parents = 0, progress = NULL,
           progress_message = NULL, progress_at = NULL, updated_at = now()
     WHERE id = %(task_id)s AND (user_id = %(user_id)s OR %(any_owner)s)
       AND status IN ('FAILED', 'CANCELLED')
       AND NOT EXISTS (SELECT 1 FROM tasks p
                        WHERE p.id = ANY(tasks.depends_on) AND p.status <> 'COMPLETED')
    RETURNING *
), closed AS (
    UPDATE dead_letters SET reprocessed_at = now()
     WHERE task_id IN (SELECT id FROM requeued) AND reprocessed_at IS NULL
)
SELECT * FROM requeued;

-- name: lock_task_row
-- Lock a task row until commit, as any status change of it does (a reprocess reads its dead
-- letter again under it: retries, failed attempts and deletes change the task's letters
-- only while holding it).
SELECT id FROM tasks WHERE id = %(task_id)s FOR NO KEY UPDATE;

-- name: list_dead_letters
-- A page of the caller's dead letters, newest first, with the task's current status; {after}: a cursor's keyset.
SELECT d.*, t.status::text AS task_status
  FROM dead_letters d LEFT JOIN tasks t ON t.id = d.task_id
 WHERE d.user_id = %(user_id)s AND {after}
 ORDER BY d.id DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_dead_letters
-- How many dead letters the caller has, counting at most %(count_limit)s.
SELECT count(*) AS count
  FROM (SELECT 1 FROM dead_letters WHERE user_id = %(user_id)s LIMIT %(count_limit)s) d;

-- name: get_dead_letter
-- One of the caller's dead letters, with the task's current status.
SELECT d.*, t.status::text AS task_status
  FROM dead_letters d LEFT JOIN tasks t ON t.id = d.task_id
 WHERE d.id = %(dead_letter_id)s AND d.user_id = %(user_id)s;

-- name: insert_task_rows
-- Load reserved-id tasks of a batch with unique keys or parents from their columns as JSON,
-- in id order (ids: only these rows; NULL: all); a row whose key is taken (by a concurrent
-- create, an earlier row, an older task) is skipped.
INSERT INTO tasks (id, user_id, title, description, task_type, payload, queue, priority,
                   scheduled_at, run_at, max_retries, retry_delay, timeout, tags, metadata,
                   callback_url, callback_events, callback_headers, callback_secret,
                   callback_max_attempts, callback_format, trace_context, unique_key,
                   unique_for, unique_window, status, depends_on, pending_parents)
OVERRIDING SYSTEM VALUE
SELECT r.id, r.user_id, r.title, r.description, r.task_type, r.payload, r.queue, r.priority,
       r.scheduled_at, r.run_at, r.max_retries, r.retry_delay, r.timeout, r.tags, r.metadata,
       r.callback_url, r.callback_events, r.callback_headers, r.callback_secret,
       r.callback_max_attempts, r.callback_format, r.trace_context, r.unique_key, r.unique_for,
       taskq_unique_window(r.unique_for), r.status::task_status, r.depends_on,
       r.pending_parents
  FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
           id bigint, user_id bigint, title text, description text, task_type text,
           payload jsonb, queue text, priority smallint, scheduled_at timestamptz,
           run_at timestamptz, max_retries integer, retry_delay integer, timeout integer,
           tags text[], metadata jsonb, callback_url text, callback_events text[],
           callback_headers jsonb, callback_secret text, callback_max_attempts integer,
           callback_format text, trace_context jsonb, unique_key text, unique_for integer,
           status text, depends_on bigint[], pending_parents integer)
 WHERE %(ids)s::bigint[] IS NULL OR r.id = ANY(%(ids)s::bigint[])
 ORDER BY r.id
ON CONFLICT DO NOTHING
RETURNING id, unique_window;

-- name: find_unique_tasks
-- The tasks holding the keys of a batch's skipped rows (n: the row's position), by the two
-- unique indexes; a key whose holder ended since has no row.
SELECT k.n, t.*
  FROM unnest(%(positions)s::int[], %(keys)s::text[], %(fors)s::int[]) AS k(n, key, unique_for)
  JOIN tasks t ON t.id = coalesce(
       (SELECT u.id FROM tasks u
         WHERE k.unique_for IS NULL AND u.user_id = %(user_id)s AND u.unique_key = k.key
           AND u.unique_key IS NOT NULL AND u.unique_window IS NULL
           AND u.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')),
       (SELECT u.id FROM tasks u
         WHERE k.unique_for IS NOT NULL AND u.user_id = %(user_id)s AND u.unique_key = k.key
           AND u.unique_window = taskq_unique_window(k.unique_for)
           AND u.unique_window IS NOT NULL));
