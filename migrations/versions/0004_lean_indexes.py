"""Fewer index insertions per task: two indexes that the hot path paid for and nothing needed.

- ``ix_tasks_finished`` (completed_at, partial on COMPLETED/FAILED) took an
  insertion at every completion and held every finished task of the
  retention window, for a daily clean-up only. The clean-up now walks the
  primary key from the oldest task (``delete_finished_tasks``).
- ``ix_task_history_user_id`` (user_id, id) took an insertion for every
  history row (three per task). Its one reader, the replay of
  ``GET /api/v1/events`` after a Last-Event-ID, walks the primary key from
  that id instead: a reconnect asks for the few rows written since.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
DROP INDEX ix_tasks_finished;
DROP INDEX ix_task_history_user_id;
"""

DOWNGRADE = """
CREATE INDEX ix_tasks_finished ON tasks (completed_at)
    WHERE status IN ('COMPLETED', 'FAILED');
CREATE INDEX ix_task_history_user_id ON task_history (user_id, id);
"""


def upgrade() -> None:
    """Drop the two indexes."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Recreate them as 0001 made them."""
    op.execute(DOWNGRADE)
