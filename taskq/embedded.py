"""An embedded PostgreSQL (the ``pgserver`` package) for ``taskq up`` and the tests."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path


def start_embedded_postgres(data_dir: Path, cleanup_mode: str | None = "stop") -> str:
    """Start (or reuse) a Postgres whose data lives in ``data_dir``; return its URL.

    ``cleanup_mode="stop"`` stops the server when this process exits; None
    leaves it running for the next process to reuse.
    """
    runtime = data_dir.parent / "run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver's start-up probes leave sockets for the garbage collector; collect them
        # here, where their ResourceWarning is known and harmless.
        warnings.simplefilter("ignore", ResourceWarning)
        server = pgserver.get_server(data_dir, cleanup_mode=cleanup_mode)
        uri = server.get_uri()
        gc.collect()
    return uri
