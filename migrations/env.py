"""Alembic environment: runs the migrations on the URL taskq.migrate gives it."""

from alembic import context
from sqlalchemy import create_engine, pool

from taskq.models import metadata
from taskq.settings import sqlalchemy_url

config = context.config


def run_migrations() -> None:
    """Apply the migrations online, in one transaction."""
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            # taskq migrate prints each step as it is applied (taskq.migrate.upgrade)
            on_version_apply=config.attributes.get("on_version_apply"),
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
