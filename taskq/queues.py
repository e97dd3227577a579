"""Queue controls: the ``queues`` rows that the admin API, ``taskq queue`` and psql all edit.

A queue without a row is unpaused and unlimited. The limits are enforced by
the claim itself (``taskq_claim_gate`` in migration 0011, called by
``claim_tasks``); this module only reads and writes the rows, and parses the
rate notation ``N/PERIOD`` (``100/60s``, ``10/s``, ``5/2m``, ``1000/h``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, NamedTuple

import psycopg

from sql import queries

# N/PERIOD: N from 1 to 999999; PERIOD a number above 0 with a unit (s when left out), or a
# unit alone. Also the OpenAPI pattern (ECMA and Python read it alike): whatever matches is valid.
UNIT = "(ms|s|m|h|d)"
NUMBER = r"[1-9][0-9]{0,5}(\.[0-9]{1,3})?|0?\.[0-9]{0,2}[1-9]"
RATE_SYNTAX = f"([1-9][0-9]{{0,5}})/(?:({NUMBER}){UNIT}?|{UNIT})"
RATE_PATTERN = re.compile(RATE_SYNTAX)
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_CONCURRENCY = 1_000_000
FIELDS = ("paused", "concurrency", "rate", "description")


class Rate(NamedTuple):
    """At most ``limit`` starts in any ``period``."""

    limit: int
    period: timedelta

    def __str__(self) -> str:
        return f"{self.limit}/{self.period.total_seconds():g}s"


def parse_rate(text: str) -> Rate:
    """``"100/60s"`` → Rate(100, 60 s); ValueError with a message a client can read."""
    match = RATE_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("Give N/PERIOD, e.g. 100/60s, 10/s, 5/2m or 1000/h (N up to 999999).")
    number, _, unit, alone = match.group(2, 3, 4, 5)
    seconds = float(number or 1) * UNIT_SECONDS[unit or alone or "s"]
    return Rate(int(match.group(1)), timedelta(seconds=seconds))


def list_queues(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every known queue's controls (the ``queue_controls`` view), by name."""
    return conn.execute(queries["list_queue_controls"]).fetchall()


def get_queue(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    """One queue's controls, or None when the queue is unknown."""
    return conn.execute(queries["get_queue_controls"], {"name": name}).fetchone()


def set_queue(conn: psycopg.Connection, name: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Create or change the row of ``name`` with ``changes`` (keys of FIELDS; ``rate`` a Rate
    or None); returns the queue's controls. The caller commits."""
    rate = changes.get("rate")
    params = {
        "name": name,
        "paused": changes.get("paused"),
        "concurrency": changes.get("concurrency"),
        "rate_limit": rate.limit if rate else None,
        "rate_period": rate.period if rate else None,
        "description": changes.get("description"),
        **{f"set_{field}": field in changes for field in FIELDS},
    }
    conn.execute(queries["set_queue_controls"], params)
    return get_queue(conn, name)


def queue_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``queue_controls`` row as the API and ``taskq queue list --json`` show it."""
    period = row["rate_period"]
    return {
        "queue": row["queue"],
        "paused": row["paused"],
        "concurrency": row["concurrency"],
        "rate": row["rate"],
        "rate_limit": row["rate_limit"],
        "rate_period": period.total_seconds() if period is not None else None,
        "description": row["description"],
        "workers": row["workers"],
        "has_waiting": row["has_waiting"],
        "unserved": row["unserved"],
        "updated_at": row["updated_at"].isoformat() if row["updated_at"] else None,
    }


def service_warnings(queues: Iterable[str], served: set[str], paused: set[str]) -> list[str]:
    """The warnings of a create into ``queues``: no live worker serves one, or it is paused."""
    warnings = []
    for queue in sorted(set(queues)):
        if queue not in served:
            warnings.append(f"No live worker serves queue {queue!r}: the task waits for one.")
        if queue in paused:
            warnings.append(f"Queue {queue!r} is paused: the task waits until it is resumed.")
    return warnings
