"""taskq through its HTTP API: create throughput and latency, end to end, process RSS.

The API runs as ``taskq api`` (gunicorn, gevent, 2 processes on this 2-core
machine). The load is ``clients`` threads, each with its own keep-alive
connection (a raw socket: see ``create_load``), all as one user (the per-user rate limit is raised
through its setting, ``TASKQ_RATELIMIT_DEFAULT``, so the limiter still counts
every request but does not refuse them).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

API_PROCESSES = 2


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_env(url: str) -> dict[str, str]:
    """Environment of the API (and of workers started beside it)."""
    imports = ",".join(filter(None, [os.environ.get("TASKQ_IMPORTS"), "bench.taskq_tasks"]))
    return {
        **os.environ,
        "DATABASE_URL": url,
        "JWT_SECRET_KEY": secrets.token_hex(32),
        "TASKQ_IMPORTS": imports,
        "TASKQ_RATELIMIT_DEFAULT": "100000000/minute",
    }


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body=None, token: str | None = None
) -> tuple[int, dict]:
    """One JSON request on a keep-alive connection: status and decoded body."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else {}


@contextmanager
def running_api(url: str) -> Iterator[tuple[str, int, subprocess.Popen]]:
    """``taskq api`` on a free port until the block ends: (host, port, gunicorn master).

    Its output goes to a temporary log, shown only when it fails to start.
    """
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    command = [sys.executable, "-m", "taskq.cli", "api", "--bind", f"127.0.0.1:{port}"]
    popen = subprocess.Popen(
        [*command, "--workers", str(API_PROCESSES)],
        env=api_env(url),
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                if request(conn, "GET", "/readyz")[0] == 200:
                    conn.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or popen.poll() is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"taskq api did not become ready:\n{tail}")
            time.sleep(0.1)
        yield "127.0.0.1", port, popen
    finally:
        popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        log.close()


def register_user(host: str, port: int) -> str:
    """A new user's access token."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    password = secrets.token_urlsafe(16)
    name = "bench" + secrets.token_hex(4)
    body = {"username": name, "email": f"{name}@example.com", "password": password}
    status, reply = request(
        conn,
        "POST",
        "/api/v1/auth/register",
        {**body, "password2": password, "first_name": "B", "last_name": "Ench"},
    )
    conn.close()
    if status != 201:
        raise RuntimeError(f"register failed: {status} {reply}")
    return reply["tokens"]["access"]


def read_reply(reader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length, read from ``reader``."""
    status = int(reader.readline().split(b" ", 2)[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def create_load(
    host: str, port: int, token: str, n: int, clients: int, queue: str
) -> tuple[float, list[float]]:
    """POST ``n`` noop tasks to ``queue`` from ``clients`` keep-alive threads.

    Each thread writes its requests on a raw socket and reads the replies
    itself (status line, Content-Length, body): ``http.client`` spent about
    three times the CPU per request, and the load generator shares the two
    cores with the API and Postgres it measures. Every reply must be a 201.
    Returns the seconds it took and each request's latency in ms.
    """
    latencies: list[float] = []
    errors: list[str] = []
    per_client = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    start = threading.Barrier(clients + 1)
    head = (
        f"POST /api/v1/tasks HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()

    def client(count: int, index: int) -> None:
        sock = socket.create_connection((host, port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        mine = []
        start.wait()
        for i in range(count):
            body = json.dumps({"title": f"h{index}-{i}", "task_type": "noop", "queue": queue})
            message = b"%s%d\r\n\r\n%s" % (head, len(body), body.encode())
            t0 = time.perf_counter()
            sock.sendall(message)
            status, reply = read_reply(reader)
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 201:
                errors.append(f"{status} {reply[:300]!r}")
                break
        reader.close()
        sock.close()
        latencies.extend(mine)

    threads = [
        threading.Thread(target=client, args=(count, i)) for i, count in enumerate(per_client)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} creates failed, first: {errors[0]}")
    return elapsed, latencies


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of process ``pid``, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for {pid}")


def family_peak_rss_mb(pid: int) -> float:
    """The largest peak RSS of ``pid`` and its children (gunicorn or worker processes)."""
    import psutil

    pids = [pid, *(child.pid for child in psutil.Process(pid).children())]
    return max(peak_rss_mb(p) for p in pids)
