"""Settings shared by the API, the worker and the command line.

Read from the environment, with a ``.env`` file in the working directory
loaded first when present (the environment wins). Flask-free, so a worker
process never pays for importing the web stack.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str | None, name: str, default: str = "INFO") -> str:
    """A logging level name (any case; WARN for WARNING), checked; ``name`` is where it came
    from, for the error."""
    if value is None or value.strip() == "":
        return default
    level = value.strip().upper()
    level = "WARNING" if level == "WARN" else level
    if level not in LOG_LEVELS:
        raise SettingError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def database_url() -> str:
    """DATABASE_URL as a libpq URL (``postgresql://``); an error when unset."""
    url = env("DATABASE_URL")
    if url is None:
        raise SettingError("DATABASE_URL is not set (taskq up starts an embedded Postgres)")
    return libpq_url(url)


def listen_database_url(default: str) -> str:
    """TASKQ_LISTEN_DATABASE_URL: a direct session connection (LISTEN, the leader's lock).

    Defaults to ``default``, the DATABASE_URL in use. When DATABASE_URL points at PgBouncer in
    transaction pooling, this one must reach Postgres itself (or a session pool).
    """
    url = env("TASKQ_LISTEN_DATABASE_URL")
    return default if url is None else libpq_url(url)


def database_pooled(url: str, listen_url: str) -> bool:
    """TASKQ_DATABASE_POOLED: is DATABASE_URL a transaction pool (no prepared statements).

    Unset, it is guessed from the two URLs: a separate direct URL means a pool.
    """
    return env_bool("TASKQ_DATABASE_POOLED", listen_url != url)


def hostname() -> str:
    """TASKQ_HOSTNAME: this host's name in worker ids (default: the system's host name)."""
    return env("TASKQ_HOSTNAME") or socket.gethostname()


def libpq_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix: postgresql+psycopg:// -> postgresql://."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise SettingError(f"not a PostgreSQL URL: {url!r}")
    return "postgresql://" + rest


def metrics_dir(database_url: str) -> str:
    """PROMETHEUS_MULTIPROC_DIR, set (and made) when unset: one directory per user, host and
    database, so a ``taskq api`` and a ``taskq worker`` started apart on one machine find
    each other's samples with nothing configured.

    It lives under ``$XDG_RUNTIME_DIR`` (else the temp directory), mode 0700, and must be
    the user's own, not a link. Live gauges left by processes that are gone are dropped.
    """
    given = env("PROMETHEUS_MULTIPROC_DIR")
    if given:
        return given
    import hashlib
    import stat
    import tempfile

    digest = hashlib.sha256(libpq_url(database_url).encode()).hexdigest()[:12]
    root = Path(env("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    path = root / f"taskq-metrics-{os.getuid()}-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SettingError(f"{path} is not a private directory of this user: set "
                           "PROMETHEUS_MULTIPROC_DIR to one")  # fmt: skip
    drop_dead_gauges(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def drop_dead_gauges(path: Path) -> None:
    """Forget the live gauges (``gauge_live*_<pid>.db``) of processes that no longer run:
    what prometheus_client's ``mark_process_dead`` does, without importing it here (its
    import fixes its mode by PROMETHEUS_MULTIPROC_DIR as it is then)."""
    for file in path.glob("gauge_live*_*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            file.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sqlalchemy_url(url: str) -> str:
    """The same URL with SQLAlchemy's psycopg 3 driver named."""
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


def allow_private_urls() -> bool:
    """TASKQ_ALLOW_PRIVATE_URLS: may outbound calls reach private addresses."""
    return env_bool("TASKQ_ALLOW_PRIVATE_URLS", False)


def parse_seconds(value: str, name: str = "seconds") -> tuple[float, float]:
    """``"a-b"`` or ``"n"`` as a (low, high) range of seconds; SettingError when malformed."""
    low, sep, high = value.strip().partition("-")
    try:
        bounds = (float(low), float(high) if sep else float(low))
    except ValueError:
        raise SettingError(f"{name} must be 'n' or 'a-b' seconds, got {value!r}") from None
    if bounds[0] < 0 or bounds[1] < bounds[0] or not all(map(math.isfinite, bounds)):
        raise SettingError(f"{name} must be 'n' or 'a-b' with 0 <= a <= b, got {value!r}")
    return bounds


def env_seconds(name: str, default: str) -> tuple[float, float]:
    """A range-of-seconds setting (``"n"`` or ``"a-b"``)."""
    return parse_seconds(env(name, default) or default, name)


def split_modules(value: str | None) -> tuple[str, ...]:
    """``"a.b, c"`` -> ("a.b", "c"): the module list of TASKQ_IMPORTS."""
    return tuple(filter(None, (m.strip() for m in (value or "").split(","))))


@dataclass(frozen=True)
class TaskSettings:
    """The settings task functions use, read once at start-up and handed over in ``ctx``."""

    process_seconds: tuple[float, float] = (10.0, 20.0)
    simulated_seconds: tuple[float, float] = (0.1, 0.5)
    cleanup_days: int = 30
    webhook_timeout: float = 10.0
    allow_private_urls: bool = False
    database_pooled: bool = False  # ctx.connection() goes through a transaction pool
    hostname: str = ""  # the worker's host: its task connections are named role@host


def task_settings() -> TaskSettings:
    """TASKQ_PROCESS_SECONDS, TASKQ_SIMULATED_SECONDS, TASKQ_CLEANUP_DAYS,
    TASKQ_WEBHOOK_TIMEOUT and TASKQ_ALLOW_PRIVATE_URLS, checked."""
    return TaskSettings(
        process_seconds=env_seconds("TASKQ_PROCESS_SECONDS", "10-20"),
        simulated_seconds=env_seconds("TASKQ_SIMULATED_SECONDS", "0.1-0.5"),
        cleanup_days=env_int("TASKQ_CLEANUP_DAYS", 30, minimum=0),
        webhook_timeout=env_float("TASKQ_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
        allow_private_urls=allow_private_urls(),
    )


def history_days() -> int:
    """TASKQ_HISTORY_DAYS: whole days of task history kept, TASKQ_CLEANUP_DAYS (at least 1)
    by default. The worker leader drops the history partitions (one per UTC day) older than this.
    """
    cleanup_days = env_int("TASKQ_CLEANUP_DAYS", 30, minimum=0)
    return env_int("TASKQ_HISTORY_DAYS", max(cleanup_days, 1), minimum=1)
