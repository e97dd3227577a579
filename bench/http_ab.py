"""HTTP create, A/B: the bench's create workload against two source trees, alternating rounds.

``taskq bench`` measures HTTP create only inside taskq's extra metrics (after the
drain, pickup and enqueue workloads). This runs just that workload
(``bench.taskq_http.create_load``: 16 keep-alive raw-socket clients, one user,
``POST /api/v1/tasks``) against ``taskq api`` started from each tree in turn,
each round on a fresh database migrated by that tree's own migrations, so two
commits compare in one session on one loaded machine: read the ratios.

    python -m bench.http_ab --tree main=/tmp/taskq-main --tree http=. --rounds 6

``NAME=PATH@N`` runs that tree's API with N gunicorn processes (default 2, as the bench).

``--profile DIR`` records one API process of each round with py-spy (when installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

from bench import taskq_http
from bench.harness import create_database, drop_database, percentile
from bench.taskq_http import create_load, register_user, running_api

QUEUE = "bench-http"
FIGURES = ("rps", "p50_ms", "p99_ms", "api_cpu_ms", "pg_cpu_ms")


def migrate(tree: Path, url: str) -> None:
    """Install ``tree``'s schema (its own migrations) into ``url``."""
    code = "import sys; from taskq.migrate import upgrade; upgrade(sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, url], cwd=tree, env=tree_env(tree), check=True, timeout=300
    )


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes a Python process import ``tree``'s packages first."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def api_workers(master: int) -> list[int]:
    """The gunicorn worker pids under ``master``."""
    import psutil

    return [child.pid for child in psutil.Process(master).children()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far."""
    import psutil

    times = [psutil.Process(pid).cpu_times() for pid in pids]
    return sum(t.user + t.system for t in times)


def backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of each Postgres backend connected to ``url``'s database."""
    import psutil
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )]  # fmt: skip
    used = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[pid] = times.user + times.system
    return used


def one_round(
    server: str, name: str, tree: Path, workers: int, n: int, clients: int, profile: Path | None
) -> dict[str, float]:
    """One measured create run against ``tree``'s API (``workers`` processes), fresh database."""
    db_name = f"bench_http_{name}_{uuid.uuid4().hex[:6]}"
    url = create_database(server, db_name)
    saved = dict(os.environ)
    try:
        migrate(tree, url)
        os.environ.update(tree_env(tree))  # running_api starts ``taskq api`` from our env
        os.chdir(tree)
        taskq_http.API_PROCESSES = workers
        with running_api(url) as (host, port, api):
            token = register_user(host, port)
            create_load(host, port, token, 20 * clients, clients, QUEUE)  # warm-up
            spy = None
            spy_path = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.defpath}")
            if profile is not None and spy_path:
                out = profile / f"{name}-{uuid.uuid4().hex[:4]}.txt"
                pid = str(api_workers(api.pid)[0])
                command = [spy_path, "record", "--format", "raw", "--nonblocking", "--gil"]
                spy = subprocess.Popen(
                    [*command, "-p", pid, "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            workers_pids = api_workers(api.pid)
            cpu_before, pg_before = cpu_seconds(workers_pids), backend_cpu(url)
            elapsed, latencies = create_load(host, port, token, n, clients, QUEUE)
            api_cpu_ms = (cpu_seconds(workers_pids) - cpu_before) * 1000 / n
            pg_after = backend_cpu(url)
            pg_cpu_ms = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items()) * 1000 / n
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        drop_database(server, db_name)
    return {
        "rps": n / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "api_cpu_ms": api_cpu_ms,
        "pg_cpu_ms": pg_cpu_ms,
    }


def main(argv: list[str] | None = None) -> None:
    """Alternate rounds between the trees; print each round and the medians' ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH (twice)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per tree")
    parser.add_argument("--n", type=int, default=20_000, help="creates per round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    pairs = [tree.partition("=") for tree in args.tree]
    specs = [(name, *path.partition("@")) for name, _, path in pairs]
    trees = [(name, Path(path).resolve(), int(n or 2)) for name, path, _, n in specs]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in trees}
    for index in range(args.rounds):
        order = trees if index % 2 == 0 else trees[::-1]
        for name, tree, workers in order:
            figures = one_round(
                args.database_url, name, tree, workers, args.n, args.clients, args.profile
            )
            os.chdir(here)
            runs[name].append(figures)
            print(
                f"round {index + 1} {name}: {figures['rps']:,.0f} req/s, "
                f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms, "
                f"CPU/request: API {figures['api_cpu_ms']:.2f} ms, "
                f"Postgres {figures['pg_cpu_ms']:.2f} ms",
                flush=True,
            )
    medians = {
        name: {k: statistics.median(r[k] for r in rounds) for k in FIGURES}
        for name, rounds in runs.items()
    }
    (a, _, _), (b, _, _) = trees[0], trees[1]
    for name in (a, b):
        m = medians[name]
        print(f"{name} median: {m['rps']:,.0f} req/s, p50 {m['p50_ms']:.1f} ms, "
              f"p99 {m['p99_ms']:.1f} ms, CPU/request: API {m['api_cpu_ms']:.2f} ms, "
              f"Postgres {m['pg_cpu_ms']:.2f} ms")  # fmt: skip
    print(
        f"{b}/{a}: req/s x{medians[b]['rps'] / medians[a]['rps']:.2f}, "
        f"p50 x{medians[b]['p50_ms'] / medians[a]['p50_ms']:.2f}, "
        f"p99 x{medians[b]['p99_ms'] / medians[a]['p99_ms']:.2f}, "
        f"API CPU x{medians[b]['api_cpu_ms'] / medians[a]['api_cpu_ms']:.2f}, "
        f"Postgres CPU x{medians[b]['pg_cpu_ms'] / medians[a]['pg_cpu_ms']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
