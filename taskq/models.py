"""SQLAlchemy 2 models: the schema as Python, Alembic's target metadata.

The DDL itself lives in ``migrations/``; ``tests/integration/test_schema.py``
checks that the migrated database and these models agree. Runtime queries are
named SQL in ``sql/``; these models are for metadata, admin tooling and tests.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INTERVAL, JSONB, REAL, TIMESTAMP, TSVECTOR
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)
TZ = TIMESTAMP(timezone=True)


class Xid8(UserDefinedType):
    """Postgres ``xid8``: a 64-bit transaction id (SQLAlchemy has no type for it)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


ischema_names.setdefault("xid8", Xid8)  # so reflection (Alembic's comparison) knows it


class TaskStatus(enum.StrEnum):
    """The seven states of a task (WAITING: for its parents, ``depends_on``)."""

    WAITING = "WAITING"
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    CANCELLED = "CANCELLED"


RUNNABLE = (TaskStatus.PENDING, TaskStatus.RETRYING)
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
task_status = Enum(TaskStatus, name="task_status", values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = metadata


def now_default() -> Any:
    return mapped_column(TZ, nullable=False, server_default=func.now())


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    first_name: Mapped[str] = mapped_column(Text, server_default="")
    last_name: Mapped[str] = mapped_column(Text, server_default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    password_changed_at: Mapped[datetime] = now_default()
    created_at: Mapped[datetime] = now_default()
    updated_at: Mapped[datetime] = now_default()
    __table_args__ = (
        Index("uq_users_username", func.lower(text("username")), unique=True),
        Index("uq_users_email", func.lower(text("email")), unique=True),
    )


class TokenBlocklist(Base):
    __tablename__ = "token_blocklist"
    jti: Mapped[str] = mapped_column(Text, primary_key=True)
    token_type: Mapped[str] = mapped_column(Text)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(TZ, index=True)
    revoked_at: Mapped[datetime] = now_default()


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE")
    )
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, server_default="")
    task_type: Mapped[str] = mapped_column(Text, server_default="process")
    payload: Mapped[dict] = mapped_column(JSONB, server_default="{}")
    queue: Mapped[str] = mapped_column(Text, server_default="default")
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="5")
    status: Mapped[TaskStatus] = mapped_column(task_status, server_default="PENDING")
    scheduled_at: Mapped[datetime | None] = mapped_column(TZ)
    run_at: Mapped[datetime] = now_default()
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    max_retries: Mapped[int] = mapped_column(Integer, server_default="3")
    retry_delay: Mapped[int] = mapped_column(Integer, server_default="60")
    timeout: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}")
    metadata_: Mapped[dict] = mapped_column("metadata", JSONB, server_default="{}")
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    idempotency_fingerprint: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_token: Mapped[int | None] = mapped_column(BigInteger)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_events: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    callback_headers: Mapped[dict | None] = mapped_column(JSONB)
    callback_secret: Mapped[str | None] = mapped_column(Text)
    callback_max_attempts: Mapped[int] = mapped_column(Integer, server_default="5")
    callback_format: Mapped[str | None] = mapped_column(Text)  # migration 0013
    trace_context: Mapped[dict | None] = mapped_column(JSONB)  # migration 0013
    created_at: Mapped[datetime] = now_default()
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    completed_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = now_default()
    unique_key: Mapped[str | None] = mapped_column(Text)
    unique_for: Mapped[int | None] = mapped_column(Integer)
    unique_window: Mapped[datetime | None] = mapped_column(TZ)
    snoozes: Mapped[int] = mapped_column(Integer, server_default="0")
    progress: Mapped[float | None] = mapped_column(REAL)
    progress_message: Mapped[str | None] = mapped_column(Text)
    progress_at: Mapped[datetime | None] = mapped_column(TZ)
    depends_on: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    pending_parents: Mapped[int] = mapped_column(Integer, server_default="0")
    has_dependents: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    __table_args__ = (
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority"),
        CheckConstraint("unique_for IS NULL OR unique_for > 0", name="unique_for"),
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress"),
        CheckConstraint("max_retries >= 0", name="max_retries"),
        CheckConstraint("callback_format IN ('seed')", name="callback_format"),
        CheckConstraint("retry_delay >= 0", name="retry_delay"),
        CheckConstraint("timeout IS NULL OR timeout > 0", name="timeout"),
        Index(
            "ix_tasks_claim",
            "queue",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text("status IN ('PENDING', 'RETRYING')"),
        ),
        Index("ix_tasks_lease", "lease_expires_at", postgresql_where=text("status = 'PROCESSING'")),
        Index("ix_tasks_user_created", "user_id", text("created_at DESC"), text("id DESC")),
        Index("ix_tasks_created", text("created_at DESC"), text("id DESC")),
        Index(
            "uq_tasks_user_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "uq_tasks_unique_unfinished",
            "user_id",
            "unique_key",
            unique=True,
            postgresql_where=text(
                "unique_key IS NOT NULL AND unique_window IS NULL"
                " AND status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
            ),
        ),
        Index(
            "uq_tasks_unique_window",
            "user_id",
            "unique_key",
            "unique_window",
            unique=True,
            postgresql_where=text("unique_window IS NOT NULL"),
        ),
    )


