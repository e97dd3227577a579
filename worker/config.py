"""Worker settings: command-line options over the environment over defaults, checked once."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from taskq.settings import (
    SettingError,
    TaskSettings,
    database_pooled,
    database_url,
    env,
    env_float,
    env_int,
    history_days,
    hostname,
    listen_database_url,
    log_level,
    split_modules,
    task_settings,
)

DEFAULT_QUEUES = "default,webhooks"


@dataclass(frozen=True)
class PeriodicSchedule:
    """One cron schedule: enqueue ``task_type`` with ``payload`` at every tick."""

    name: str
    schedule: str
    task_type: str
    payload: dict = field(default_factory=dict)
    queue: str = "default"
    priority: int = 5
    max_retries: int = 0
    timeout: int | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a supervisor and its children need; plain data, so it pickles."""

    database_url: str  # pooled, maybe (TASKQ_DATABASE_POOLED)
    listen_database_url: str = ""  # direct: LISTEN and the leader lock; "" = database_url
    database_pooled: bool = False
    hostname: str = ""  # in worker ids; "" = the system's host name
    # In worker ids too: a random token per supervisor start, so hosts that share a name
    # (containers on the host's network, cloned machines) and pid still get ids of their own.
    instance: str = ""
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 2
    max_tasks: int = 0
    poll_interval: float = 2.0
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    task_timeout: float = 600.0
    soft_limit_ratio: float = 0.9
    shutdown_grace: float = 30.0
    max_retry_delay: float = 3600.0
    batch_size: int = 1000
    fast_task_ms: float = 5.0
    flush_ms: float = 50.0
    cancel_grace: float = 1.0
    reaper_interval: float = 5.0
    counts_interval: float = 1.0
    periodic_catchup: float = 300.0
    history_days: int = 30
    periodic: tuple[PeriodicSchedule, ...] = ()
    metrics_port: int | None = None
    log_level: str = "INFO"
    imports: tuple[str, ...] = ()
    tasks: TaskSettings = field(default_factory=TaskSettings)

    def __post_init__(self) -> None:
        if not self.listen_database_url:
            object.__setattr__(self, "listen_database_url", self.database_url)
        if not self.hostname:
            object.__setattr__(self, "hostname", hostname())
        if not self.instance:
            object.__setattr__(self, "instance", secrets.token_hex(3))
        if (self.tasks.database_pooled, self.tasks.hostname) != (self.database_pooled,
                                                                  self.hostname):  # fmt: skip
            # ctx.connection() and progress pool too, and are named after the host
            tasks = replace(self.tasks, database_pooled=self.database_pooled,
                            hostname=self.hostname)  # fmt: skip
            object.__setattr__(self, "tasks", tasks)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (for a child process)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerConfig:
        """The inverse of to_dict."""
        data = dict(data)
        data["queues"] = tuple(data["queues"])
        data["periodic"] = tuple(PeriodicSchedule(**p) for p in data["periodic"])
        data["imports"] = tuple(data.get("imports", ()))
        tasks = dict(data.get("tasks") or {})
        for key in ("process_seconds", "simulated_seconds"):
            if key in tasks:
                tasks[key] = tuple(tasks[key])
        data["tasks"] = TaskSettings(**tasks)
        return cls(**data)


def split_queues(value: str) -> tuple[str, ...]:
    """``"a, b"`` -> ("a", "b"); an error when empty."""
    queues = tuple(dict.fromkeys(q.strip() for q in value.split(",") if q.strip()))
    if not queues:
        raise SettingError("at least one queue is needed")
    return queues


# The system's periodic tasks: (name and task type, the setting of its cron, its default).
BUILTIN_SCHEDULES = (
    ("cleanup_old_tasks", "TASKQ_CLEANUP_SCHEDULE", "0 0 * * *"),
    ("rebuild_queue_indexes", "TASKQ_REINDEX_SCHEDULE", "30 0 * * *"),
)


def periodic_schedules(imports: tuple[str, ...] = ()) -> tuple[PeriodicSchedule, ...]:
    """TASKQ_PERIODIC (a JSON list of schedules, or an object keyed by name) plus the system's.

    The built-in ``cleanup_old_tasks`` runs on TASKQ_CLEANUP_SCHEDULE (default
    ``0 0 * * *``, midnight UTC) and ``rebuild_queue_indexes`` on
    TASKQ_REINDEX_SCHEDULE (``30 0 * * *``); ``off`` disables either, and a
    TASKQ_PERIODIC entry of the same name replaces it.
    """
    raw = env("TASKQ_PERIODIC")
    items: list[dict] = []
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise SettingError(f"TASKQ_PERIODIC is not JSON: {exc}") from None
        if isinstance(parsed, dict):
            parsed = [{"name": name, **spec} for name, spec in parsed.items()]
        if not isinstance(parsed, list) or not all(isinstance(p, dict) for p in parsed):
            raise SettingError("TASKQ_PERIODIC must be a JSON list of objects")
        items = parsed
    schedules = [check_schedule(item, imports) for item in items]
    for name, setting, default in BUILTIN_SCHEDULES:
        cron = env(setting, default)
        if cron and cron.lower() != "off" and not any(i.get("name") == name for i in items):
            item = {"name": name, "schedule": cron, "task_type": name}
            schedules.append(check_schedule(item, imports, setting))
    return tuple(schedules)


