"""The ``taskq`` commands a user and an operator type, run as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
from werkzeug.security import check_password_hash

from taskq.migrate import current_revision, head_revision
from tests.helpers import LIMITS, ROOT, account, insert_tasks, login


def python(
    *args: str, database_url: str | None = None, stdin: str | None = None, redis_url: str = ""
):
    """Run ``python ARGS`` from the venv on this tree; the completed process (text output)."""
    environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    environ["PYTHONPATH"] = str(ROOT)
    if database_url:
        environ["DATABASE_URL"] = database_url
    if redis_url:
        environ["REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, *args],
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def taskq(
    *args: str, database_url: str | None = None, stdin: str | None = None, redis_url: str = ""
):
    """Run ``taskq ARGS``; the completed process (text output)."""
    return python(
        "-m", "taskq.cli", *args, database_url=database_url, stdin=stdin, redis_url=redis_url
    )


def test_migrate_creates_the_schema_and_is_idempotent(empty_database_url):
    first = taskq("migrate", database_url=empty_database_url)
    assert first.returncode == 0, first.stderr
    steps = [line.split(":")[0] for line in first.stdout.splitlines() if line.startswith("ran ")]
    assert steps[0] == "ran 0001" and steps[-1] == f"ran {head_revision()}"  # progress per step
    again = taskq("migrate", database_url=empty_database_url)
    assert again.returncode == 0, again.stderr
    with psycopg.connect(empty_database_url) as conn:
        views = {
            r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
        }
    assert {"queue_stats", "queue_depth", "stuck_tasks", "live_workers", "recent_failures"} <= views


def test_migrate_loads_no_flask(empty_database_url):
    # taskq migrate, then the names of every module the process imported.
    script = (
        "import json, sys\n"
        "from taskq.cli import main\n"
        "main(['migrate'], standalone_mode=False)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = python("-c", script, database_url=empty_database_url)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    assert "alembic.command" in modules
    assert current_revision(empty_database_url) == head_revision()
    assert [m for m in modules if m.split(".")[0] in ("flask", "app", "worker")] == []


def test_commands_need_database_url():
    result = taskq("migrate")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_admin_reads_the_password_from_stdin(database_url, db):
    result = taskq(
        "create-admin",
        "root",
        "--password-stdin",
        database_url=database_url,
        stdin="Sturdy-Lamp-42\n",
    )
    assert result.returncode == 0, result.stderr
    user = db.execute(
        "SELECT is_admin, password_hash FROM users WHERE username = 'root'"
    ).fetchone()
    assert user["is_admin"] is True
    assert check_password_hash(user["password_hash"], "Sturdy-Lamp-42")

    weak = taskq(
        "create-admin", "root2", "--password-stdin", database_url=database_url, stdin="short\n"
    )
    assert weak.returncode == 2
    assert "8 characters" in weak.stderr


def test_list_tasks_prints_the_registry():
    result = taskq("list-tasks")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    for name in ("process", "echo", "compute", "http_request", "generate_report"):
        assert "[internal]" not in rows[name]
    for name in ("cleanup_old_tasks", "rebuild_queue_indexes", "deliver_webhook"):  # the system's
        assert "[internal]" in rows[name]


def test_stats_reads_the_operator_views(database_url, db):
    insert_tasks(db, 3, queue="mail")
    result = taskq("stats", "--json", database_url=database_url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    queues = {row["queue"]: row for row in report["queue_stats"]}
    assert queues["mail"]["waiting"] == 3
    text = taskq("stats", database_url=database_url)
    assert text.returncode == 0 and "mail" in text.stdout


def test_stats_names_queues_whose_tasks_wait_with_no_worker(database_url, db):
    insert_tasks(db, 2, queue="orphans")
    text = taskq("stats", database_url=database_url)
    assert text.returncode == 0, text.stderr
    assert "UNSERVED: tasks wait in queue 'orphans' and no live worker serves it" in text.stdout


def test_queue_commands_edit_the_queues_table(database_url, db):
    def queue(*args):
        result = taskq("queue", *args, database_url=database_url)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def row():
        return db.execute(
            "SELECT paused, concurrency, rate_limit, extract(epoch FROM rate_period)::int AS period"
            " FROM queues WHERE name = 'mail'"
        ).fetchone()

    assert "mail" in queue("set", "mail", "--concurrency", "5", "--rate", "100/60s")
    assert row() == {"paused": False, "concurrency": 5, "rate_limit": 100, "period": 60}
    queue("pause", "mail")
    assert row()["paused"] is True
    queue("set", "mail", "--rate", "none")  # what is not given stays
    assert row() == {"paused": True, "concurrency": 5, "rate_limit": None, "period": None}
    queue("resume", "mail")
    listed = json.loads(queue("list", "--json"))
    assert [(q["queue"], q["paused"], q["concurrency"]) for q in listed] == [("mail", False, 5)]
    for bad in (("set", "mail", "--rate", "100"), ("set", "mail", "--concurrency", "0"),
                ("set", "mail"), ("pause", "no spaces")):  # fmt: skip
        refused = taskq("queue", *bad, database_url=database_url)
        assert refused.returncode == 2, (bad, refused.stdout)
    assert row() == {"paused": False, "concurrency": 5, "rate_limit": None, "period": None}


def test_unlock_account_lifts_a_login_lock(make_app, database_url, redis_url):
    """A stranger's failures lock ann out; the operator's unlock-account lets her in again."""
    application = make_app(REDIS_URL=redis_url, **LIMITS)
    client = application.test_client()
    account(application, database_url, "ann")
    account(application, database_url, "bob")
    for n in range(3):
        assert login(client, "ann", f"10.1.0.{n}").status_code == 401
        assert login(client, "bob", f"10.1.1.{n}").status_code == 401
    right = {"password": "Sturdy-Lamp-42"}
    assert login(client, "ann", "10.1.0.9", **right).status_code == 429

    result = taskq(
        "unlock-account", "ANN@example.com", database_url=database_url, redis_url=redis_url
    )
    assert result.returncode == 0, result.stderr
    assert "ann" in result.stdout
    assert login(client, "ann", "10.1.0.10", **right).status_code == 200
    assert login(client, "bob", "10.1.1.9", **right).status_code == 429  # still locked
    nobody = taskq("unlock-account", "nobody", database_url=database_url, redis_url=redis_url)
    assert nobody.returncode == 0 and "no active account" in nobody.stdout


def test_unlock_account_needs_redis(database_url):
    result = taskq("unlock-account", "ann", database_url=database_url)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def one_line_failure(result: subprocess.CompletedProcess, setting: str) -> None:
    """The process stopped at start-up with exit 2 and one line naming ``setting``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_api_setting_stops_taskq_api_with_one_line(database_url, monkeypatch):
    monkeypatch.setenv("JWT_SECRET_KEY", "k" * 32)
    for setting, value in (
        ("TASKQ_SSE_KEEPALIVE", "soon"),  # read by app/events.py before: a gunicorn traceback
        ("TASKQ_STREAM_TOKEN_SECONDS", "1"),
        ("TASKQ_WORKER_CONNECTIONS", "many"),
        ("TASKQ_MAX_BODY_BYTES", "lots"),
        ("TASKQ_RATELIMIT_AUTH", "plenty"),  # a gunicorn traceback before
        ("TASKQ_LOG_LEVEL", "LOUD"),  # ignored by the API before
    ):
        monkeypatch.setenv(setting, value)
        one_line_failure(taskq("api", "--bind", "127.0.0.1:1", database_url=database_url), setting)
        monkeypatch.delenv(setting)
    no_scheme = taskq("api", database_url=database_url, redis_url="localhost:6379")
    one_line_failure(no_scheme, "REDIS_URL")  # likewise