class TaskDependency(Base):
    __tablename__ = "task_dependencies"
    parent_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class TaskHistory(Base):
    """Partitioned by ``created_at`` (migration 0010): the key holds the partition key."""

    __tablename__ = "task_history"
    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, server_default=text("nextval('task_history_id_seq')")
    )
    task_id: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    from_status: Mapped[TaskStatus | None] = mapped_column(task_status)
    to_status: Mapped[TaskStatus] = mapped_column(task_status)
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        TZ, primary_key=True, server_default=func.clock_timestamp()
    )
    xact_id: Mapped[str] = mapped_column(Xid8, server_default=func.pg_current_xact_id())
    __table_args__ = (
        Index("ix_task_history_task_id", "task_id", "id"),
        Index("ix_task_history_xact_id", "xact_id", "id"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger, index=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    task_type: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[datetime] = now_default()
    reprocessed_at: Mapped[datetime | None] = mapped_column(TZ)
    __table_args__ = (Index("ix_dead_letters_user_id", "user_id", text("id DESC")),)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSONB)
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, server_default="5")
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_default()
    delivered_at: Mapped[datetime | None] = mapped_column(TZ)
    attempt_log: Mapped[list] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    sender_task_id: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_webhook_deliveries_task_id", "task_id", "id"),)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(ARRAY(Text))
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = now_default()
    heartbeat_at: Mapped[datetime] = now_default()


class PeriodicTick(Base):
    __tablename__ = "periodic_ticks"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    tick_at: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = now_default()


class TaskCountDelta(Base):
    __tablename__ = "task_count_deltas"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    queue: Mapped[str] = mapped_column(Text)
    task_type: Mapped[str] = mapped_column(Text)
    status: Mapped[TaskStatus] = mapped_column(task_status)
    tasks: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(TZ, server_default=func.clock_timestamp())


class TaskCount(Base):
    __tablename__ = "task_counts"
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    queue: Mapped[str] = mapped_column(Text, primary_key=True)
    task_type: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[TaskStatus] = mapped_column(task_status, primary_key=True)
    tasks: Mapped[int] = mapped_column(BigInteger)


class QueueCount(Base):
    __tablename__ = "queue_counts"
    queue: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[TaskStatus] = mapped_column(task_status, primary_key=True)
    tasks: Mapped[int] = mapped_column(BigInteger)


class StatusEntry(Base):
    __tablename__ = "status_entries"
    queue: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[TaskStatus] = mapped_column(task_status, primary_key=True)
    at: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    entered: Mapped[int] = mapped_column(BigInteger)


class TaskSearch(Base):
    __tablename__ = "task_search"
    task_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    document: Mapped[str] = mapped_column(TSVECTOR)
    __table_args__ = (Index("ix_task_search_document", "document", postgresql_using="gin"),)


class Queue(Base):
    __tablename__ = "queues"
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    concurrency: Mapped[int | None] = mapped_column(Integer)
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    rate_period: Mapped[timedelta | None] = mapped_column(INTERVAL)
    description: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = now_default()
    updated_at: Mapped[datetime] = now_default()
    __table_args__ = (
        CheckConstraint("name ~ '^[A-Za-z0-9_.:-]{1,64}$'", name="name"),
        CheckConstraint("concurrency > 0", name="concurrency"),
        CheckConstraint(
            "(rate_limit IS NULL) = (rate_period IS NULL) AND rate_limit > 0 "
            "AND rate_period > interval '0'",
            name="rate",
        ),
    )


class QueueStart(Base):
    __tablename__ = "queue_starts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(Text, ForeignKey("queues.name", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(TZ)
    tasks: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_queue_starts_queue", "queue", "started_at"),)