def check_schedule(
    item: dict, imports: tuple[str, ...] = (), setting: str = "TASKQ_PERIODIC"
) -> PeriodicSchedule:
    """A validated schedule: known fields, a valid cron expression, a payload the type accepts."""
    from marshmallow import ValidationError

    from worker.registry import load_task_modules

    try:
        schedule = PeriodicSchedule(**item)
    except TypeError as exc:
        raise SettingError(f"TASKQ_PERIODIC entry {item!r}: {exc}") from None
    if not valid_cron(schedule.schedule):
        raise SettingError(
            f"{setting} {schedule.name!r}: bad cron {schedule.schedule!r} (5 fields: minute "
            "hour day month weekday; or 6 with seconds first; or @hourly, @daily, …)"
        )
    registry = load_task_modules(imports)
    if schedule.task_type not in registry:
        raise SettingError(f"{setting} {schedule.name!r}: unknown task type {schedule.task_type!r}")
    try:
        registry[schedule.task_type].validate(schedule.payload)
    except ValidationError as exc:
        raise SettingError(f"{setting} {schedule.name!r}: bad payload {exc.messages}") from None
    return schedule


def valid_cron(expression: str) -> bool:
    """A schedule ``cron_ticks`` reads: 5 fields, 6 with seconds first, or an @-name."""
    from croniter import croniter

    fields = expression.split()
    if not (len(fields) in (5, 6) or (len(fields) == 1 and expression.startswith("@"))):
        return False  # croniter also reads 7 fields (a year): not a form we promise
    return croniter.is_valid(expression, second_at_beginning=True)


def cron_ticks(expression: str, start: datetime) -> Any:
    """croniter over ``expression`` from ``start``; six fields put the seconds first, as
    Quartz, Spring and node-cron write them (croniter's own default puts them last)."""
    from croniter import croniter

    return croniter(expression, start, second_at_beginning=True)


def load_config(**options: Any) -> WorkerConfig:
    """Settings from the environment, with command-line ``options`` (None = unset) on top."""
    given = {k: v for k, v in options.items() if v is not None}
    lease = env_float("TASKQ_LEASE_SECONDS", 30.0, minimum=0.5)
    # Webhook deliveries are tasks on their own queue: a worker started without
    # --queues serves them too, so webhooks work with no extra set-up.
    queues = given.pop("queues", None) or env("TASKQ_QUEUES") or DEFAULT_QUEUES
    imports = split_modules(env("TASKQ_IMPORTS"))
    from worker.registry import load_task_modules

    load_task_modules(imports)  # a module that does not import stops the worker here
    url = given.pop("database_url", None) or database_url()
    listen_url = given.pop("listen_database_url", None) or listen_database_url(url)
    config = WorkerConfig(
        database_url=url,
        listen_database_url=listen_url,
        database_pooled=database_pooled(url, listen_url),
        hostname=hostname(),
        queues=split_queues(queues) if isinstance(queues, str) else tuple(queues),
        concurrency=env_int("TASKQ_CONCURRENCY", os.cpu_count() or 1, minimum=1),
        max_tasks=env_int("TASKQ_MAX_TASKS", 0, minimum=0),
        poll_interval=env_float("TASKQ_POLL_INTERVAL", 2.0, minimum=0.01),
        lease_seconds=lease,
        heartbeat_seconds=env_float("TASKQ_HEARTBEAT_SECONDS", lease / 3, minimum=0.05),
        task_timeout=env_float("TASKQ_TASK_TIMEOUT", 600.0, minimum=0.1),
        soft_limit_ratio=env_float("TASKQ_SOFT_LIMIT_RATIO", 0.9, minimum=0.05),
        shutdown_grace=env_float("TASKQ_SHUTDOWN_GRACE", 30.0, minimum=0),
        max_retry_delay=env_float("TASKQ_MAX_RETRY_DELAY", 3600.0, minimum=0),
        batch_size=env_int("TASKQ_BATCH_SIZE", 1000, minimum=1),
        fast_task_ms=env_float("TASKQ_FAST_TASK_MS", 5.0, minimum=0),
        flush_ms=env_float("TASKQ_FLUSH_MS", 50.0, minimum=0),
        cancel_grace=env_float("TASKQ_CANCEL_GRACE", 1.0, minimum=0.05),
        reaper_interval=env_float("TASKQ_REAPER_INTERVAL", min(5.0, lease / 2), minimum=0.05),
        counts_interval=env_float("TASKQ_COUNTS_INTERVAL", 1.0, minimum=0.05),
        periodic_catchup=env_float("TASKQ_PERIODIC_CATCHUP", 300.0, minimum=0),
        history_days=history_days(),
        periodic=periodic_schedules(imports),
        metrics_port=env_int("TASKQ_METRICS_PORT", 0, minimum=0) or None,
        log_level=log_level(env("TASKQ_LOG_LEVEL"), "TASKQ_LOG_LEVEL"),
        imports=imports,
        tasks=task_settings(),
    )
    if config.soft_limit_ratio > 1:
        raise SettingError("TASKQ_SOFT_LIMIT_RATIO must be at most 1")
    return replace(config, **given)
