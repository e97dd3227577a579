"""Each webhook delivery knows its sender: the one task that may send it.

``deliver_webhook`` took any delivery id it was given, so a task made with
another user's delivery id (through the API, or through psql) resent that
user's signed webhook and used up its attempts. A delivery now records the
``deliver_webhook`` task the system enqueued for it
(``taskq_enqueue_webhook_deliveries``: the transition trigger, replay and
trigger-webhook all go through it), and the sender claims an attempt with one
conditional UPDATE (``claim_webhook_delivery``) that holds only for that task,
while it runs, for a pending delivery with attempts left.

Existing deliveries get the first system task made for them since they were
created (no owner, queue ``webhooks``).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE webhook_deliveries ADD COLUMN sender_task_id bigint;
COMMENT ON COLUMN webhook_deliveries.sender_task_id IS
    'The deliver_webhook task the system enqueued for this delivery: the only task that may send it.';

UPDATE webhook_deliveries w
   SET sender_task_id = s.id
  FROM (SELECT DISTINCT ON (w.id) w.id AS delivery_id, t.id
          FROM tasks t
          JOIN webhook_deliveries w
            ON t.payload->>'delivery_id' = w.id::text AND t.created_at >= w.created_at
         WHERE t.task_type = 'deliver_webhook' AND t.user_id IS NULL AND t.queue = 'webhooks'
         ORDER BY w.id, t.id) s
 WHERE w.id = s.delivery_id;

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
        RETURNING id, (payload->>'delivery_id')::bigint AS delivery_id
    ), linked AS (
        UPDATE webhook_deliveries w
           SET sender_task_id = q.id
          FROM queued q
         WHERE w.id = q.delivery_id
        RETURNING 1)
    SELECT count(*)::integer FROM linked;
$$;
COMMENT ON FUNCTION taskq_enqueue_webhook_deliveries(bigint[]) IS
    'One deliver_webhook task (queue webhooks, no owner) per delivery id, recorded as its sender.';
"""

DOWNGRADE = r"""
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
ALTER TABLE webhook_deliveries DROP COLUMN sender_task_id;
"""


def upgrade() -> None:
    """Add and backfill sender_task_id; the enqueue function records it."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """0002's enqueue function again, and no sender column."""
    op.execute(DOWNGRADE)
