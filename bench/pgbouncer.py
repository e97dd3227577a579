"""PgBouncer in transaction pooling in front of a Postgres server, for the tests and the bench.

``running_pgbouncer(server_url, pool_size)`` starts Debian's ``pgbouncer``
(``/usr/sbin/pgbouncer``, or ``PGBOUNCER``) on a free port with its own ini
and auth file in a temporary directory, waits until it answers, and stops it
after. Every database of the server is reachable through it, each with a
pool of at most ``pool_size`` server connections (``default_pool_size`` and
``max_db_connections``): ``pooled_url(url, port)`` is ``url`` through it.
``show(port, "POOLS")`` reads its admin console.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench.taskq_http import free_port

INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {auth}
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool}
max_db_connections = {pool}
reserve_pool_size = 0
max_client_conn = {clients}
ignore_startup_parameters = extra_float_digits
logfile =
"""


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (``PGBOUNCER``, else on PATH or in /usr/sbin); None: absent."""
    return (
        os.environ.get("PGBOUNCER")
        or shutil.which("pgbouncer")
        or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    )


def pooled_url(url: str, port: int) -> str:
    """``url`` (same user and database) through the PgBouncer listening on ``port``."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    return parts._replace(netloc=f"{user}@127.0.0.1:{port}").geturl()


def show(port: int, what: str, user: str = "postgres") -> list[dict]:
    """``SHOW what`` on the admin console (simple protocol only): its rows as dicts."""
    with psycopg.connect(
        f"postgresql://{user}@127.0.0.1:{port}/pgbouncer", autocommit=True
    ) as conn:
        result = conn.pgconn.exec_(f"SHOW {what}".encode())
        names = [result.fname(i).decode() for i in range(result.nfields)]
        return [
            {n: (v.decode() if v is not None else None) for n, v in zip(
                names, (result.get_value(r, c) for c in range(result.nfields)), strict=True)}
            for r in range(result.ntuples)
        ]  # fmt: skip


@contextmanager
def running_pgbouncer(server_url: str, pool_size: int = 6, clients: int = 1000) -> Iterator[int]:
    """A transaction-mode PgBouncer in front of ``server_url``'s server; its port, stopped after."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (apt-get install pgbouncer)")
    parts = urlsplit(server_url)
    user = parts.username or "postgres"
    with tempfile.TemporaryDirectory(prefix="taskq-pgbouncer-") as tmp:
        os.chmod(tmp, 0o755)  # run as nobody when we are root: it must read the files
        auth = Path(tmp) / "users.txt"
        auth.write_text(f'"{user}" ""\n')
        listen = free_port()
        ini = Path(tmp) / "pgbouncer.ini"
        ini.write_text(INI.format(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                                  listen=listen, auth=auth, user=user, pool=pool_size,
                                  clients=clients))  # fmt: skip
        for path in (auth, ini):
            path.chmod(0o644)
        # PgBouncer refuses to run as root; -u drops to an unprivileged user.
        command = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
        log = (Path(tmp) / "pgbouncer.log").open("w")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(proc, listen, Path(log.name))
            yield listen
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 10) -> None:
    """Until PgBouncer accepts connections on ``port``; RuntimeError (with its log) if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({proc.returncode}): {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port}: {log.read_text()}")
