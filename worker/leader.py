"""Who leads maintenance: the holder of a session advisory lock on a direct connection.

Every supervisor, on every host, tries the lock (``pg_try_advisory_lock``) on
its own direct session connection (``TASKQ_LISTEN_DATABASE_URL``: a
transaction pool would hand the session, and the lock, to someone else). The
lock lives exactly as long as that session, so the server decides who leads
and no host's clock takes part:

- the leader dies (or its connection does): Postgres releases the lock at
  once and the next supervisor to try takes over;
- the leader's host vanishes without closing the socket: the session asks the
  server to probe its client (TCP keepalives, ``keep_session_alive``), so the
  lock is freed in about 11 seconds, not the kernel's two hours;
- the leader cannot reach the server: its check (a round trip with a
  timeout) fails and it steps down.

Between a lost lock and the leader noticing (one ``check_every``), two may
act: each piece of maintenance is safe under that (the reaper's rows are
locked SKIP LOCKED and its writes fenced by lease token; a periodic tick's
row has a primary key).
"""

from __future__ import annotations

import logging
import time

import psycopg

from sql import queries
from taskq.connections import LEADER, keep_session_alive
from taskq.listen import ping
from worker.db import connect

log = logging.getLogger("taskq.worker.leader")

LEADER_LOCK_KEY = 0x7461736B71  # "taskq"; advisory locks are per database


class Leader:
    """Leadership through the advisory lock on ``url``: ``elect``, ``check``, ``step_down``."""

    def __init__(
        self, url: str, name: str = LEADER, check_every: float = 1.0, check_timeout: float = 5.0
    ) -> None:
        self.url = url
        self.name = name  # its application_name
        self.check_every = check_every
        self.check_timeout = check_timeout
        self.conn: psycopg.Connection | None = None
        self.is_leader = False
        self.next_check = 0.0

    def elect(self) -> bool:
        """Take the lock if nobody holds it; whether this process leads now."""
        if self.is_leader:
            return True
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(self.url, self.name)
            keep_session_alive(self.conn)
        row = self.conn.execute(queries["try_leader_lock"], {"key": LEADER_LOCK_KEY}).fetchone()
        if row["leader"]:
            self.is_leader = True
            self.next_check = time.monotonic() + self.check_every
            log.info("this worker leads maintenance")
        return self.is_leader

    def check(self) -> bool:
        """Still leading? The lock lives as long as its session: a timed round trip, now and then.

        Raises OperationalError when the session is gone or silent (then: step down).
        """
        if not self.is_leader or self.conn is None:
            return False
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + self.check_every
            ping(self.conn, self.check_timeout)
        return True

    def step_down(self) -> None:
        """Give up leadership: closing the session releases the lock."""
        if self.is_leader:
            log.info("this worker no longer leads maintenance")
        self.is_leader = False
        if self.conn is not None:
            self.conn.close()
        self.conn = None
