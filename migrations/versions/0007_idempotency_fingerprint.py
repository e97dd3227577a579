"""The fingerprint of the request that used an Idempotency-Key.

``POST /api/v1/tasks`` with an ``Idempotency-Key`` stores the sha256 of the
validated request beside the key. A later request with the same key and the
same fingerprint gets the first task back (200); one with another fingerprint
is refused (422) instead of silently answering with a task it did not ask for.
Tasks created before this revision have no fingerprint: a reuse of their key
still returns them.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE tasks ADD COLUMN idempotency_fingerprint text;
COMMENT ON COLUMN tasks.idempotency_fingerprint IS
    'sha256 of the validated create request that used idempotency_key; another request with the key gets 422.';
"""

DOWNGRADE = """
ALTER TABLE tasks DROP COLUMN idempotency_fingerprint;
"""


def upgrade() -> None:
    """Add the column (NULL for existing tasks: no rewrite of the table)."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop it."""
    op.execute(DOWNGRADE)
