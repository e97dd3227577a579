"""Settings are read and checked once, at start-up."""

from __future__ import annotations

import pytest

from app.config import load_config
from taskq.settings import SettingError, libpq_url, sqlalchemy_url


def test_secret_key_is_required_outside_development(monkeypatch):
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("TASKQ_ENV", raising=False)
    with pytest.raises(SettingError, match="JWT_SECRET_KEY"):
        load_config()
    assert load_config({"TASKQ_ENV": "development"})["JWT_SECRET_KEY"]


def test_malformed_settings_name_the_setting(monkeypatch):
    monkeypatch.setenv("JWT_SECRET_KEY", "x" * 32)
    monkeypatch.setenv("TASKQ_MAX_BODY_BYTES", "lots")
    with pytest.raises(SettingError, match="TASKQ_MAX_BODY_BYTES"):
        load_config()
    monkeypatch.setenv("TASKQ_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("TASKQ_RATELIMIT_ENABLED", "maybe")
    with pytest.raises(SettingError, match="TASKQ_RATELIMIT_ENABLED"):
        load_config()
    monkeypatch.delenv("TASKQ_RATELIMIT_ENABLED")
    monkeypatch.setenv("TASKQ_LOG_LEVEL", "chatty")
    with pytest.raises(SettingError, match="TASKQ_LOG_LEVEL must be one of"):
        load_config()
    monkeypatch.setenv("TASKQ_LOG_LEVEL", "warn")
    assert load_config()["LOG_LEVEL"] == "WARNING"


def test_database_urls_are_normalised():
    assert libpq_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(SettingError):
        libpq_url("mysql://u@h/db")


def test_the_listen_url_defaults_to_database_url_and_a_separate_one_means_pooled(monkeypatch):
    from worker.config import WorkerConfig
    from worker.config import load_config as load_worker_config

    monkeypatch.setenv("JWT_SECRET_KEY", "x" * 32)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@pgbouncer:6432/db")
    for name in ("TASKQ_LISTEN_DATABASE_URL", "TASKQ_DATABASE_POOLED", "TASKQ_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    api, worker = load_config(), load_worker_config()
    assert api["LISTEN_DATABASE_URL"] == worker.listen_database_url == api["DATABASE_URL"]
    assert not api["DATABASE_POOLED"] and not worker.database_pooled
    monkeypatch.setenv("TASKQ_LISTEN_DATABASE_URL", "postgresql+psycopg://u@primary:5432/db")
    monkeypatch.setenv("TASKQ_HOSTNAME", "host-a")
    api, worker = load_config(), load_worker_config()
    direct = "postgresql://u@primary:5432/db"
    assert api["LISTEN_DATABASE_URL"] == worker.listen_database_url == direct
    assert api["DATABASE_POOLED"] and worker.database_pooled and worker.tasks.database_pooled
    assert worker.hostname == "host-a"
    # The child gets the same settings through to_dict/from_dict.
    assert WorkerConfig.from_dict(worker.to_dict()) == worker
    monkeypatch.setenv("TASKQ_DATABASE_POOLED", "0")  # a session pool, say: said explicitly
    assert not load_config()["DATABASE_POOLED"] and not load_worker_config().database_pooled
    monkeypatch.setenv("TASKQ_DATABASE_POOLED", "sometimes")
    with pytest.raises(SettingError, match="TASKQ_DATABASE_POOLED"):
        load_config()


def test_the_connection_budget_formula():
    from taskq.connections import application_name, budget, direct_total, role_of

    counts = budget(api_processes=16, api_pool_max=10, worker_hosts=10, concurrency=8)
    assert direct_total(counts) == 16 + 10 * (8 + 1)
    assert sum(counts.values()) - direct_total(counts) == 16 * 10 + 10 * (1 + 3 * 8) + 1
    assert role_of(application_name("taskq-claim", "host-a")) == "taskq-claim"
    assert len(application_name("taskq-claim", "h" * 100)) == 63


def test_the_metrics_directory_is_shared_private_and_forgets_dead_gauges(monkeypatch, tmp_path):
    import os
    import subprocess
    import sys

    from taskq.settings import metrics_dir

    # setenv first records the value before the test (a delenv of an unset name records
    # nothing), so the one metrics_dir sets is undone at teardown, not left to later tests.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    url = "postgresql://u@h/db"
    path = metrics_dir(url)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == path
    assert (os.stat(path).st_mode & 0o777) == 0o700
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert metrics_dir(url) == path  # the same for every process of this database
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert metrics_dir("postgresql://u@h/other") != path
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dead = [f"gauge_livesum_{gone}.db", f"gauge_liveall_{gone}.db"]
    kept = [f"gauge_livesum_{os.getpid()}.db", f"counter_{gone}.db"]
    for name in dead + kept:
        (tmp_path / os.path.basename(path) / name).write_bytes(b"")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir(url)
    assert sorted(p.name for p in (tmp_path / os.path.basename(path)).iterdir()) == sorted(kept)
    os.chmod(path, 0o777)  # someone else could write there: refused
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    with pytest.raises(SettingError, match="not a private directory"):
        metrics_dir(url)


def test_the_systems_periodic_tasks_each_have_a_setting_and_can_be_turned_off(monkeypatch):
    from worker.config import periodic_schedules

    for name in ("TASKQ_PERIODIC", "TASKQ_CLEANUP_SCHEDULE", "TASKQ_REINDEX_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    by_name = {s.name: s for s in periodic_schedules()}
    assert {n: (s.schedule, s.task_type) for n, s in by_name.items()} == {
        "cleanup_old_tasks": ("0 0 * * *", "cleanup_old_tasks"),
        "rebuild_queue_indexes": ("30 0 * * *", "rebuild_queue_indexes"),
    }
    monkeypatch.setenv("TASKQ_REINDEX_SCHEDULE", "off")
    assert [s.name for s in periodic_schedules()] == ["cleanup_old_tasks"]
    monkeypatch.setenv("TASKQ_REINDEX_SCHEDULE", "*/5 * * * *")
    monkeypatch.setenv("TASKQ_PERIODIC", '[{"name": "cleanup_old_tasks", "schedule": "0 3 * * *",'
                       ' "task_type": "cleanup_old_tasks", "payload": {"days": 7}}]')  # fmt: skip
    by_name = {s.name: s for s in periodic_schedules()}
    assert by_name["cleanup_old_tasks"].schedule == "0 3 * * *"  # TASKQ_PERIODIC's replaces it
    assert by_name["rebuild_queue_indexes"].schedule == "*/5 * * * *"
    monkeypatch.setenv("TASKQ_REINDEX_SCHEDULE", "daily")
    with pytest.raises(SettingError, match="TASKQ_REINDEX_SCHEDULE"):
        periodic_schedules()
