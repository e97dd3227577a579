"""Liveness and readiness: /healthz (process up), /readyz (Postgres, migrations, Redis)."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify

from app import schemas
from app.db import get_conn
from app.openapi import doc

bp = Blueprint("health", __name__)


def migration_head() -> str:
    """The newest migration: ``TASKQ_MIGRATION_HEAD`` when ``taskq api`` found it, else Alembic's.

    Asking Alembic imports it and SQLAlchemy (about 22 MB resident in every API
    process), so ``taskq api`` asks once, in a short-lived child process.
    """
    head = current_app.config["TASKQ_MIGRATION_HEAD"]
    if head:
        return head
    from taskq.migrate import head_revision

    return head_revision()


@bp.get("/healthz")
@doc("Liveness", tag="service", response=schemas.HealthSchema, auth=False, database=False)
def healthz():
    """The process is up and serving."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@doc(
    "Readiness: Postgres answers and is migrated; Redis is reported",
    tag="service",
    response=schemas.ReadySchema,
    also={503: schemas.ReadySchema},
    auth=False,
    database=False,
)
def readyz():
    """Ready when Postgres answers and is migrated to head; Redis is reported when configured."""
    checks: dict[str, str] = {}
    ready = True
    try:
        with get_conn() as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row["version_num"] if row else None
        head = migration_head()
        checks["postgres"] = "ok"
        checks["migrations"] = "ok" if revision == head else f"at {revision}, head is {head}"
        ready = revision == head
    except Exception as exc:  # any failure means not ready; the reason is reported
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
        ready = False
    redis_check = current_app.extensions.get("taskq_redis_check")
    if current_app.config.get("REDIS_URL") and redis_check is not None:
        checks["redis"] = "ok" if redis_check() else "unavailable (cache off, limits per process)"
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return jsonify(body), 200 if ready else 503


def init_app(app: Flask) -> None:
    """Register the health endpoints (outside /api/v1)."""
    app.register_blueprint(bp)
