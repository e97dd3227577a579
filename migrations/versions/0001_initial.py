"""Initial schema: users, token blocklist, tasks, history, dead letters, webhooks, workers.

Every state change of a task writes one ``task_history`` row and one NOTIFY,
whoever makes it (API, worker, reaper, or an operator's UPDATE in psql):
statement-level triggers with transition tables do it set-wise, so a batch
claim of 500 rows costs one INSERT and a handful of notifications, not 500
trigger calls.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TYPE task_status AS ENUM
    ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'RETRYING', 'CANCELLED');

CREATE TABLE users (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    username            text NOT NULL,
    email               text NOT NULL,
    password_hash       text NOT NULL,
    first_name          text NOT NULL DEFAULT '',
    last_name           text NOT NULL DEFAULT '',
    is_admin            boolean NOT NULL DEFAULT false,
    is_active           boolean NOT NULL DEFAULT true,
    password_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_users PRIMARY KEY (id)
);
CREATE UNIQUE INDEX uq_users_username ON users (lower(username));
CREATE UNIQUE INDEX uq_users_email ON users (lower(email));
COMMENT ON TABLE users IS 'API users; admins see every task and the operator endpoints.';
COMMENT ON COLUMN users.password_hash IS 'werkzeug scrypt hash; never the password.';
COMMENT ON COLUMN users.password_changed_at IS 'Tokens issued before this instant are refused.';

CREATE TABLE token_blocklist (
    jti         text NOT NULL,
    token_type  text NOT NULL,
    user_id     bigint NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_token_blocklist PRIMARY KEY (jti),
    CONSTRAINT fk_token_blocklist_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_token_blocklist_expires_at ON token_blocklist (expires_at);
COMMENT ON TABLE token_blocklist IS 'Revoked JWTs (logout, refresh rotation); rows past expires_at can be purged.';
COMMENT ON COLUMN token_blocklist.jti IS 'The JWT id claim of the revoked token.';

CREATE SEQUENCE task_lease_token_seq;
COMMENT ON SEQUENCE task_lease_token_seq IS 'Fencing tokens: every claim takes a new one.';

CREATE TABLE tasks (
    id                    bigint GENERATED ALWAYS AS IDENTITY,
    user_id               bigint,
    title                 text NOT NULL,
    description           text NOT NULL DEFAULT '',
    task_type             text NOT NULL DEFAULT 'process',
    payload               jsonb NOT NULL DEFAULT '{}',
    queue                 text NOT NULL DEFAULT 'default',
    priority              smallint NOT NULL DEFAULT 5,
    status                task_status NOT NULL DEFAULT 'PENDING',
    scheduled_at          timestamptz,
    run_at                timestamptz NOT NULL DEFAULT now(),
    attempts              integer NOT NULL DEFAULT 0,
    max_retries           integer NOT NULL DEFAULT 3,
    retry_delay           integer NOT NULL DEFAULT 60,
    timeout               integer,
    result                jsonb,
    error                 text,
    tags                  text[] NOT NULL DEFAULT '{}',
    metadata              jsonb NOT NULL DEFAULT '{}',
    idempotency_key       text,
    worker_id             text,
    lease_token           bigint,
    lease_expires_at      timestamptz,
    callback_url          text,
    callback_events       text[],
    callback_headers      jsonb,
    callback_secret       text,
    callback_max_attempts integer NOT NULL DEFAULT 5,
    created_at            timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    completed_at          timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_tasks PRIMARY KEY (id),
    CONSTRAINT fk_tasks_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT ck_tasks_priority CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT ck_tasks_max_retries CHECK (max_retries >= 0),
    CONSTRAINT ck_tasks_retry_delay CHECK (retry_delay >= 0),
    CONSTRAINT ck_tasks_timeout CHECK (timeout IS NULL OR timeout > 0)
) WITH (fillfactor = 80);
-- The claim reads only runnable rows, in claim order: this partial index is
-- all it touches, and it stays small however many finished tasks are kept.
CREATE INDEX ix_tasks_claim ON tasks (queue, priority DESC, run_at, id)
    WHERE status IN ('PENDING', 'RETRYING');
CREATE INDEX ix_tasks_lease ON tasks (lease_expires_at) WHERE status = 'PROCESSING';
CREATE INDEX ix_tasks_user_created ON tasks (user_id, created_at DESC, id DESC);
CREATE INDEX ix_tasks_finished ON tasks (completed_at)
    WHERE status IN ('COMPLETED', 'FAILED');
CREATE UNIQUE INDEX uq_tasks_user_idempotency_key ON tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
COMMENT ON TABLE tasks IS 'The queue: one row per task, claimed with FOR UPDATE SKIP LOCKED.';
COMMENT ON COLUMN tasks.user_id IS 'Owner; NULL for tasks the periodic scheduler enqueues.';
COMMENT ON COLUMN tasks.task_type IS 'Name in the worker registry (taskq list-tasks).';
COMMENT ON COLUMN tasks.payload IS 'Arguments of the task, validated against its type''s schema.';
COMMENT ON COLUMN tasks.queue IS 'Workers claim only from the queues they were started with.';
COMMENT ON COLUMN tasks.priority IS 'Higher runs first (low=1, normal=5, high=10, critical=20).';
COMMENT ON COLUMN tasks.status IS 'PENDING -> PROCESSING -> COMPLETED; RETRYING between attempts; FAILED; CANCELLED.';
COMMENT ON COLUMN tasks.scheduled_at IS 'When the user asked the task to run (NULL: as soon as possible).';
COMMENT ON COLUMN tasks.run_at IS 'When the task is next due: scheduled_at, or the retry time after a failure.';
COMMENT ON COLUMN tasks.attempts IS 'Claims so far in this attempt series, counting ones lost to crashes.';
COMMENT ON COLUMN tasks.max_retries IS 'Retries after the first attempt before the task is FAILED.';
COMMENT ON COLUMN tasks.retry_delay IS 'Base of the exponential backoff, seconds.';
COMMENT ON COLUMN tasks.timeout IS 'Hard time limit of one attempt, seconds (NULL: the worker default).';
COMMENT ON COLUMN tasks.result IS 'JSON result of the successful attempt.';
COMMENT ON COLUMN tasks.error IS 'Error of the last failed attempt.';
COMMENT ON COLUMN tasks.idempotency_key IS 'Idempotency-Key header of the create request; unique per user.';
COMMENT ON COLUMN tasks.worker_id IS 'Worker holding the lease while PROCESSING.';
COMMENT ON COLUMN tasks.lease_token IS 'Fencing token of the current claim; a result with an older token is refused.';
COMMENT ON COLUMN tasks.lease_expires_at IS 'The heartbeat extends it; past it the reaper returns the task to the queue.';
COMMENT ON COLUMN tasks.callback_url IS 'Webhook notified of the callback_events transitions.';

CREATE TABLE task_history (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    task_id     bigint NOT NULL,
    user_id     bigint,
    from_status task_status,
    to_status   task_status NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT pk_task_history PRIMARY KEY (id)
);
CREATE INDEX ix_task_history_task_id ON task_history (task_id, id);
CREATE INDEX ix_task_history_user_id ON task_history (user_id, id);
COMMENT ON TABLE task_history IS 'One row per status transition, written by trigger; its id is the SSE event id.';
COMMENT ON COLUMN task_history.from_status IS 'NULL for the creation of the task.';

CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    task_id         bigint NOT NULL,
    user_id         bigint,
    task_type       text NOT NULL,
    queue           text NOT NULL,
    payload         jsonb NOT NULL,
    error           text,
    attempts        integer NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    reprocessed_at  timestamptz,
    CONSTRAINT pk_dead_letters PRIMARY KEY (id)
);
CREATE INDEX ix_dead_letters_user_id ON dead_letters (user_id, id DESC);
CREATE INDEX ix_dead_letters_task_id ON dead_letters (task_id);
COMMENT ON TABLE dead_letters IS 'Tasks that ended FAILED; reprocess starts a new attempt series.';
COMMENT ON COLUMN dead_letters.reprocessed_at IS 'Set when the entry was sent back to the queue.';

CREATE TABLE webhook_deliveries (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    task_id       bigint NOT NULL,
    event         text NOT NULL,
    url           text NOT NULL,
    payload       jsonb NOT NULL,
    attempt       integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 5,
    status        text NOT NULL DEFAULT 'pending',
    status_code   integer,
    duration_ms   double precision,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz,
    CONSTRAINT pk_webhook_deliveries PRIMARY KEY (id)
);
CREATE INDEX ix_webhook_deliveries_task_id ON webhook_deliveries (task_id, id);
COMMENT ON TABLE webhook_deliveries IS 'One row per webhook attempt: status code, duration and error.';
COMMENT ON COLUMN webhook_deliveries.status IS 'pending, delivered or failed.';

CREATE TABLE workers (
    id            text NOT NULL,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    queues        text[] NOT NULL,
    concurrency   integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_workers PRIMARY KEY (id)
);
COMMENT ON TABLE workers IS 'Worker processes and their last heartbeat.';
COMMENT ON COLUMN workers.heartbeat_at IS 'A worker silent for longer than its lease is presumed dead.';

CREATE TABLE periodic_ticks (
    name        text NOT NULL,
    tick_at     timestamptz NOT NULL,
    task_id     bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_periodic_ticks PRIMARY KEY (name, tick_at)
);
COMMENT ON TABLE periodic_ticks IS 'One row per enqueued cron tick: its key makes each tick run once.';

-- Transitions: one history row and one NOTIFY per change, set-wise.
-- taskq_events carries {"s": status, "e": [[history_id, task_id, user_id], ...]}
-- in chunks of 200 (well under the 8000-byte payload limit). taskq_wakeup
-- carries a queue name: Postgres folds identical notifications of one
-- transaction into one, so a batch insert wakes each queue once. taskq_cancel
-- carries the id of a running task that was cancelled.
CREATE FUNCTION taskq_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sent bigint;
BEGIN
    WITH hist AS (
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt)
        SELECT id, user_id, NULL, status, attempts FROM new_rows ORDER BY id
        RETURNING id, task_id, user_id, to_status
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM new_rows WHERE status IN ('PENDING', 'RETRYING')) q
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake) INTO sent;
    RETURN NULL;
END $$;

CREATE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sent bigint;
BEGIN
    WITH changed AS (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
    ), hist AS (
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id, error)
        SELECT id, user_id, from_status, to_status, attempts, worker_id,
               CASE WHEN to_status IN ('FAILED', 'RETRYING') THEN error END
          FROM changed ORDER BY id
        RETURNING id, task_id, user_id, to_status
    ), dead AS (
        INSERT INTO dead_letters (task_id, user_id, task_type, queue, payload, error, attempts)
        SELECT id, user_id, task_type, queue, payload, error, attempts
          FROM changed WHERE to_status = 'FAILED'
    ), events AS (
        SELECT pg_notify('taskq_events', json_build_object(
                   's', to_status, 'e', json_agg(json_build_array(id, task_id, user_id)))::text)
          FROM (SELECT h.*, (row_number() OVER (ORDER BY h.id) - 1) / 200 AS chunk FROM hist h) c
         GROUP BY to_status, chunk
    ), wake AS (
        SELECT pg_notify('taskq_wakeup', queue)
          FROM (SELECT DISTINCT queue FROM changed WHERE to_status IN ('PENDING', 'RETRYING')) q
    ), cancels AS (
        SELECT pg_notify('taskq_cancel', id::text)
          FROM changed WHERE from_status = 'PROCESSING' AND to_status = 'CANCELLED'
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels) INTO sent;
    RETURN NULL;
END $$;

-- A deleted task takes its history, dead letters and deliveries with it, and
-- listeners hear "DELETED" so caches drop it (no foreign keys on the hot
-- history insert: the set-wise clean-up here is cheaper).
CREATE FUNCTION taskq_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sent bigint;
BEGIN
    DELETE FROM task_history h USING old_rows o WHERE h.task_id = o.id;
    DELETE FROM dead_letters d USING old_rows o WHERE d.task_id = o.id;
    DELETE FROM webhook_deliveries w USING old_rows o WHERE w.task_id = o.id;
    SELECT count(pg_notify('taskq_events', json_build_object('s', 'DELETED', 'e', e)::text))
      INTO sent
      FROM (SELECT json_agg(json_build_array(NULL, id, user_id)) AS e
              FROM (SELECT o.id, o.user_id, (row_number() OVER (ORDER BY o.id) - 1) / 200 AS chunk
                      FROM old_rows o) c
             GROUP BY chunk) chunks;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_inserted();
CREATE TRIGGER tasks_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_updated();
CREATE TRIGGER tasks_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_deleted();
"""

