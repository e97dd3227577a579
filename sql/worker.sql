-- name: claim_tasks
-- Lock up to %(limit)s runnable tasks of the given queues in claim order, skipping rows others hold; lease them.
-- One index-ordered scan per queue (ix_tasks_claim), so a deep backlog costs a LIMIT, not a sort.
-- The gate (taskq_claim_gate) caps each queue: 0 while paused, the free slots of a concurrency
-- limit, what is left of a rate window (logged in queue_starts); unlimited queues take no lock.
-- started_at is the gate's time: now() without a limit, the time the queue's lock was taken
-- with one (the rate window's clock).
-- A lean row for the worker: payload as JSON text (decoded when the task runs), n = claim order
-- (UPDATE … RETURNING promises no order). A rate-limited queue that is full adds a row with no
-- id whose waited is the seconds until its window opens.
WITH gate AS (
    SELECT * FROM taskq_claim_gate(%(queues)s::text[])
), next AS (
    SELECT c.id, g.at, row_number() OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS n
      FROM gate g
     CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM tasks
             WHERE queue = g.queue
               AND status IN ('PENDING', 'RETRYING')
               AND run_at <= now()
             ORDER BY priority DESC, run_at, id
             LIMIT least(%(limit)s, g.allowed)
               FOR UPDATE SKIP LOCKED) c
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT %(limit)s
), claimed AS (
    UPDATE tasks t
       SET status = 'PROCESSING',
           attempts = t.attempts + 1,
           worker_id = %(worker_id)s,
           lease_token = nextval('task_lease_token_seq'),
           lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           started_at = next.at,
           updated_at = now()
      FROM next
     WHERE t.id = next.id
    RETURNING t.id, t.lease_token, t.task_type, t.payload::text AS payload, t.queue, t.attempts,
              t.timeout, extract(epoch FROM now() - t.run_at)::float8 AS waited, next.n,
              t.trace_context::text AS trace_context
), started AS (
    INSERT INTO queue_starts (queue, started_at, tasks)
    SELECT c.queue, g.at, count(*) FROM claimed c JOIN gate g ON g.queue = c.queue AND g.rated
     GROUP BY c.queue, g.at
)
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, g.queue, NULL, NULL, g.wait, NULL, NULL
  FROM gate g WHERE g.wait IS NOT NULL;

-- name: complete_tasks
-- Store results and COMPLETED, fenced: only while our claim (lease_token) still holds the row.
UPDATE tasks t
   SET status = 'COMPLETED',
       result = d.result,
       error = NULL,
       completed_at = now(),
       lease_expires_at = NULL,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[], %(results)s::jsonb[]) AS d(id, token, result)
 WHERE t.id = d.id AND t.lease_token = d.token AND t.status = 'PROCESSING';

-- name: fail_tasks
-- Record failed attempts, fenced: RETRYING after exponential backoff with jitter, or FAILED when spent.
-- Backoff: retry_delay * 2^(attempt-1), capped at %(max_delay)s, times a random 0.75-1.25.
-- A cap of 0 makes the task due again at once: an attempt lost with its worker (reaper, dead child).
UPDATE tasks t
   SET status = CASE WHEN t.attempts <= t.max_retries
                     THEN 'RETRYING'::task_status ELSE 'FAILED'::task_status END,
       error = f.error,
       run_at = CASE WHEN t.attempts <= t.max_retries
                     THEN now() + make_interval(secs =>
                          least(t.retry_delay * power(2, least(t.attempts - 1, 40)), %(max_delay)s)
                          * (0.75 + random() * 0.5))
                     ELSE t.run_at END,
       completed_at = CASE WHEN t.attempts <= t.max_retries THEN NULL ELSE now() END,
       lease_expires_at = NULL,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[], %(errors)s::text[]) AS f(id, token, error)
 WHERE t.id = f.id AND t.lease_token = f.token AND t.status = 'PROCESSING'
RETURNING t.id, t.status;

-- name: release_tasks
-- Hand claimed tasks back without counting the attempt (shutdown, or claimed but never started).
UPDATE tasks t
   SET status = CASE WHEN t.attempts > 1 THEN 'RETRYING'::task_status ELSE 'PENDING'::task_status END,
       attempts = t.attempts - 1,
       worker_id = NULL,
       lease_expires_at = NULL,
       started_at = NULL,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS r(id, token)
 WHERE t.id = r.id AND t.lease_token = r.token AND t.status = 'PROCESSING';

