-- name: delete_finished_tasks
-- One batch of COMPLETED/FAILED tasks older than %(days)s days, oldest ids first; the trigger drops their history.
-- Walks the primary key from the oldest task (no index on completed_at: every completion would pay for it); old tasks sit at low ids, and a run's last batch reads on to the end once.
WITH doomed AS (
    SELECT id FROM tasks
     WHERE status IN ('COMPLETED', 'FAILED')
       AND completed_at < now() - make_interval(days => %(days)s)
     ORDER BY id
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED)
DELETE FROM tasks t USING doomed WHERE t.id = doomed.id;

-- name: delete_old_ticks
-- Forget periodic ticks older than the clean-up horizon (their uniqueness no longer matters).
DELETE FROM periodic_ticks WHERE tick_at < now() - make_interval(days => greatest(%(days)s, 1));

-- name: delete_silent_workers
-- Drop worker rows silent for a day: processes that died without saying goodbye.
DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day';
