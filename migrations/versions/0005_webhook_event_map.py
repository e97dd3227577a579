"""One home for the webhook event map in the database; 0002 as it landed, made whole.

- ``taskq_webhook_events(status)``: the webhook events of a transition to
  ``status``, first choice first. ``taskq_tasks_updated()`` now reads the map
  from it instead of carrying its own CASE (0002 and 0003 each had a copy);
  ``taskq.representation.EVENTS_FOR_STATUS`` is the Python side, and
  ``tests/integration/test_schema.py`` checks the trigger and it agree for
  every status. An IMMUTABLE one-expression SQL function: the planner inlines
  it, so the trigger's plan is what it was.
- ``taskq_enqueue_webhook_deliveries(bigint[])``: 0002 was edited after it
  landed (b781496) to create this function, which 0003's trigger calls. A
  database that ran 0002 as it first landed (9653e0b) never got it, and its
  webhook deliveries fail; this creates it there. Elsewhere it replaces the
  function with the same text, so every database ends in the same state.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION taskq_webhook_events(to_status task_status) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE to_status
               WHEN 'PENDING'    THEN ARRAY['task.queued']
               WHEN 'PROCESSING' THEN ARRAY['task.started']
               WHEN 'RETRYING'   THEN ARRAY['task.retrying']
               WHEN 'COMPLETED'  THEN ARRAY['task.succeeded']
               WHEN 'FAILED'     THEN ARRAY['task.failed']
               WHEN 'CANCELLED'  THEN ARRAY['task.cancelled', 'task.revoked']
           END
$$;
COMMENT ON FUNCTION taskq_webhook_events(task_status) IS
    'Webhook events of a transition to the status, first choice first (subscribers may use any).';

CREATE OR REPLACE FUNCTION taskq_enqueue_webhook_deliveries(delivery_ids bigint[]) RETURNS integer
LANGUAGE sql AS $$
    WITH queued AS (
        INSERT INTO tasks (title, task_type, payload, queue, priority, max_retries,
                           retry_delay, timeout)
        SELECT 'webhook delivery ' || w.id, 'deliver_webhook',
               jsonb_build_object('delivery_id', w.id), 'webhooks', 10, w.max_attempts - 1,
               coalesce(nullif(current_setting('taskq.webhook_retry_delay', true), '')::integer,
                        10),
               120
          FROM webhook_deliveries w
         WHERE w.id = ANY(delivery_ids)
         ORDER BY w.id
        RETURNING 1)
    SELECT count(*)::integer FROM queued;
$$;
COMMENT ON FUNCTION taskq_enqueue_webhook_deliveries(bigint[]) IS
    'One deliver_webhook task (queue webhooks, no owner) per delivery id.';

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
"""

# What 0003 made of taskq_tasks_updated(), verbatim.
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
DROP FUNCTION taskq_webhook_events(task_status);
"""


def upgrade() -> None:
    """Add the event map function, use it in the trigger, make sure 0002's function exists."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0003's trigger; taskq_enqueue_webhook_deliveries() stays (it is 0002's)."""
    op.execute(DOWNGRADE)
