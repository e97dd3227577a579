"""Settings shared by the API, the worker and the command line.

Read from the environment, with a ``.env`` file in the working directory
loaded first when present (the environment wins). Flask-free, so a worker
process never pays for importing the web stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

load_dotenv(Path.cwd() / ".env", override=False)


class SettingError(ValueError):
    """A setting is missing or malformed; raised at start-up, never later."""


def env(name: str, default: str | None = None) -> str | None:
    """The raw value of an environment setting, or ``default``."""
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off."""
    value = env(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{name} must be a yes/no value, got {value!r}")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """An integer setting, checked against ``minimum``."""
    value = env(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {number}")
    return number


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    """A number setting, checked against ``minimum``."""
    value = env(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name} must be at least {minimum}, got {number}")
    return number


def database_url() -> str:
    """DATABASE_URL as a libpq URL (``postgresql://``); an error when unset."""
    url = env("DATABASE_URL")
    if url is None:
        raise SettingError("DATABASE_URL is not set (taskq up starts an embedded Postgres)")
    return libpq_url(url)


def libpq_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix: postgresql+psycopg:// -> postgresql://."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise SettingError(f"not a PostgreSQL URL: {url!r}")
    return "postgresql://" + rest


def sqlalchemy_url(url: str) -> str:
    """The same URL with SQLAlchemy's psycopg 3 driver named."""
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


def allow_private_urls() -> bool:
    """TASKQ_ALLOW_PRIVATE_URLS: may outbound calls reach private addresses."""
    return env_bool("TASKQ_ALLOW_PRIVATE_URLS", False)
