"""``taskq up``: an embedded Postgres when DATABASE_URL is unset, migrations, API and worker."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

from taskq.embedded import start_embedded_postgres
from taskq.migrate import upgrade
from taskq.settings import SettingError, env

SECRET_FILE = "jwt-secret"


def state_dir() -> Path:
    """``./.taskq``: what ``taskq up`` keeps between runs (data, the JWT secret), owner-only."""
    path = Path.cwd() / ".taskq"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def stored_secret(path: Path) -> str:
    """The JWT secret kept in ``path``, made on first use (mode 0600, created atomically).

    Every process ``taskq up`` starts signs and checks tokens with it, so a token
    is good on each API process and after a restart. The new secret is written to
    a private temporary file that is then hard-linked into place: a reader never
    sees a half-written file, and of two concurrent first starts one link wins
    and both use its secret. The value is never printed.
    """
    if not path.exists():
        fd, temporary = _private_temp_file(path.parent)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # a concurrent start made it first
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        print(f"taskq: {path} was readable by others; now mode 0600", file=sys.stderr)
    secret = path.read_text().strip()
    if not secret:
        raise SettingError(f"{path} is empty: delete it and a new secret is made")
    return secret


def _private_temp_file(directory: Path) -> tuple[int, str]:
    """A new file in ``directory`` only its owner may read, opened for writing."""
    while True:
        name = directory / f".{SECRET_FILE}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), str(name)
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue


def child_environment() -> dict[str, str]:
    """The environment of the processes ``taskq up`` starts (database URL aside).

    An explicit ``JWT_SECRET_KEY`` (environment or ``.env``) wins; otherwise the
    secret stored under ``./.taskq/`` is shared by every process.
    """
    environ = dict(os.environ)
    environ.setdefault("TASKQ_ENV", "development")
    # The console's session cookies must work on plain http://127.0.0.1 (no TLS here).
    environ.setdefault("TASKQ_COOKIE_SECURE", "0")
    explicit = env("JWT_SECRET_KEY")
    environ["JWT_SECRET_KEY"] = explicit or stored_secret(state_dir() / SECRET_FILE)
    return environ


def run_up(bind: str, api_workers: int, concurrency: int | None) -> int:
    """Start everything, wait, and stop it all cleanly on Ctrl-C or SIGTERM; the exit code."""
    environ = child_environment()
    url = env("DATABASE_URL")
    if url is None:
        url = start_embedded_postgres(state_dir() / "pgdata")
        print(f"taskq: embedded Postgres at {url}", flush=True)
    environ["DATABASE_URL"] = url
    # One metrics directory for the API and the worker: /metrics shows both.
    metrics_dir = state_dir() / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    upgrade(url)
    taskq = [sys.executable, "-m", "taskq.cli"]
    commands = [[*taskq, "api", "--bind", bind, "--workers", str(api_workers)]]
    worker = [*taskq, "worker"]
    if concurrency:
        worker += ["--concurrency", str(concurrency)]
    commands.append(worker)
    children = [subprocess.Popen(command, env=environ) for command in commands]
    print(
        f"taskq: console on http://{bind}/dashboard/, API on http://{bind}/api/v1, "
        "worker started; Ctrl-C stops",
        flush=True,
    )

    def stop(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    for child in children:
        code = child.wait()
        status = status or (code if code > 0 else 0)
        stop(signal.SIGTERM, None)
    return status
