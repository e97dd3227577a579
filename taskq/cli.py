"""The ``taskq`` command line: up, migrate, api, worker, create-admin, unlock-account,
list-tasks, stats, queue, bench.

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
    """Apply the migrations (alembic upgrade head) to DATABASE_URL.

    Through TASKQ_LISTEN_DATABASE_URL when set: DDL waits on locks and belongs
    on a direct connection, not in a transaction pool.
    """
    from taskq.migrate import upgrade
    from taskq.settings import listen_database_url

    upgrade(
        listen_database_url(required_database_url()),
        progress=lambda line: click.echo(f"ran {line}"),
    )
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
@click.option("--scale", default=None, help="taskq at these finished-task counts: 10k,100k,1m,10m")
@click.option("--soak", default=None, help="with --scale: then drain this many tasks (e.g. 1m)")
@click.option(
    "--results-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="where --scale writes scale.json/.md/.png (default bench/results)",
)
@click.option(
    "--enqueue-only", is_flag=True, help="taskq's enqueue workloads, without and with unique keys"
)
@click.option(
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(
        ["enqueue_single", "enqueue_batch", "drain_1proc", "drain_2proc", "pickup", "extra"]
    ),
    help="only these workloads (repeatable; extra: HTTP, SSE, ceiling, limits)",
)
@click.option("--repeats", default=None, type=click.IntRange(1), help="rounds (default 3, quick 1)")
@click.option(
    "--taskq-tree",
    "trees",
    multiple=True,
    help="LABEL=DIR: also taskq_LABEL, its workers from the source tree DIR (worker A/B)",
)
def bench(
    quick: bool,
    database_url: str | None,
    json_path: str | None,
    systems: tuple,
    tiny: bool,
    scale: str | None,
    soak: str | None,
    results_dir: str | None,
    enqueue_only: bool,
    workloads: tuple,
    repeats: int | None,
    trees: tuple,
) -> None:
    """Benchmark taskq against PgQueuer and procrastinate on the same Postgres.

    --scale measures taskq's reads, drain and pickup as finished tasks pile up
    (bench/scale.py). The server is --database-url, else DATABASE_URL, else the
    embedded Postgres. Each round runs every system in turn (alternating A/B on
    a shared machine): ``--workload pickup --repeats 6`` compares idle pickup alone, and
    ``--taskq-tree main=DIR`` adds workers from another checkout (A/B of worker code).
    """
    from dataclasses import replace
    from pathlib import Path

    from bench.harness import FULL, QUICK, RESULTS_DIR, TINY, WORKLOADS, run_bench

    sizes = TINY if tiny else QUICK if quick else FULL
    if repeats is not None:
        sizes = replace(sizes, repeats=repeats)
    url = database_url or env("DATABASE_URL")
    if url is None:  # like taskq up: a fresh install benchmarks on the embedded Postgres
        from taskq.embedded import start_embedded_postgres

        try:
            url = start_embedded_postgres(Path.cwd() / ".taskq" / "pgdata")
        except SettingError as exc:
            fail(str(exc))
        click.echo(f"taskq: no DATABASE_URL, benchmarking on the embedded Postgres at {url}")
    json_file = Path(json_path) if json_path else None
    if scale or soak:
        from bench.scale import main as run_scale

        try:
            run_scale(url, scale or "", soak, json_file, Path(results_dir or RESULTS_DIR), tiny)
        except ValueError as exc:
            fail(str(exc))
        return
    only, extra = list(systems), []
    if trees:
        from bench.harness import available_systems
        from bench.taskq_system import TaskqTreeSystem

        for tree in trees:
            label, _, path = tree.partition("=")
            if not label or not Path(path, "worker", "__main__.py").is_file():
                fail(f"--taskq-tree {tree}: want LABEL=DIR, DIR a taskq source tree")
            extra.append(TaskqTreeSystem(label, path))
        only += [system.name for system in extra] if only else []
        extra = available_systems() + extra
    run_bench(url, sizes, json_file, only or None, enqueue_only=enqueue_only,
              systems=extra or None, workloads=workloads or WORKLOADS)  # fmt: skip


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
            queues=split_queues(queues) if queues is not None else None,
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


@main.group()
def queue() -> None:
    """Queue controls: list, pause, resume, set limits (the queues table psql edits too)."""


QUEUE_COLUMNS = ["queue", "paused", "concurrency", "rate", "workers", "unserved", "description"]


def edit_queue(name: str, changes: dict) -> None:
    """Store ``changes`` in the row of queue ``name`` and print its controls."""
    import psycopg
    from psycopg.rows import dict_row

    from taskq.queues import set_queue
    from worker.stats import format_table

    with psycopg.connect(required_database_url(), row_factory=dict_row) as conn:
        try:
            row = set_queue(conn, name, changes)
        except psycopg.errors.CheckViolation:
            fail(f"invalid queue name {name!r}: 1-64 of A-Z a-z 0-9 _ . : -")
    click.echo(format_table([row], QUEUE_COLUMNS))


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON document")
def queue_list(as_json: bool) -> None:
    """Every queue configured, served by a live worker, or with tasks waiting."""
    import json

    import psycopg
    from psycopg.rows import dict_row

    from taskq.queues import list_queues, queue_json
    from worker.stats import format_table

    with psycopg.connect(required_database_url(), row_factory=dict_row) as conn:
        rows = list_queues(conn)
    if as_json:
        click.echo(json.dumps([queue_json(row) for row in rows], indent=2))
    else:
        click.echo(format_table(rows, QUEUE_COLUMNS) if rows else "(no queues)")


@queue.command("pause")
@click.argument("name")
def queue_pause(name: str) -> None:
    """No new claims from NAME on any worker; running tasks finish."""
    edit_queue(name, {"paused": True})


@queue.command("resume")
@click.argument("name")
def queue_resume(name: str) -> None:
    """Workers claim from NAME again at once."""
    edit_queue(name, {"paused": False})


KEEP = "keep"  # an option left out: the limit stays as it is


def limit_option(parse):
    """A click type for a limit that ``none`` clears."""

    def convert(text: str):
        if text is KEEP:
            return KEEP
        if text.strip().lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


def parse_concurrency(text: str) -> int:
    from taskq.queues import MAX_CONCURRENCY

    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
        raise ValueError(f"give 1 to {MAX_CONCURRENCY}, or none")
    return int(text)


def parse_rate_option(text: str):
    from taskq.queues import parse_rate

    return parse_rate(text)


@queue.command("set")
@click.argument("name")
@click.option("--concurrency", type=limit_option(parse_concurrency), default=KEEP,
              help="most tasks running at once over every worker; none: no limit")  # fmt: skip
@click.option("--rate", type=limit_option(parse_rate_option), default=KEEP,
              help="N/PERIOD starts (100/60s, 10/s, 5/m); none: no limit")  # fmt: skip
@click.option("--description", default=None, help="free text for operators")
@click.option("--paused/--resumed", default=None, help="pause or resume too")
def queue_set(name: str, concurrency, rate, description, paused) -> None:
    """Set NAME's limits (and description, paused); what is not given stays."""
    changes = {key: value for key, value in (("concurrency", concurrency), ("rate", rate))
               if value is not KEEP}  # fmt: skip
    if description is not None:
        changes["description"] = description
    if paused is not None:
        changes["paused"] = paused
    if not changes:
        fail("nothing to set: give --concurrency, --rate, --description or --paused/--resumed")
    edit_queue(name, changes)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
