"""Queues as rows: pause, a global concurrency limit and a rate limit per queue, in the claim.

``queues`` holds one row per queue someone configured (psql, the admin API,
``taskq queue``); a queue without a row is unpaused and unlimited, so nothing
has to be backfilled. ``queue_starts`` is the rate limit's log: one row per
claim statement of a rate-limited queue (how many tasks it started, when),
pruned to the window by the claims themselves.

``taskq_claim_gate(queues)`` is what the claim statement calls first: per
queue, how many tasks it may start now (NULL: no limit; 0 while paused; at
most a fair share of a concurrency limit: the limit over the live worker
processes serving the queue, so one batching child cannot take every slot). A
queue with a concurrency or rate limit has its row locked (FOR UPDATE, in
name order, so two workers with overlapping queues cannot deadlock) until
the claim commits, and the running count and the window are read after the
lock is held (a volatile function's statements take fresh snapshots), so
two workers racing cannot exceed a limit. Unlimited queues take no lock.

A trigger on ``queues`` sends ``taskq_wakeup`` with the queue's name on every
change, psql's included: idle workers claim at once (a resume, a raised limit).

Safe on a big table and while old workers run: it creates new tables, a view
and functions, and touches neither ``tasks`` nor its triggers. Workers older
than this revision do not call the gate, so they ignore pauses and limits
until they are upgraded.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE queues (
    name         text NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    concurrency  integer,
    rate_limit   integer,
    rate_period  interval,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_queues PRIMARY KEY (name),
    CONSTRAINT ck_queues_name CHECK (name ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    CONSTRAINT ck_queues_concurrency CHECK (concurrency > 0),
    CONSTRAINT ck_queues_rate CHECK ((rate_limit IS NULL) = (rate_period IS NULL)
                                     AND rate_limit > 0 AND rate_period > interval '0')
);
COMMENT ON TABLE queues IS 'Queue controls: paused, global concurrency and rate limits; a queue without a row has none.';
COMMENT ON COLUMN queues.name IS 'The queue (tasks.queue).';
COMMENT ON COLUMN queues.paused IS 'No new claims on any worker; running tasks finish, creates still work.';
COMMENT ON COLUMN queues.concurrency IS 'At most this many tasks PROCESSING at once, over every worker and host (NULL: no limit).';
COMMENT ON COLUMN queues.rate_limit IS 'At most this many starts (claims) in any rate_period (NULL: no limit).';
COMMENT ON COLUMN queues.rate_period IS 'The window of rate_limit, e.g. ''60 seconds''.';
COMMENT ON COLUMN queues.description IS 'Free text for operators.';

CREATE TABLE queue_starts (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    queue       text NOT NULL,
    started_at  timestamptz NOT NULL,
    tasks       integer NOT NULL,
    CONSTRAINT pk_queue_starts PRIMARY KEY (id),
    CONSTRAINT fk_queue_starts_queue_queues FOREIGN KEY (queue)
        REFERENCES queues (name) ON DELETE CASCADE
);
CREATE INDEX ix_queue_starts_queue ON queue_starts (queue, started_at);
COMMENT ON TABLE queue_starts IS 'Rate-limit log: tasks started per claim of a rate-limited queue; older than the window is pruned.';
COMMENT ON COLUMN queue_starts.started_at IS 'When the claim took the queue''s lock: its tasks'' started_at.';
COMMENT ON COLUMN queue_starts.tasks IS 'How many tasks that claim started.';

CREATE FUNCTION taskq_queues_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
COMMENT ON FUNCTION taskq_queues_touch() IS 'queues.updated_at follows every update, psql''s too.';
CREATE TRIGGER queues_touch BEFORE UPDATE ON queues
    FOR EACH ROW EXECUTE FUNCTION taskq_queues_touch();

CREATE FUNCTION taskq_queues_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskq_wakeup', name) FROM (SELECT DISTINCT name FROM changed_rows) c;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_queues_changed() IS
    'A queue''s controls changed: wake the workers that serve it (taskq_wakeup, payload: queue).';
CREATE TRIGGER queues_inserted AFTER INSERT ON queues REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_queues_changed();
CREATE TRIGGER queues_updated AFTER UPDATE ON queues REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_queues_changed();
CREATE TRIGGER queues_deleted AFTER DELETE ON queues REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_queues_changed();

CREATE FUNCTION taskq_claim_gate(names text[])
RETURNS TABLE (queue text, allowed integer, rated boolean, wait float8, at timestamptz)
LANGUAGE plpgsql VOLATILE ROWS 10 AS $$
DECLARE
    locked_at timestamptz;
BEGIN
    -- Lock the limited queues' rows in name order (no deadlock between workers); a claim
    -- of the same queue waits here until this transaction ends.
    PERFORM 1 FROM queues q
      WHERE q.name = ANY(names) AND NOT q.paused
        AND (q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)
      ORDER BY q.name
        FOR UPDATE;
    IF NOT FOUND THEN  -- no limit to keep: paused queues get 0, the rest no limit
        RETURN QUERY
        SELECT n.name, CASE WHEN q.paused THEN 0 END, false, NULL::float8, now()
          FROM unnest(names) AS n(name) LEFT JOIN queues q ON q.name = n.name;
        RETURN;
    END IF;
    -- The start time of this claim's tasks, read once the locks are held: the holders of a
    -- queue's lock follow one another, so their times only grow (now(), the transaction's
    -- start, would not: a transaction that waited here began before the one it waited for,
    -- and its pruning or counting by now() could miss starts still inside the window).
    locked_at := clock_timestamp();
    -- This statement's snapshot is taken after the locks: it sees every claim that held them.
    DELETE FROM queue_starts s USING queues q
     WHERE q.name = ANY(names) AND s.queue = q.name AND q.rate_limit IS NOT NULL
       AND s.started_at <= locked_at - q.rate_period;
    RETURN QUERY
    SELECT n.name,
           CASE WHEN q.paused THEN 0
                WHEN q.concurrency IS NULL AND q.rate_limit IS NULL THEN NULL
                ELSE greatest(0, least(q.concurrency - r.running, r.share,
                                       q.rate_limit - w.started)) END,
           q.rate_limit IS NOT NULL AND NOT q.paused,
           CASE WHEN NOT q.paused AND w.started >= q.rate_limit
                THEN greatest(0, extract(epoch FROM w.first_at + q.rate_period - locked_at))
           END::float8,
           locked_at
      FROM unnest(names) AS n(name)
      LEFT JOIN queues q ON q.name = n.name
      LEFT JOIN LATERAL (
            -- One claim takes at most its fair share of the limit (the limit over the live
            -- worker processes serving the queue), so a batch of one does not starve the rest.
            SELECT (SELECT count(*)::integer FROM tasks t
                     WHERE t.status = 'PROCESSING' AND t.queue = n.name) AS running,
                   ceil(q.concurrency::numeric / greatest(1, (
                       SELECT count(*) FROM workers lw
                        WHERE n.name = ANY(lw.queues)
                          AND lw.heartbeat_at > now() - interval '60 seconds')))::integer AS share
             WHERE q.concurrency IS NOT NULL AND NOT q.paused) r ON true
      LEFT JOIN LATERAL (
            SELECT coalesce(sum(s.tasks), 0)::integer AS started, min(s.started_at) AS first_at
              FROM queue_starts s
             WHERE q.rate_limit IS NOT NULL AND NOT q.paused
               AND s.queue = n.name AND s.started_at > locked_at - q.rate_period) w ON true;
END $$;
COMMENT ON FUNCTION taskq_claim_gate(text[]) IS
    'Per queue: tasks a claim may start now (NULL: unlimited, 0: paused or full), whether starts are logged, seconds until the rate window opens, the start time to record.';

CREATE VIEW queue_controls AS
WITH RECURSIVE waiting AS (
    -- The queues with waiting tasks, one probe of ix_tasks_claim per queue.
    (SELECT t.queue FROM tasks t WHERE t.status IN ('PENDING', 'RETRYING')
      ORDER BY t.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM tasks t
             WHERE t.status IN ('PENDING', 'RETRYING') AND t.queue > w.queue
             ORDER BY t.queue LIMIT 1)
      FROM waiting w WHERE w.queue IS NOT NULL
), served AS (
    -- Live as in live_workers: heard from in the last minute.
    SELECT s.queue, count(*) AS workers
      FROM workers w CROSS JOIN LATERAL unnest(w.queues) AS s(queue)
     WHERE w.heartbeat_at > now() - interval '60 seconds'
     GROUP BY s.queue
), known AS (
    SELECT name AS queue FROM queues
    UNION SELECT queue FROM served
    UNION SELECT queue FROM waiting WHERE queue IS NOT NULL
)
SELECT k.queue,
       coalesce(q.paused, false) AS paused,
       q.concurrency,
       q.rate_limit,
       q.rate_period,
       CASE WHEN q.rate_limit IS NOT NULL
            THEN q.rate_limit || '/' || trim_scale(extract(epoch FROM q.rate_period)) || 's'
       END AS rate,
       coalesce(q.description, '') AS description,
       coalesce(s.workers, 0) AS workers,
       EXISTS (SELECT 1 FROM waiting w WHERE w.queue = k.queue) AS has_waiting,
       coalesce(s.workers, 0) = 0
           AND EXISTS (SELECT 1 FROM waiting w WHERE w.queue = k.queue) AS unserved,
       q.updated_at
  FROM known k
  LEFT JOIN queues q ON q.name = k.queue
  LEFT JOIN served s ON s.queue = k.queue;
COMMENT ON VIEW queue_controls IS
    'Per queue: paused, limits, live workers serving it, and unserved = tasks waiting with no live worker.';
"""

DOWNGRADE = r"""
DROP VIEW queue_controls;
DROP FUNCTION taskq_claim_gate(text[]);
DROP TABLE queue_starts;
DROP TABLE queues;
DROP FUNCTION taskq_queues_changed();
DROP FUNCTION taskq_queues_touch();
"""


def upgrade() -> None:
    """Create queues, queue_starts, the claim gate, the wake-up trigger and queue_controls."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0008: no queue controls."""
    op.execute(DOWNGRADE)
