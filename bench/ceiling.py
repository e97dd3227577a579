"""The ceiling: taskq's own claim and complete SQL driven by pgbench, no Python in the loop.

One pgbench transaction is what one worker round trip is: complete the batch
claimed last time and claim the next (``complete_tasks`` then ``claim_tasks``,
taken verbatim from ``sql/worker.sql`` with their parameters filled in), one
commit. The triggers fire as in production (history rows, NOTIFY), commits
are durable. ``clients`` pgbench connections play the worker processes.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sql import queries

# pgbench stand-ins for the named parameters; in extended mode each :name is a bind
# parameter, so the id lists travel as array literals ("{1,2,3}"). Extended, not
# prepared: the worker plans its outcome statements per call (a generic plan of
# ``= ANY(ids)`` guesses 10 ids and rereads the list per row), so must the ceiling.
PARAMS = {
    "queues": "'{bench}'",
    "limit": ":batch",
    "worker_id": "'pgbench'",
    "lease_seconds": "30",
    "ids": ":ids",
    "tokens": ":tokens",
    "results": "array_fill(NULL::jsonb, ARRAY[cardinality(:ids::bigint[])])",
}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def pgbench_path() -> str:
    """pgbench from PATH, else from a Debian Postgres install."""
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if found is None:
        raise FileNotFoundError("pgbench not found (Debian: apt-get install postgresql-client)")
    return found


def fill(query: str) -> str:
    """``query`` with each ``%(name)s`` replaced by its pgbench stand-in, on one line."""
    body = PLACEHOLDER.sub(lambda m: PARAMS[m.group(1)], query.rstrip().rstrip(";"))
    lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
    return " ".join(line.strip() for line in lines)


def script(batch: int) -> str:
    """The pgbench script: complete the previous batch and claim the next, one commit."""
    # claim_tasks is a WITH of data-modifying CTEs ending in SELECT * FROM claimed (and the
    # rate gate's hint rows): its own CTEs stay, its last SELECT becomes the \gset one.
    ctes, found, _ = queries["claim_tasks"].rpartition("SELECT * FROM claimed")
    if not found:
        raise ValueError("claim_tasks no longer ends in SELECT * FROM claimed")
    return "\n".join(
        [
            f"\\set batch {batch}",
            "BEGIN;",
            fill(queries["complete_tasks"]) + ";",
            fill(ctes) + " SELECT '{' || coalesce(string_agg(id::text, ','), '') || '}' AS ids,"
            " '{' || coalesce(string_agg(lease_token::text, ','), '') || '}' AS tokens"
            " FROM claimed \\gset",
            "COMMIT;",
            "",
        ]
    )


def measure_ceiling(url: str, n: int, batch: int, clients: int) -> float:
    """Jobs/s pgbench reaches draining the ``n`` PENDING tasks already in ``url``."""
    per_client = -(-n // (batch * clients)) + 1  # +1: the last batch's completion
    with tempfile.TemporaryDirectory(prefix="bench_ceiling_") as tmp:
        path = Path(tmp) / "claim_complete.sql"
        path.write_text(script(batch))
        out = subprocess.run(
            [
                *(pgbench_path(), "-n", "-M", "extended", "-D", "ids={}", "-D", "tokens={}"),
                *("-c", str(clients), "-j", str(clients), "-t", str(per_client)),
                *("-f", str(path), url),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
    return n / (per_client * clients / tps)
