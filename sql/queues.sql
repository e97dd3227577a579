-- name: list_queue_controls
-- Every queue someone configured, a live worker serves, or has waiting tasks (the queue_controls view).
SELECT * FROM queue_controls ORDER BY queue;

-- name: get_queue_controls
-- One queue's controls (no row: nobody configured it, no worker serves it, nothing waits in it).
SELECT * FROM queue_controls WHERE queue = %(name)s;

-- name: set_queue_controls
-- Create or change a queue's row: only the fields whose set_* flag is true change.
INSERT INTO queues (name, paused, concurrency, rate_limit, rate_period, description)
VALUES (%(name)s, coalesce(%(paused)s, false), %(concurrency)s, %(rate_limit)s, %(rate_period)s,
        coalesce(%(description)s, ''))
ON CONFLICT (name) DO UPDATE
   SET paused = CASE WHEN %(set_paused)s THEN EXCLUDED.paused ELSE queues.paused END,
       concurrency = CASE WHEN %(set_concurrency)s THEN EXCLUDED.concurrency
                          ELSE queues.concurrency END,
       rate_limit = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_limit ELSE queues.rate_limit END,
       rate_period = CASE WHEN %(set_rate)s THEN EXCLUDED.rate_period ELSE queues.rate_period END,
       description = CASE WHEN %(set_description)s THEN EXCLUDED.description
                          ELSE queues.description END
RETURNING name;

-- name: queue_service
-- The queues live workers serve and the paused ones, for the create's warnings (cached briefly).
SELECT ARRAY(SELECT DISTINCT unnest(w.queues) FROM live_workers w) AS served,
       ARRAY(SELECT name FROM queues WHERE paused) AS paused;
