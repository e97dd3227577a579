"""Alembic, driven from code: ``taskq migrate`` and the test fixtures use it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from taskq.settings import libpq_url, sqlalchemy_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic Config for ``url`` with our migrations folder."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", libpq_url(url).replace("%", "%%"))
    return config


def upgrade(
    url: str, revision: str = "head", progress: Callable[[str], None] | None = None
) -> None:
    """Migrate the database at ``url`` up to ``revision``; ``progress`` hears each step
    as it is applied (a migration on a big table can take minutes)."""
    config = alembic_config(url)
    if progress is not None:
        last = [time.monotonic()]

        def applied(*, step: Any, **_: Any) -> None:
            now = time.monotonic()
            doc = (step.up_revision.doc or "").strip().splitlines()
            progress(f"{step.up_revision_id}: {doc[0] if doc else ''} ({now - last[0]:.1f}s)")
            last[0] = now

        config.attributes["on_version_apply"] = applied
    command.upgrade(config, revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest revision of the migrations folder."""
    return ScriptDirectory.from_config(alembic_config("postgresql://x/x")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
