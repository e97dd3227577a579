"""Who connects to Postgres, through which URL, under which ``application_name``; the budget.

Two URLs (``taskq.settings``): ``DATABASE_URL`` may be PgBouncer in
transaction pooling; ``TASKQ_LISTEN_DATABASE_URL`` is a direct session
connection. Only two things need a session of their own, and they take the
direct URL: LISTEN (one per API process, one per worker child) and the
maintenance leader's advisory lock (one per worker supervisor). Everything
else runs whole transactions on the pooled URL and keeps no session state:
no SET (``SET LOCAL`` is fine), no temporary tables, no session advisory locks,
and, when pooled, no server-side prepared statements (psycopg's
``prepare_threshold`` is None; PgBouncer 1.18 cannot route them).

Each role sets its own ``application_name``, so ``pg_stat_activity`` shows who
holds what; a worker's roles add ``@host`` (``TASKQ_HOSTNAME``), so it also
shows which host holds them, and which one leads (the ``taskq-leader@…`` session
holding the advisory lock). ``budget`` is the most each role holds, the figure
the README's deploy guide and ``tests/acceptance/test_topology.py`` use.
"""

from __future__ import annotations

from typing import Any

import psycopg

# Direct session connections (TASKQ_LISTEN_DATABASE_URL).
NOTIFIER = "taskq-notifier"  # an API process's LISTEN (SSE fan-out, cache drops)
LISTENER = "taskq-listener"  # a worker child's LISTEN (wake-ups, cancels)
LEADER = "taskq-leader"  # a worker supervisor's leader lock (held or tried)
# Pooled connections (DATABASE_URL).
API = "taskq-api"  # an API process's pool
CLAIM = "taskq-claim"  # a worker child's claim/complete connection
TASK = "taskq-task"  # ctx.connection() of a worker child (webhooks, clean-up, user tasks)
PROGRESS = "taskq-progress"  # a worker child's ctx.progress() writer, once a task reports
SUPERVISOR = "taskq-supervisor"  # a worker supervisor's heartbeat
MAINTENANCE = "taskq-maintenance"  # the leader's reaper and periodic ticks

DIRECT_ROLES = (NOTIFIER, LISTENER, LEADER)
POOLED_ROLES = (API, CLAIM, TASK, PROGRESS, SUPERVISOR, MAINTENANCE)


def application_name(role: str, host: str | None = None) -> str:
    """``role``, or ``role@host`` for a worker's connections (Postgres keeps 63 bytes)."""
    return role if not host else f"{role}@{host}"[:63]


def role_of(name: str | None) -> str:
    """The role of an ``application_name`` (``taskq-claim@host-a`` -> ``taskq-claim``)."""
    return (name or "").partition("@")[0]


# Server-side TCP keepalives of a direct session: idle, interval (s), probes; and the send
# timeout (ms) for unacknowledged data. A vanished host's session ends in ~11 s, not hours.
KEEPALIVES = {"idle": "5", "interval": "2", "count": "3", "user_timeout": "10000"}


def keep_session_alive(conn: psycopg.Connection) -> None:
    """Have the server probe this direct session's client (LISTEN, the leader lock).

    A host that vanishes without closing its sockets (power, partition) would
    otherwise hold its sessions, and the leader lock, until the server's kernel
    gives up on them (two hours by default), and count against the budget.
    """
    from sql import queries

    conn.execute(queries["keep_session_alive"], KEEPALIVES)


def connection_options(application_name: str, pooled: bool) -> dict[str, Any]:
    """``psycopg.connect`` keywords of a role: its name, and no prepared statements when pooled."""
    options: dict[str, Any] = {"application_name": application_name, "connect_timeout": 5}
    if pooled:
        options["prepare_threshold"] = None
    return options


def connect(url: str, application_name: str, pooled: bool, **kwargs: Any) -> psycopg.Connection:
    """A connection of one role to ``url`` (``pooled``: through a transaction pool)."""
    return psycopg.connect(url, **connection_options(application_name, pooled), **kwargs)


def reopened(
    conn: psycopg.Connection | None, url: str, role: str, settings: Any
) -> psycopg.Connection:
    """``conn`` while it is usable, else a new autocommit one of ``role`` for a task process
    (``settings``: its TaskSettings, pooled or not, on which host); a broken one is closed."""
    if conn is not None and not conn.closed and not conn.broken:
        return conn
    if conn is not None:
        conn.close()
    name = application_name(role, settings.hostname)
    return connect(url, name, settings.database_pooled, autocommit=True)


def budget(
    api_processes: int, api_pool_max: int, worker_hosts: int, concurrency: int
) -> dict[str, int]:
    """The most connections of each role: N API processes and M worker supervisors of C children.

    Direct: N + M * (C + 1). Pooled (clients of PgBouncer, or of Postgres when
    unpooled): N * pool max + M * (1 + 3C) + 1. Behind PgBouncer, Postgres
    sees the direct ones plus at most the pool size.
    """
    return {
        NOTIFIER: api_processes,
        LISTENER: worker_hosts * concurrency,
        LEADER: worker_hosts,
        API: api_processes * api_pool_max,
        CLAIM: worker_hosts * concurrency,
        TASK: worker_hosts * concurrency,
        PROGRESS: worker_hosts * concurrency,
        SUPERVISOR: worker_hosts,
        MAINTENANCE: 1 if worker_hosts else 0,
    }


def direct_total(counts: dict[str, int]) -> int:
    """How many of ``counts`` are direct session connections."""
    return sum(n for role, n in counts.items() if role in DIRECT_ROLES)
