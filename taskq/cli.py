"""The ``taskq`` command line: up, migrate, api, worker, create-admin, unlock-account,
list-tasks, stats, bench.

Each command imports only what it runs: ``taskq worker`` never loads Flask.
"""

from __future__ import annotations

import os
import sys

import click

from taskq import settings
from taskq.settings import SettingError, database_url, env, split_modules


@click.group()
def main() -> None:
    """taskq: a task queue and notification service on PostgreSQL alone."""


def fail(message: str) -> None:
    click.echo(f"taskq: {message}", err=True)
    sys.exit(2)


def required_database_url() -> str:
    try:
        return database_url()
    except SettingError as exc:
        fail(str(exc))
        raise  # unreachable


@main.command()
def migrate() -> None:
    """Apply the migrations (alembic upgrade head) to DATABASE_URL."""
    from taskq.migrate import upgrade

    upgrade(required_database_url(), progress=lambda line: click.echo(f"ran {line}"))
    click.echo("database migrated to head")


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="processes")
def api(bind: str, workers: int) -> None:
    """Serve the API under gunicorn."""
    from taskq.serve import gunicorn_options, serve_api

    url = required_database_url()
    try:
        settings.metrics_dir(url)  # shared with a taskq worker of this database on this host
        from app.config import load_config

        load_config()  # every API setting checked here, before gunicorn forks
        options = gunicorn_options(bind, workers)
    except SettingError as exc:
        fail(str(exc))
    serve_api(options)


@main.command("create-admin")
@click.argument("username")
@click.option("--email", default=None, help="defaults to USERNAME@localhost")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def create_admin(username: str, email: str | None, password_stdin: bool) -> None:
    """Create an admin user (or make an existing user admin and set its password)."""
    from app.auth import create_admin_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user_id = create_admin_user(required_database_url(), username, email, password)
    except ValueError as exc:
        fail(str(exc))
    click.echo(f"admin {username} (id {user_id}) ready")


@main.command("unlock-account")
@click.argument("login")
def unlock_account(login: str) -> None:
    """Lift the login lock of an account (LOGIN: its username or email).

    Clears the account's failed-login counters in REDIS_URL; without Redis they
    live in each API process, and restarting the API clears them.
    """
    import redis

    from taskq.lockout import unlock_account as unlock

    redis_url = env("REDIS_URL")
    if redis_url is None:
        fail("REDIS_URL is not set: failed logins are counted in each API process; restart it")
    try:
        user = unlock(required_database_url(), redis_url, login)
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at REDIS_URL: {exc}")
    if user is None:
        click.echo(f"{login} is no active account; failed logins of that name cleared")
    else:
        click.echo(f"failed logins of {user['username']} (id {user['id']}) cleared")


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True, help="HOST:PORT of the API")
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1), help="API processes"
)
@click.option("--concurrency", default=None, type=click.IntRange(1), help="worker children")
def up(bind: str, workers: int, concurrency: int | None) -> None:
    """Everything on one machine: embedded Postgres if needed, migrations, API and worker.

    Without JWT_SECRET_KEY, one secret is made on first start and kept in
    ./.taskq/jwt-secret (mode 0600) for every process, so tokens survive restarts.
    """
    from taskq.up import run_up

    try:
        sys.exit(run_up(bind=bind, api_workers=workers, concurrency=concurrency))
    except SettingError as exc:
        fail(str(exc))


@main.command()
@click.option("--quick", is_flag=True, help="smaller sizes, one run each (under 5 minutes)")
@click.option("--database-url", default=None, help="server to benchmark on (default DATABASE_URL)")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="write")
@click.option("--system", "systems", multiple=True, help="only these systems (repeatable)")
@click.option("--tiny", is_flag=True, hidden=True, help="smoke-test sizes (figures meaningless)")
def bench(
    quick: bool, database_url: str | None, json_path: str | None, systems: tuple, tiny: bool
) -> None:
    """Benchmark taskq against PgQueuer and procrastinate on the same Postgres.

    The server is --database-url, else DATABASE_URL, else the embedded Postgres.
    """
    from pathlib import Path

    from bench.harness import FULL, QUICK, TINY, run_bench

    sizes = TINY if tiny else QUICK if quick else FULL
    url = database_url or env("DATABASE_URL")
    if url is None:  # like taskq up: a fresh install benchmarks on the embedded Postgres
        from taskq.embedded import start_embedded_postgres

        try:
            url = start_embedded_postgres(Path.cwd() / ".taskq" / "pgdata")
        except SettingError as exc:
            fail(str(exc))
        click.echo(f"taskq: no DATABASE_URL, benchmarking on the embedded Postgres at {url}")
    run_bench(url, sizes, Path(json_path) if json_path else None, list(systems) or None)


@main.command()
@click.option(
    "--queues", default=None, help="comma-separated (TASKQ_QUEUES; default: default,webhooks)"
)
@click.option("--concurrency", default=None, type=click.IntRange(1), help="child processes")
@click.option("--max-tasks", default=None, type=click.IntRange(0), help="recycle a child after N")
@click.option("--poll-interval", default=None, type=click.FloatRange(0.01), help="seconds")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535), help="Prometheus")
def worker(
    queues: str | None,
    concurrency: int | None,
    max_tasks: int | None,
    poll_interval: float | None,
    log_level: str | None,
    metrics_port: int | None,
) -> None:
    """A supervised pool of worker processes; SIGTERM drains it."""
    from worker.config import load_config, split_queues

    try:
        settings.metrics_dir(required_database_url())  # before worker.metrics is imported
        config = load_config(
            database_url=required_database_url(),
            queues=split_queues(queues) if queues else None,
            concurrency=concurrency,
            max_tasks=max_tasks,
            poll_interval=poll_interval,
            log_level=settings.log_level(log_level, "--log-level") if log_level else None,
            metrics_port=metrics_port,
        )
    except SettingError as exc:
        fail(str(exc))
    from worker.supervisor import run_worker

    sys.exit(run_worker(config))


@main.command("list-tasks")
def list_tasks() -> None:
    """Print the task-type registry (built-ins and TASKQ_IMPORTS modules)."""
    from worker.stats import registry_table

    click.echo(registry_table(split_modules(env("TASKQ_IMPORTS"))))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
def stats(as_json: bool) -> None:
    """Queue depth, age and rate per queue, stuck tasks and live workers (the sql/ views)."""
    from worker.stats import view_json, view_report

    url = required_database_url()
    click.echo(view_json(url) if as_json else view_report(url))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
