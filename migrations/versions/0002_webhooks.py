"""Webhooks: a delivery row and a ``deliver_webhook`` task per subscribed transition.

A second statement-level trigger on ``tasks`` turns the transitions of tasks
that have a ``callback_url`` into ``webhook_deliveries`` rows and
``deliver_webhook`` tasks (queue ``webhooks``, no owner), set-wise and in the
same statement as the transition, so a webhook is enqueued exactly when the
transition commits, whoever made it. Tasks without a callback cost one scan
of the transition table that finds nothing.

Event names: task.succeeded (COMPLETED), task.failed (FAILED),
task.cancelled / task.revoked (CANCELLED), task.started (PROCESSING),
task.retrying (RETRYING), task.queued (back to PENDING). A NULL
``callback_events`` means succeeded, failed and cancelled. The retry delay of
the delivery task is the database setting ``taskq.webhook_retry_delay``
(seconds, default 10; ``ALTER DATABASE … SET taskq.webhook_retry_delay = 2``).

History: this is the text of b781496, which every database since has run. As
it first landed (9653e0b) it had no ``taskq_enqueue_webhook_deliveries()`` (the
webhook trigger inserted the delivery tasks itself); 0005 creates the function
on databases that ran that version. The downgrade's last line (the comment
upgrade() sets on ``webhook_deliveries.payload``) was added with 0005, when the
revision walk test found downgrade() left it behind.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE webhook_deliveries ADD COLUMN attempt_log jsonb NOT NULL DEFAULT '[]';
COMMENT ON COLUMN webhook_deliveries.attempt_log IS
    'Every attempt: {attempt, at, status_code, duration_ms, error}, oldest first.';
COMMENT ON COLUMN webhook_deliveries.payload IS
    'Snapshot of the task at the transition (no secret, no headers): the body''s "task".';

CREATE FUNCTION taskq_enqueue_webhook_deliveries(delivery_ids bigint[]) RETURNS integer
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

DOWNGRADE = """
DROP TRIGGER IF EXISTS tasks_webhooks ON tasks;
DROP FUNCTION IF EXISTS taskq_tasks_webhooks();
DROP FUNCTION IF EXISTS taskq_enqueue_webhook_deliveries(bigint[]);
ALTER TABLE webhook_deliveries DROP COLUMN IF EXISTS attempt_log;
COMMENT ON COLUMN webhook_deliveries.payload IS NULL;
"""


def upgrade() -> None:
    """Add the webhook trigger and the attempt log."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove what upgrade() added."""
    op.execute(DOWNGRADE)