# The operator views as sql/views.sql defined them when 0001 landed. A view that
# changes gets a new migration; tests/integration/test_schema.py checks that the
# views at head are the ones sql/views.sql documents.
VIEWS = r"""
CREATE OR REPLACE VIEW queue_depth AS
SELECT queue,
       status,
       count(*)                                  AS tasks,
       max(now() - created_at)                   AS oldest_age,
       count(*) FILTER (WHERE run_at <= now())   AS due
  FROM tasks
 WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')
 GROUP BY queue, status;
COMMENT ON VIEW queue_depth IS 'Unfinished tasks per queue and status, with the age of the oldest.';

CREATE OR REPLACE VIEW queue_stats AS
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING')) AS waiting,
           count(*) FILTER (WHERE status IN ('PENDING', 'RETRYING') AND run_at <= now()) AS due,
           count(*) FILTER (WHERE status = 'PROCESSING')               AS running,
           max(now() - run_at) FILTER (WHERE status IN ('PENDING', 'RETRYING')
                                         AND run_at <= now())          AS oldest_due_age
      FROM tasks
     WHERE status IN ('PENDING', 'RETRYING', 'PROCESSING')
     GROUP BY queue
), recent AS (
    SELECT t.queue,
           count(*) FILTER (WHERE h.to_status = 'COMPLETED') AS completed_last_minute,
           count(*) FILTER (WHERE h.to_status = 'FAILED')    AS failed_last_minute
      FROM task_history h JOIN tasks t ON t.id = h.task_id
     WHERE h.created_at > now() - interval '1 minute'
       AND h.to_status IN ('COMPLETED', 'FAILED')
     GROUP BY t.queue
)
SELECT coalesce(l.queue, r.queue)               AS queue,
       coalesce(l.waiting, 0)                   AS waiting,
       coalesce(l.due, 0)                       AS due,
       coalesce(l.running, 0)                   AS running,
       l.oldest_due_age,
       coalesce(r.completed_last_minute, 0)     AS completed_last_minute,
       coalesce(r.failed_last_minute, 0)        AS failed_last_minute
  FROM live l FULL JOIN recent r ON r.queue = l.queue;
COMMENT ON VIEW queue_stats IS 'Per queue: waiting, due and running tasks, oldest due age, completions in the last minute.';

CREATE OR REPLACE VIEW stuck_tasks AS
SELECT id, queue, task_type, worker_id, attempts, started_at, lease_expires_at,
       now() - lease_expires_at AS overdue
  FROM tasks
 WHERE status = 'PROCESSING' AND lease_expires_at < now();
COMMENT ON VIEW stuck_tasks IS 'Running tasks whose lease expired: their worker is gone; the reaper will return them.';

CREATE OR REPLACE VIEW live_workers AS
SELECT w.id, w.hostname, w.pid, w.queues, w.concurrency, w.started_at, w.heartbeat_at,
       now() - w.heartbeat_at AS silent_for,
       (SELECT count(*) FROM tasks t WHERE t.status = 'PROCESSING' AND t.worker_id = w.id) AS running
  FROM workers w
 WHERE w.heartbeat_at > now() - interval '60 seconds';
COMMENT ON VIEW live_workers IS 'Workers heard from in the last minute, with the tasks they run.';

CREATE OR REPLACE VIEW recent_failures AS
SELECT h.id AS history_id, h.task_id, t.queue, t.task_type, h.to_status, h.attempt,
       h.error, h.created_at
  FROM task_history h JOIN tasks t ON t.id = h.task_id
 WHERE h.to_status IN ('FAILED', 'RETRYING')
   AND h.created_at > now() - interval '24 hours'
 ORDER BY h.id DESC;
COMMENT ON VIEW recent_failures IS 'Failed attempts of the last 24 hours, newest first.';
"""

DOWNGRADE = """
DROP VIEW IF EXISTS queue_depth, queue_stats, stuck_tasks, live_workers, recent_failures;
DROP TABLE IF EXISTS periodic_ticks, workers, webhook_deliveries, dead_letters,
    task_history, tasks, token_blocklist, users;
DROP FUNCTION IF EXISTS taskq_tasks_inserted(), taskq_tasks_updated(), taskq_tasks_deleted();
DROP SEQUENCE IF EXISTS task_lease_token_seq;
DROP TYPE IF EXISTS task_status;
"""


def upgrade() -> None:
    """Create the schema, its triggers and the operator views."""
    op.execute(UPGRADE)
    op.execute(VIEWS)


def downgrade() -> None:
    """Drop everything upgrade() made."""
    op.execute(DOWNGRADE)
