"""Flask settings: defaults, then the environment (and .env), then overrides.

Every setting is read and checked here, once, at start-up: a malformed value
stops the process with a clear message instead of failing a request later.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from taskq.settings import (
    SettingError,
    allow_private_urls,
    database_pooled,
    env,
    env_bool,
    env_float,
    env_int,
    libpq_url,
    listen_database_url,
    log_level,
    split_modules,
)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url(url: str | None) -> str | None:
    """REDIS_URL, checked for a scheme redis-py connects with."""
    if url is not None and not url.startswith(REDIS_SCHEMES):
        raise SettingError(f"REDIS_URL must start with {', '.join(REDIS_SCHEMES)}, got {url!r}")
    return url


def rate_limit(name: str, default: str) -> str:
    """A flask-limiter limit string (``20/minute;60/hour``), checked."""
    from limits import parse_many

    value = env(name, default) or default
    try:
        parse_many(value)
    except ValueError:
        raise SettingError(f"{name} must be like '20/minute;60/hour', got {value!r}") from None
    return value


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the app config from the environment, with ``overrides`` on top."""
    overrides = dict(overrides or {})
    environment = overrides.get("TASKQ_ENV") or env("TASKQ_ENV", "production")
    secret = overrides.get("JWT_SECRET_KEY") or env("JWT_SECRET_KEY")
    if not secret:
        if environment not in {"development", "test"}:
            raise SettingError("JWT_SECRET_KEY is required outside development (TASKQ_ENV)")
        secret = secrets.token_urlsafe(32)
    database_url = overrides.get("DATABASE_URL") or env("DATABASE_URL")
    database_url = libpq_url(database_url) if database_url else None
    listen_url = overrides.get("LISTEN_DATABASE_URL") or (
        listen_database_url(database_url) if database_url else None
    )
    config: dict[str, Any] = {
        # DATABASE_URL may be a transaction pool (PgBouncer); LISTEN needs a session of its own.
        "DATABASE_URL": database_url,
        "LISTEN_DATABASE_URL": listen_url,
        "DATABASE_POOLED": bool(database_url) and database_pooled(database_url, listen_url),
        "DB_POOL_MIN": env_int("TASKQ_DB_POOL_MIN", 1, minimum=0),
        "DB_POOL_MAX": env_int("TASKQ_DB_POOL_MAX", 10, minimum=1),
        "DB_POOL_TIMEOUT": env_float("TASKQ_DB_POOL_TIMEOUT", 5.0, minimum=0.1),
        "REDIS_URL": redis_url(env("REDIS_URL")),
        "SECRET_KEY": secret,
        "JWT_SECRET_KEY": secret,
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(
            seconds=env_int("TASKQ_ACCESS_TOKEN_SECONDS", 15 * 60, minimum=10)
        ),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(
            seconds=env_int("TASKQ_REFRESH_TOKEN_SECONDS", 7 * 24 * 3600, minimum=60)
        ),
        # Bearer headers for API clients; HttpOnly cookies for the dashboard, whose
        # state-changing requests must repeat the CSRF cookie in X-CSRF-TOKEN.
        "JWT_TOKEN_LOCATION": ["headers", "cookies"],
        "JWT_COOKIE_CSRF_PROTECT": True,
        "JWT_COOKIE_SAMESITE": "Strict",
        "JWT_COOKIE_SECURE": env_bool(
            "TASKQ_COOKIE_SECURE", environment not in {"development", "test"}
        ),
        "JWT_REFRESH_COOKIE_PATH": "/api/v1/auth/",
        "MAX_CONTENT_LENGTH": env_int("TASKQ_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
        "TASKQ_MAX_BATCH": env_int("TASKQ_MAX_BATCH", 1000, minimum=1),
        "TASKQ_PAGE_SIZE": env_int("TASKQ_PAGE_SIZE", 20, minimum=1),
        "TASKQ_MAX_PAGE_SIZE": env_int("TASKQ_MAX_PAGE_SIZE", 100, minimum=1),
        "TASKQ_COUNT_LIMIT": env_int("TASKQ_COUNT_LIMIT", 1000, minimum=1),
        "TASKQ_CACHE_TTL": env_int("TASKQ_CACHE_TTL", 300, minimum=1),
        "TASKQ_REDIS_RETRY_SECONDS": env_float("TASKQ_REDIS_RETRY_SECONDS", 2.0, minimum=0.1),
        "TASKQ_ALLOW_PRIVATE_URLS": allow_private_urls(),
        "TASKQ_IMPORTS": split_modules(env("TASKQ_IMPORTS")),
        "LOG_LEVEL": log_level(env("TASKQ_LOG_LEVEL"), "TASKQ_LOG_LEVEL"),
        "TASKQ_PROXY_HOPS": env_int("TASKQ_PROXY_HOPS", 0, minimum=0),
        "RATELIMIT_ENABLED": env_bool("TASKQ_RATELIMIT_ENABLED", True),
        "TASKQ_RATELIMIT_DEFAULT": rate_limit("TASKQ_RATELIMIT_DEFAULT", "6000/minute"),
        "TASKQ_RATELIMIT_AUTH": rate_limit("TASKQ_RATELIMIT_AUTH", "20/minute;60/hour"),
        "TASKQ_SSE_KEEPALIVE": env_float("TASKQ_SSE_KEEPALIVE", 15.0, minimum=0.05),
        "TASKQ_SSE_RETRY_MS": env_int("TASKQ_SSE_RETRY_MS", 3000, minimum=0),
        "TASKQ_SSE_QUEUE_SIZE": env_int("TASKQ_SSE_QUEUE_SIZE", 1000, minimum=10),
        "TASKQ_STREAM_TOKEN_SECONDS": env_int("TASKQ_STREAM_TOKEN_SECONDS", 60, minimum=5),
        "TASKQ_SSE_AUTH_CHECK_SECONDS": env_float(
            "TASKQ_SSE_AUTH_CHECK_SECONDS", 1.0, minimum=0.05
        ),
        "TASKQ_TOKEN_STATE_SECONDS": env_float("TASKQ_TOKEN_STATE_SECONDS", 5.0, minimum=0.0),
        "TASKQ_METRICS_TOKEN": env("TASKQ_METRICS_TOKEN"),
        "TASKQ_QUEUE_INFO_SECONDS": env_float("TASKQ_QUEUE_INFO_SECONDS", 1.0, minimum=0.0),
        # Set by the launchers (taskq api/up) before the app is built: the shared
        # metrics directory of gunicorn's processes, and the migrations' head.
        "PROMETHEUS_MULTIPROC_DIR": env("PROMETHEUS_MULTIPROC_DIR"),
        "TASKQ_MIGRATION_HEAD": env("TASKQ_MIGRATION_HEAD"),
    }
    config.update(overrides)
    return config
