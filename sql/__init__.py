"""Named SQL queries, loaded once from the ``*.sql`` files beside this module.

A query starts with ``-- name: query_name`` and a one-line ``--`` description;
it runs until the next ``-- name:`` line. ``queries["claim_tasks"]`` is its
text, with ``%(param)s`` placeholders for psycopg.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def read_sql_file(filename: str) -> str:
    """Return the text of one file of this folder (views.sql, say)."""
    return (HERE / filename).read_text()


def parse_queries(text: str) -> dict[str, str]:
    """Split a file into {name: query} on its ``-- name:`` lines."""
    parts = NAME_LINE.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def load_queries() -> dict[str, str]:
    """Every named query of every ``*.sql`` file here; a name used twice is an error."""
    found: dict[str, str] = {}
    for path in sorted(HERE.glob("*.sql")):
        for name, query in parse_queries(path.read_text()).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            found[name] = query
    return found


class _Queries:
    def __getitem__(self, name: str) -> str:
        return load_queries()[name]

    def __contains__(self, name: str) -> bool:
        return name in load_queries()


queries = _Queries()
