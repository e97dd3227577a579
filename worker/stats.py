"""Text tables of the registry and of the operator views, for ``taskq list-tasks`` / ``stats``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from worker.registry import load_task_modules

VIEWS = (
    "queue_stats",
    "queue_controls",
    "queue_depth",
    "stuck_tasks",
    "live_workers",
    "table_health",
)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as an aligned plain-text table."""
    cells = [[str(c) for c in columns]]
    cells += [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def payload_fields(schema: Any) -> str:
    """``name*`` (required) / ``name`` fields of a payload schema."""
    if schema is None:
        return "any JSON"
    fields = schema().fields
    return ", ".join(f"{n}{'*' if f.required else ''}" for n, f in fields.items()) or "-"


def registry_table(imports: Iterable[str] = ()) -> str:
    """The task-type registry: the types users may create, then the internal ones (marked)."""
    types = sorted(load_task_modules(imports).values(), key=lambda t: (t.internal, t.name))
    rows = [
        {
            "type": t.name,
            "payload": payload_fields(t.payload_schema),
            "description": f"[internal] {t.description}" if t.internal else t.description,
        }
        for t in types
    ]
    return format_table(rows, ["type", "payload", "description"])


@contextmanager
def views_connection(url: str) -> Iterator[psycopg.Connection]:
    """A connection in a transaction whose plans take no JIT or parallel workers
    (``read_plan_settings``: the views touch little, though big tables price them high)."""
    from sql import queries

    with psycopg.connect(url, row_factory=dict_row, connect_timeout=5) as conn:
        conn.execute(queries["read_plan_settings"])
        yield conn


def view_report(url: str, views: Sequence[str] = VIEWS) -> str:
    """Every operator view as a titled table (``(none)`` when empty), then an UNSERVED line
    per queue whose tasks wait with no live worker serving it."""
    parts = []
    with views_connection(url) as conn:
        for view in views:
            cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view)))
            columns = [d.name for d in cur.description or []]
            rows = cur.fetchall()
            body = format_table(rows, columns) if rows else "(none)"
            parts.append(f"== {view} ==\n{body}")
            if view == "queue_controls":
                unserved = [row["queue"] for row in rows if row["unserved"]]
                parts += [f"UNSERVED: tasks wait in queue {q!r} and no live worker serves it"
                          for q in unserved]  # fmt: skip
    return "\n\n".join(parts)


def view_json(url: str, views: Sequence[str] = VIEWS) -> str:
    """Every operator view as one JSON document."""
    with views_connection(url) as conn:
        data = {
            view: conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view))).fetchall()
            for view in views
        }
    return json.dumps(data, default=str, indent=2)