-- name: snooze_tasks
-- Tasks that asked to run again later, fenced: due after their delay, the attempt not counted
-- (the claim's increment undone). RETRYING with the reason as error, so the history row of the
-- transition carries it.
UPDATE tasks t
   SET status = 'RETRYING',
       attempts = greatest(t.attempts - 1, 0),
       snoozes = t.snoozes + 1,
       error = 'Snoozed for ' || s.seconds || ' s (attempt not counted)',
       run_at = now() + make_interval(secs => s.seconds),
       lease_expires_at = NULL,
       updated_at = now()
  FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[], %(seconds)s::float8[]) AS s(id, token, seconds)
 WHERE t.id = s.id AND t.lease_token = s.token AND t.status = 'PROCESSING';

-- name: report_progress
-- A running task's progress: its columns (no status change, so no history row) and one NOTIFY
-- on taskq_progress for the event streams. Fenced by the claim's lease token only, so the last
-- value of a run lands even just after its outcome.
WITH reported AS (
    UPDATE tasks
       SET progress = %(percent)s, progress_message = %(message)s, progress_at = now()
     WHERE id = %(task_id)s AND lease_token = %(token)s
    RETURNING id, user_id, progress, progress_message, progress_at)
SELECT pg_notify('taskq_progress', json_build_object(
           't', id, 'u', user_id, 'p', progress, 'm', progress_message, 'at', progress_at)::text)
  FROM reported;

-- name: held_tasks
-- The running tasks a worker process holds (ix_tasks_lease covers every PROCESSING row).
SELECT id, lease_token FROM tasks
 WHERE status = 'PROCESSING' AND worker_id = %(worker_id)s
   FOR UPDATE SKIP LOCKED;

-- name: expired_leases
-- Running tasks whose lease ran out: their worker is gone. Locked so two reapers never race.
SELECT id, lease_token, worker_id FROM tasks
 WHERE status = 'PROCESSING' AND lease_expires_at < now()
 ORDER BY lease_expires_at
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: extend_leases
-- Heartbeat: push the lease of every task the live worker processes hold. A row another
-- transaction holds (a completion batch locks its rows in its own order) is skipped, not
-- waited for: waiting deadlocked with completions; that writer ends the lease or the next
-- heartbeat (a third of a lease later) extends it.
WITH held AS (
    SELECT id FROM tasks
     WHERE status = 'PROCESSING' AND worker_id = ANY(%(worker_ids)s::text[])
       FOR UPDATE SKIP LOCKED)
UPDATE tasks t
   SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
  FROM held
 WHERE t.id = held.id;

-- name: touch_workers
-- Heartbeat: the worker processes are alive.
UPDATE workers SET heartbeat_at = now() WHERE id = ANY(%(worker_ids)s::text[]);

-- name: register_worker
-- A worker process announces itself (live_workers view).
INSERT INTO workers (id, hostname, pid, queues, concurrency)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE
   SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
       concurrency = EXCLUDED.concurrency, started_at = now(), heartbeat_at = now();

-- name: delete_workers
-- Worker processes that are gone.
DELETE FROM workers WHERE id = ANY(%(worker_ids)s::text[]);

-- name: keep_session_alive
-- A direct session (LISTEN, the leader lock) has the server probe its client: a vanished host's session ends in seconds.
SELECT set_config('tcp_keepalives_idle', %(idle)s, false),
       set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false),
       set_config('tcp_user_timeout', %(user_timeout)s, false);

-- name: database_now
-- The database's clock: the one clock every host agrees on (periodic ticks).
SELECT now() AS now;

-- name: try_leader_lock
-- Maintenance runs on one worker at a time: the holder of this session advisory lock.
SELECT pg_try_advisory_lock(%(key)s) AS leader;

-- name: insert_periodic_tick
-- Claim one cron tick; the primary key makes it happen once however many leaders ever try.
INSERT INTO periodic_ticks (name, tick_at) VALUES (%(name)s, %(tick_at)s)
ON CONFLICT DO NOTHING
RETURNING name;

-- name: enqueue_periodic_task
-- The task of a periodic tick (no owner).
INSERT INTO tasks (title, task_type, payload, queue, priority, max_retries, timeout, metadata)
VALUES (%(title)s, %(task_type)s, %(payload)s, %(queue)s, %(priority)s, %(max_retries)s,
        %(timeout)s, %(metadata)s)
RETURNING id;

-- name: set_tick_task
-- Remember which task a tick enqueued.
UPDATE periodic_ticks SET task_id = %(task_id)s WHERE name = %(name)s AND tick_at = %(tick_at)s;

-- name: relax_claim_commit
-- This transaction only claims: commit it without waiting for the WAL flush (worker.exchange).
-- Outcomes stay durable, and their flush carries every claim written before them.
SELECT set_config('synchronous_commit', 'off', true);