def test_a_bad_task_setting_stops_taskq_worker_with_one_line(database_url, monkeypatch):
    # Read by the task functions while they ran before: now checked when the worker starts.
    for setting, value in (
        ("TASKQ_CLEANUP_DAYS", "-1"),
        ("TASKQ_WEBHOOK_TIMEOUT", "never"),
        ("TASKQ_SIMULATED_SECONDS", "5-1"),
        ("TASKQ_PROCESS_SECONDS", "x"),
        ("TASKQ_ALLOW_PRIVATE_URLS", "perhaps"),
        ("TASKQ_IMPORTS", "no_such_module_of_tasks"),
        ("TASKQ_LOG_LEVEL", "LOUD"),  # logging's ValueError traceback before
        ("TASKQ_CLEANUP_SCHEDULE", "61 * * * *"),
        ("TASKQ_REINDEX_SCHEDULE", "daily"),
        ("TASKQ_PERIODIC", '[{"name": "x", "schedule": "* * * * * * 2030", "task_type": "noop"}]'),
    ):
        monkeypatch.setenv(setting, value)
        one_line_failure(taskq("worker", "--concurrency", "1", database_url=database_url), setting)
        monkeypatch.delenv(setting)
    loud = taskq("worker", "--log-level", "loud", database_url=database_url)
    one_line_failure(loud, "--log-level")
    no_queue = taskq("worker", "--queues", " , ", database_url=database_url)
    one_line_failure(no_queue, "queue")  # an empty --queues started a worker on the defaults
    one_line_failure(taskq("worker", "--queues", "", database_url=database_url), "queue")
