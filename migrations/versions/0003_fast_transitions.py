"""One AFTER UPDATE trigger on tasks instead of two, with a plan that stays linear.

The history/NOTIFY trigger (0001) and the webhook trigger (0002) each joined
``new_rows`` to ``old_rows``. PL/pgSQL caches the plan of a query without
parameters on a function's first call in a session, sized for the transition
tables of that call: a worker's first claim (one row, or none) left a nested
loop that then compared every new row with every old row of each later batch
(1,000 rows: a million comparisons per statement). Now one function joins the
transition tables once, with nested loops off so the join is hashed whatever
the cached estimate, and derives history, dead letters, NOTIFY and webhook
deliveries from that one pass. The contract is unchanged: one ``task_history``
row and one NOTIFY per status change, whoever makes it.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TRIGGER tasks_webhooks ON tasks;
DROP FUNCTION taskq_tasks_webhooks();

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
                         FROM unnest(CASE c.to_status
                                  WHEN 'COMPLETED'  THEN ARRAY['task.succeeded']
                                  WHEN 'FAILED'     THEN ARRAY['task.failed']
                                  WHEN 'CANCELLED'  THEN ARRAY['task.cancelled', 'task.revoked']
                                  WHEN 'PROCESSING' THEN ARRAY['task.started']
                                  WHEN 'RETRYING'   THEN ARRAY['task.retrying']
                                  WHEN 'PENDING'    THEN ARRAY['task.queued']
                              END) WITH ORDINALITY AS x(name, pos)
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
"""


# 0001's taskq_tasks_updated() and 0002's webhook trigger, as this downgrade has
# recreated them since 0003 landed (it used to cut them out of those migrations'
# files at run time; this is the text it produced).
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION taskq_tasks_updated() RETURNS trigger
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
COMMENT ON FUNCTION taskq_tasks_updated() IS NULL;
CREATE FUNCTION taskq_tasks_webhooks() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    WITH due AS (
        SELECT n.id, n.callback_url, n.callback_max_attempts, ev.event,
               to_jsonb(n) - 'callback_secret' - 'callback_headers' AS snapshot
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id AND o.status IS DISTINCT FROM n.status
         CROSS JOIN LATERAL (
               SELECT x.name
                 FROM unnest(CASE n.status
                          WHEN 'COMPLETED'  THEN ARRAY['task.succeeded']
                          WHEN 'FAILED'     THEN ARRAY['task.failed']
                          WHEN 'CANCELLED'  THEN ARRAY['task.cancelled', 'task.revoked']
                          WHEN 'PROCESSING' THEN ARRAY['task.started']
                          WHEN 'RETRYING'   THEN ARRAY['task.retrying']
                          WHEN 'PENDING'    THEN ARRAY['task.queued']
                      END) WITH ORDINALITY AS x(name, pos)
                WHERE x.name = ANY(coalesce(n.callback_events,
                          ARRAY['task.succeeded', 'task.failed', 'task.cancelled']))
                ORDER BY x.pos
                LIMIT 1) ev(event)
         WHERE n.callback_url IS NOT NULL
    ), deliveries AS (
        INSERT INTO webhook_deliveries (task_id, event, url, payload, max_attempts)
        SELECT id, event, callback_url, snapshot, greatest(callback_max_attempts, 1)
          FROM due ORDER BY id
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM deliveries;
    IF ids IS NOT NULL THEN
        PERFORM taskq_enqueue_webhook_deliveries(ids);
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION taskq_tasks_webhooks() IS
    'Enqueues webhook deliveries for subscribed transitions of tasks with a callback_url.';

CREATE TRIGGER tasks_webhooks AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskq_tasks_webhooks();
"""


def upgrade() -> None:
    """Merge the two AFTER UPDATE triggers of tasks into one linear pass."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0002's two triggers."""
    op.execute(DOWNGRADE)
