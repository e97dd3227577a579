"""A place for every history row in one order that commits cannot reshuffle.

``GET /api/v1/events`` streams every task of a user. History ids are handed
out when a transition is written, not when it commits, so two writers commit
them out of order and a stream that followed the id skipped the lower one.
Each row now records ``xact_id``: the transaction that wrote it (or, when
later, the ``xact_id`` of the task's previous history row, so one task's
transitions keep their order). The all-tasks order is ``(xact_id, id)``, and
a row is final once ``xact_id < pg_snapshot_xmin(pg_current_snapshot())``:
every transaction that could still write before it has ended. The streams
deliver only final rows, so what they deliver only ever grows as a prefix of
that order (``app/events.py``).

The column is added with a constant default (no table rewrite: rows written
before read ``0``, the oldest place, which is right since they committed long
ago), then its default becomes ``pg_current_xact_id()`` for new rows. The
index on ``(xact_id, id)`` serves the live stream and the replay after a
Last-Event-ID; building it on a large history blocks writes to
``task_history`` while it runs.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE task_history ADD COLUMN xact_id xid8 NOT NULL DEFAULT '0';
ALTER TABLE task_history ALTER COLUMN xact_id SET DEFAULT pg_current_xact_id();
COMMENT ON COLUMN task_history.xact_id IS
    'Place in the all-tasks order (xact_id, id): the writing transaction, or the task''s previous row''s if later; 0 before migration 0008.';
CREATE INDEX ix_task_history_xact_id ON task_history (xact_id, id);

CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
DECLARE
    sent bigint;
    delivery_ids bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload, n.callback_url,
               n.callback_events, n.callback_max_attempts,
               CASE WHEN n.callback_url IS NOT NULL
                    THEN to_jsonb(n) - 'callback_secret' - 'callback_headers' END AS snapshot
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
    ), overtaken AS (
        -- Only a transaction younger than this one can have written a task's previous
        -- transition with a later place; while none has ended, the lookups are skipped.
        SELECT pg_snapshot_xmax(pg_current_snapshot()) > pg_current_xact_id() AS younger_ended
    ), hist AS (
        -- A transaction that took its id before the one that wrote the task's previous
        -- transition (it waited for that one's row lock) keeps that one's place, so a task's
        -- transitions are in the all-tasks order as they happened.
        INSERT INTO task_history (task_id, user_id, from_status, to_status, attempt, worker_id,
                                  error, xact_id)
        SELECT c.id, c.user_id, c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('FAILED', 'RETRYING') THEN c.error END,
               CASE WHEN (SELECT younger_ended FROM overtaken)
                    THEN greatest(pg_current_xact_id(),
                                  (SELECT p.xact_id FROM task_history p
                                    WHERE p.task_id = c.id ORDER BY p.id DESC LIMIT 1))
                    ELSE pg_current_xact_id() END
          FROM changed c ORDER BY c.id
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
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM (SELECT c.*, (
                       -- The first event of the transition the task subscribed to (NULL
                       -- callback_events: succeeded, failed, cancelled).
                       SELECT x.name
                         FROM unnest(taskq_webhook_events(c.to_status))
                              WITH ORDINALITY AS x(name, pos)
                        WHERE x.name = ANY(coalesce(c.callback_events,
                                  ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                        ORDER BY x.pos
                        LIMIT 1) AS event
                  FROM changed c WHERE c.callback_url IS NOT NULL) due
         WHERE event IS NOT NULL
         ORDER BY id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT array_agg(id ORDER BY id) FROM deliveries)
      INTO sent, delivery_ids;
    IF delivery_ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
    END IF;
    RETURN NULL;
END $$;
"""

# The trigger function as 0005 left it, verbatim; then no xact_id.
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off SET jit = off AS $$
DECLARE
    sent bigint;
    delivery_ids bigint[];
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT n.id, n.user_id, n.queue, o.status AS from_status, n.status AS to_status,
               n.attempts, n.worker_id, n.error, n.task_type, n.payload, n.callback_url,
               n.callback_events, n.callback_max_attempts,
               CASE WHEN n.callback_url IS NOT NULL
                    THEN to_jsonb(n) - 'callback_secret' - 'callback_headers' END AS snapshot
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
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM (SELECT c.*, (
                       -- The first event of the transition the task subscribed to (NULL
                       -- callback_events: succeeded, failed, cancelled).
                       SELECT x.name
                         FROM unnest(taskq_webhook_events(c.to_status))
                              WITH ORDINALITY AS x(name, pos)
                        WHERE x.name = ANY(coalesce(c.callback_events,
                                  ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                        ORDER BY x.pos
                        LIMIT 1) AS event
                  FROM changed c WHERE c.callback_url IS NOT NULL) due
         WHERE event IS NOT NULL
         ORDER BY id
        RETURNING id
    )
    SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM wake)
         + (SELECT count(*) FROM cancels),
           (SELECT array_agg(id ORDER BY id) FROM deliveries)
      INTO sent, delivery_ids;
    IF delivery_ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(delivery_ids);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_updated() IS
    'Per status change: a task_history row, dead letter on FAILED, NOTIFY, webhook deliveries.';
DROP INDEX ix_task_history_xact_id;
ALTER TABLE task_history DROP COLUMN xact_id;
"""


def upgrade() -> None:
    """Add task_history.xact_id, its index, and the trigger that fills it."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0007: 0005's trigger function, no xact_id."""
    op.execute(DOWNGRADE)
