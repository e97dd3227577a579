"""Two task columns: ``callback_format`` (its webhooks' body) and ``trace_context``.

``callback_format``: NULL is taskq's own body (``{"event", "sent_at", "task"}`` with the API's task
fields); ``'seed'`` the field names of the earlier systems' webhooks (seed 001:
``name``, ``status: "success"``, ``error_message``), chosen per task at create.
``trace_context``: the W3C trace context (``traceparent``, ``tracestate``) of the
request that created the task, when OpenTelemetry records one (``taskq.tracing``);
the worker's claim and run spans and the webhook spans continue that trace.

Safe on a big table and beside running workers: nullable columns without a
default are a catalog change only (no rewrite, a brief ACCESS EXCLUSIVE lock),
and the CHECK is added ``NOT VALID`` then validated, which scans under a lock
that lets reads and writes go on. Old workers and API processes neither read
nor write the columns: their tasks get NULL, the old format and no trace.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE tasks ADD COLUMN callback_format text;
ALTER TABLE tasks ADD CONSTRAINT ck_tasks_callback_format
    CHECK (callback_format IN ('seed')) NOT VALID;
ALTER TABLE tasks VALIDATE CONSTRAINT ck_tasks_callback_format;
COMMENT ON COLUMN tasks.callback_format IS
    'Webhook body format: NULL taskq''s own, ''seed'' the earlier systems'' field names.';
ALTER TABLE tasks ADD COLUMN trace_context jsonb;
COMMENT ON COLUMN tasks.trace_context IS
    'W3C trace context of the creating request (traceparent, tracestate), when traced.';
"""

DOWNGRADE = r"""
ALTER TABLE tasks DROP COLUMN trace_context;
ALTER TABLE tasks DROP COLUMN callback_format;
"""


def upgrade() -> None:
    """Add tasks.callback_format and tasks.trace_context."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0008: neither column."""
    op.execute(DOWNGRADE)
