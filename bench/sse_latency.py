"""SSE delivery latency: transition commit -> client receives, with many streams open.

``measure_sse_latency(api_url, token_factory, streams=1000, events=300)`` creates
``streams`` tasks of the token's user, opens one ``/api/v1/tasks/{id}/events``
stream per task (raw sockets, one selector thread, so the client is not the
bottleneck), then commits ``events`` single-task transitions, paced, as an
operator's UPDATE would, and times each from just before COMMIT to the moment
its event arrives. While the streams are open it also times plain REST calls
(``GET /api/v1/tasks/{id}/status``) to show they stay fast.

Run against a server: ``python -m bench.sse_latency --api http://127.0.0.1:8000``
(DATABASE_URL and JWT_SECRET_KEY as the server's), or without ``--api`` to
start ``taskq api`` on a free port for the measurement.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import psycopg
import requests


class StreamSet:
    """Many raw HTTP/1.0 SSE connections read by one selector thread.

    HTTP/1.0 keeps the body unchunked (the server closes at the end), so each
    stream is plain SSE text; ``on_event(index, fields, received_at)`` gets
    every event as a dict of its fields.
    """

    def __init__(self, host: str, port: int, requests_: list[tuple[str, dict[str, str]]]) -> None:
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[int, bytes] = {}
        self.headers_done: dict[int, bool] = {}
        self.status: dict[int, int] = {}
        self.closed: set[int] = set()
        self.events: dict[int, list[dict[str, str]]] = {i: [] for i in range(len(requests_))}
        self.on_event: Callable[[int, dict[str, str], float], None] | None = None
        self._stop = threading.Event()
        self.sockets: list[socket.socket] = []
        for index, (path, headers) in enumerate(requests_):
            sock = socket.create_connection((host, port), timeout=10)
            lines = [f"GET {path} HTTP/1.0", f"Host: {host}:{port}", "Accept: text/event-stream"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, index)
            self.sockets.append(sock)
            self.buffers[index] = b""
            self.headers_done[index] = False
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> StreamSet:
        """Start reading in the background."""
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set() and len(self.closed) < len(self.sockets):
            for key, _ in self.selector.select(timeout=0.2):
                index = key.data
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.perf_counter()
                if not data:
                    self.selector.unregister(key.fileobj)
                    self.closed.add(index)
                    continue
                self._feed(index, self.buffers[index] + data, now)

    def _feed(self, index: int, buffer: bytes, now: float) -> None:
        if not self.headers_done[index]:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffers[index] = buffer
                return
            self.status[index] = int(head.split(b" ", 2)[1])
            self.headers_done[index] = True
            buffer = rest
        while b"\n\n" in buffer:
            block, _, buffer = buffer.partition(b"\n\n")
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
            if "data" in fields or "event" in fields:
                self.events[index].append(fields)
                if self.on_event is not None:
                    self.on_event(index, fields, now)
        self.buffers[index] = buffer

    def close(self) -> None:
        """Close every connection and stop the reader."""
        self._stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()
        self.selector.close()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def token_subject(token: str) -> int:
    """The user id (``sub``) of a JWT, read without checking it (the server checks it)."""
    payload = token.split(".")[1]
    return int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def measure_sse_latency(
    api_url: str,
    token_factory: Callable[[], str],
    streams: int = 1000,
    events: int = 300,
    database_url: str | None = None,
    gap: float = 0.01,
) -> dict:
    """Open ``streams`` task streams, commit ``events`` transitions; latency figures in ms."""
    database_url = database_url or os.environ["DATABASE_URL"]
    token = token_factory()
    user_id = token_subject(token)
    parts = urlsplit(api_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        task_ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO tasks (user_id, title, queue) "
                "SELECT %s, 'sse bench ' || n, 'sse-bench' FROM generate_series(1, %s) n "
                "RETURNING id",
                (user_id, streams),
            )
        ]
    headers = {"Authorization": f"Bearer {token}"}
    paths = [(f"/api/v1/tasks/{task_id}/events", headers) for task_id in task_ids]
    opened = time.perf_counter()
    stream_set = StreamSet(parts.hostname or "127.0.0.1", parts.port or 80, paths).start()
    received: dict[int, float] = {}
    stream_set.on_event = lambda index, fields, now: received.setdefault(int(fields["id"]), now)
    try:
        # Each stream first replays its task's creation: all subscribed once all have it.
        if not wait_for(lambda: all(stream_set.events[i] for i in range(streams)), 120):
            missing = sum(1 for i in range(streams) if not stream_set.events[i])
            statuses = sorted(set(stream_set.status.values()))
            raise RuntimeError(f"{missing} of {streams} streams never opened (HTTP {statuses})")
        open_seconds = time.perf_counter() - opened
        committed: dict[int, float] = {}
        rest_ms: list[float] = []
        session = requests.Session()
        status_of = dict.fromkeys(task_ids, "PENDING")
        with psycopg.connect(database_url) as conn:
            for n in range(events):
                task_id = random.choice(task_ids)
                status = "PROCESSING" if status_of[task_id] == "PENDING" else "PENDING"
                status_of[task_id] = status
                conn.execute(
                    "UPDATE tasks SET status = %s, updated_at = now() WHERE id = %s",
                    (status, task_id),
                )
                history_id = conn.execute(
                    "SELECT max(id) FROM task_history WHERE task_id = %s", (task_id,)
                ).fetchone()[0]
                before_commit = time.perf_counter()
                conn.commit()
                committed[history_id] = before_commit
                if n % 10 == 0:
                    started = time.perf_counter()
                    session.get(f"{api_url}/api/v1/tasks/{task_id}/status", headers=headers)
                    rest_ms.append((time.perf_counter() - started) * 1000)
                time.sleep(gap)
        wait_for(lambda: all(h in received for h in committed), 30)
        latencies = [(received[h] - t) * 1000 for h, t in committed.items() if h in received]
        return {
            "streams": streams,
            "events": len(committed),
            "delivered": len(latencies),
            "streams_open_seconds": round(open_seconds, 2),
            "p50_ms": round(statistics.median(latencies), 2),
            "p90_ms": round(percentile(latencies, 90), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
            "rest_p50_ms": round(statistics.median(rest_ms), 2),
            "rest_max_ms": round(max(rest_ms), 2),
        }
    finally:
        stream_set.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM tasks WHERE id = ANY(%s)", (task_ids,))


def local_token_factory(
    database_url: str, secret: str, username: str = "sse-bench"
) -> Callable[[], str]:
    """Access tokens of user ``username``, made in the database (the server shares ``secret``)."""

    def factory() -> str:
        from app import create_app
        from app.auth import issue_tokens

        app = create_app({"DATABASE_URL": database_url, "JWT_SECRET_KEY": secret})
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            user = conn.execute(
                "INSERT INTO users (username, email, password_hash) VALUES (%s, %s, '!') "
                "ON CONFLICT (lower(username)) DO UPDATE SET updated_at = now() RETURNING *",
                (username, f"{username}@example.com"),
            ).fetchone()
        with app.app_context():
            return issue_tokens(user)["access"]

    return factory


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(
    database_url: str, secret: str, workers: int, **settings: str
) -> tuple[str, subprocess.Popen]:
    """``taskq api`` on a free port (extra environment ``settings``); its URL once it answers."""
    port = free_port()
    inherited = {"REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}  # the server's own, not the caller's
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env.update(DATABASE_URL=database_url, JWT_SECRET_KEY=secret, TASKQ_RATELIMIT_ENABLED="0")
    env.update(settings)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskq.cli",
            "api",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    if not wait_for(healthy, 30):
        proc.kill()
        raise RuntimeError("taskq api did not start")
    return url, proc


def main() -> None:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="URL of a running API (default: start one)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1, help="API processes when started here")
    args = parser.parse_args()
    database_url = os.environ["DATABASE_URL"]
    secret = os.environ.get("JWT_SECRET_KEY") or "sse-bench-secret-0123456789abcdef-" + str(
        os.getpid()
    )
    proc = None
    api_url = args.api
    if api_url is None:
        api_url, proc = start_api(database_url, secret, args.workers)
    try:
        result = measure_sse_latency(
            api_url,
            local_token_factory(database_url, secret),
            args.streams,
            args.events,
            database_url,
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
