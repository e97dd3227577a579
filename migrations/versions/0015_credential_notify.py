"""NOTIFY ``taskq_credentials`` with the user id when a token of that user may stop holding.

Each API process keeps the ``token_state`` of the tokens it saw
(``app.revocation``) instead of asking Postgres on every request; these
triggers tell every process, on its LISTEN connection, whose state to drop:
a token put on the blocklist (logout, refresh rotation), a password change,
(de)activation, a change of ``is_admin``, a deleted user. Whoever writes (the
API, ``taskq create-admin``, an operator in psql) is heard.

Plain triggers on small tables; no rewrite, nothing on ``tasks``. Old API
processes ignore the channel.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION http_notify_user_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskq_credentials', OLD.id::text);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION http_notify_user_credentials() IS
    'Tell the API processes that the tokens of user OLD.id must be checked again.';

CREATE FUNCTION http_notify_blocklisted_credential() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskq_credentials', NEW.user_id::text);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION http_notify_blocklisted_credential() IS
    'Tell the API processes that a token of user NEW.user_id was revoked.';

CREATE TRIGGER users_credentials_changed AFTER UPDATE ON users FOR EACH ROW
    WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active
          OR OLD.is_admin IS DISTINCT FROM NEW.is_admin
          OR OLD.password_changed_at IS DISTINCT FROM NEW.password_changed_at
          OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION http_notify_user_credentials();
CREATE TRIGGER users_credentials_deleted AFTER DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION http_notify_user_credentials();
CREATE TRIGGER token_blocklist_credentials AFTER INSERT ON token_blocklist FOR EACH ROW
    EXECUTE FUNCTION http_notify_blocklisted_credential();
"""

DOWNGRADE = r"""
DROP TRIGGER token_blocklist_credentials ON token_blocklist;
DROP TRIGGER users_credentials_deleted ON users;
DROP TRIGGER users_credentials_changed ON users;
DROP FUNCTION http_notify_blocklisted_credential();
DROP FUNCTION http_notify_user_credentials();
"""


def upgrade() -> None:
    """Add the credential triggers."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Back to 0013: no credential notifications."""
    op.execute(DOWNGRADE)
