"""Pagination of every list: keyset cursors, the page-number form, and the page body.

A list's order is a few columns ending in a unique one (``id``). A cursor is the
order and the sort values of the last row of a page, signed with the app's
secret (HMAC-SHA256) so a client can hand it back but not forge one: the next
page is the rows after those values in that order (``keyset_sql``), read
through the index that serves the order, whatever the page's depth. The
page-number form (``page``) stays for compatibility and pays OFFSET for the
pages before it. A bad cursor is a 400 ``{"cursor": [...]}``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import current_app, request
from psycopg import sql

from app.errors import ApiError

CURSOR_CONTEXT = b"taskq list cursor v1\x00"
# Sort columns by kind: how a cursor stores a value and what it casts it to.
TIMESTAMP_COLUMNS = frozenset(
    {"created_at", "updated_at", "scheduled_at", "run_at", "started_at", "completed_at"}
)
INTEGER_COLUMNS = frozenset({"id", "priority", "attempts"})
ENUM_COLUMNS = {"status": "task_status"}
NULLABLE_COLUMNS = frozenset({"scheduled_at", "started_at", "completed_at"})
# One order term: (column, descending).
Term = tuple[str, bool]


def bad_cursor(reason: str = "Not a cursor of this list: use next_cursor as given.") -> ApiError:
    """The 400 of a cursor that cannot be used."""
    return ApiError(400, "Invalid cursor.", {"cursor": [reason]})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(kind: str, body: bytes) -> bytes:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, CURSOR_CONTEXT + kind.encode() + b"\x00" + body, hashlib.sha256).digest()


def encode_cursor(kind: str, terms: list[Term], row: dict[str, Any]) -> str:
    """The cursor after ``row`` in the order ``terms`` of the list ``kind``."""
    values = [row[name].isoformat() if isinstance(row[name], datetime) else row[name]
              for name, _ in terms]  # fmt: skip
    order = ["-" + name if desc else name for name, desc in terms]
    body = json.dumps([order, values], separators=(",", ":")).encode()
    return f"{_b64(body)}.{_b64(_signature(kind, body)[:18])}"


def decode_cursor(kind: str, cursor: str) -> tuple[list[Term], list[Any]]:
    """The order and last-row values a cursor of list ``kind`` carries (400 if not one)."""
    try:
        body_text, signature_text = cursor.split(".")
        body, signature = _unb64(body_text), _unb64(signature_text)
    except (ValueError, binascii.Error):
        raise bad_cursor() from None
    if not hmac.compare_digest(signature, _signature(kind, body)[:18]):
        raise bad_cursor()
    order, values = json.loads(body)  # signed by us: the shape is ours
    terms = [(term.removeprefix("-"), term.startswith("-")) for term in order]
    return terms, [parse_value(name, value) for (name, _), value in zip(terms, values, strict=True)]


def parse_value(name: str, value: Any) -> Any:
    """A cursor's stored value as the column's Python value."""
    if value is not None and name in TIMESTAMP_COLUMNS:
        return datetime.fromisoformat(value)
    return value


def order_sql(alias: str, terms: list[Term]) -> sql.Composable:
    """``ORDER BY`` terms on ``alias``'s columns."""
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(alias, name), sql.SQL("DESC" if desc else "ASC"))
        for name, desc in terms
    )


def keyset_sql(alias: str, terms: list[Term], values: list[Any]) -> tuple[sql.Composable, dict]:
    """The rows after ``values`` in the order ``terms`` (NULLs last ascending, first
    descending, as Postgres sorts them), and its parameters."""
    params: dict[str, Any] = {}
    placeholders = []
    for i, (name, _) in enumerate(terms):
        params[f"cursor_{i}"] = values[i]
        cast = ENUM_COLUMNS.get(name, "timestamptz" if name in TIMESTAMP_COLUMNS else
                                "bigint" if name in INTEGER_COLUMNS else "text")  # fmt: skip
        placeholders.append(sql.SQL("{}::{}").format(sql.Placeholder(f"cursor_{i}"),
                                                     sql.SQL(cast)))  # fmt: skip
    directions = {desc for _, desc in terms}
    if (
        len(directions) == 1
        and None not in values
        and (True in directions or not any(n in NULLABLE_COLUMNS for n, _ in terms))
    ):
        # One direction and no NULL to place: a row comparison, which an index on these
        # columns (ix_tasks_user_created for the default order) serves as its start.
        columns = sql.SQL(", ").join(sql.Identifier(alias, name) for name, _ in terms)
        operator = sql.SQL("<" if True in directions else ">")
        values_sql = sql.SQL(", ").join(placeholders)
        return sql.SQL("(({}) {} ({}))").format(columns, operator, values_sql), params
    alternatives = []
    for i, (name, desc) in enumerate(terms):
        column = sql.Identifier(alias, name)
        same = [equal_sql(sql.Identifier(alias, n), placeholders[j], values[j])
                for j, (n, _) in enumerate(terms[:i])]  # fmt: skip
        after = after_sql(column, placeholders[i], values[i], desc)
        if after is not None:
            alternatives.append(sql.SQL(" AND ").join([*same, after]))
    if not alternatives:
        return sql.SQL("FALSE"), params
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives)), params


def equal_sql(column: sql.Composable, value_sql: sql.Composable, value: Any) -> sql.Composable:
    """``column`` equals the cursor's value (NULL equals NULL here)."""
    if value is None:
        return sql.SQL("{} IS NULL").format(column)
    return sql.SQL("{} = {}").format(column, value_sql)


def after_sql(
    column: sql.Composable, value_sql: sql.Composable, value: Any, desc: bool
) -> sql.Composable | None:
    """``column`` sorts after the cursor's value; None when nothing can."""
    if value is None:  # NULL is last ascending (nothing after), first descending
        return sql.SQL("{} IS NOT NULL").format(column) if desc else None
    if desc:
        return sql.SQL("{} < {}").format(column, value_sql)
    return sql.SQL("({} > {} OR {} IS NULL)").format(column, value_sql, column)


def page_url(**replace: str | None) -> str:
    """This request's absolute URL with some query parameters replaced (None: removed)."""
    args = request.args.copy()
    for name, value in replace.items():
        args.pop(name, None)
        if value is not None:
            args[name] = value
    return f"{request.base_url}?{urlencode(list(args.items(multi=True)))}"


def page_body(
    results: list[dict[str, Any]],
    count: int,
    count_exact: bool,
    page: int | None,
    size: int,
    next_cursor: str | None,
) -> dict[str, Any]:
    """``{count, count_exact, next, previous, next_cursor, results}`` with absolute links.

    ``page`` None: the page was asked for by cursor (``next`` follows the cursor;
    no ``previous``, a cursor only goes forward).
    """
    if page is None:
        following = page_url(cursor=next_cursor, page=None) if next_cursor else None
        previous = None
    else:
        following = page_url(page=str(page + 1)) if next_cursor else None
        last = max(1, -(-count // size)) if count_exact else page
        previous = page_url(page=str(min(page - 1, last))) if page > 1 else None
    return {
        "count": count,
        "count_exact": count_exact,
        "next": following,
        "previous": previous,
        "next_cursor": next_cursor,
        "results": results,
    }


@dataclass
class PageRequest:
    """What one list request asks for: its order, where to start, and the SQL parameters."""

    kind: str
    terms: list[Term]
    after: sql.Composable
    params: dict[str, Any]
    page: int | None
    size: int

    def cut(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
        """This page's rows of the ``size + 1`` read, and the cursor after them (None: last)."""
        if len(rows) <= self.size:
            return rows, None
        rows = rows[: self.size]
        return rows, encode_cursor(self.kind, self.terms, rows[-1])


def page_request(
    kind: str, alias: str, query: dict[str, Any], size: int, terms: list[Term]
) -> PageRequest:
    """The page ``query`` asks for: by ``cursor`` (its order wins over ``terms``), else by
    ``page`` (OFFSET; a list without page numbers starts at the top). Reads ``size + 1``
    rows so that a last page is known without counting."""
    params: dict[str, Any] = {"limit": size + 1, "offset": 0}
    if query.get("cursor"):
        terms, values = decode_cursor(kind, query["cursor"])
        after, cursor_params = keyset_sql(alias, terms, values)
        return PageRequest(kind, terms, after, {**params, **cursor_params}, None, size)
    page = query.get("page")
    if page is not None:
        params["offset"] = (page - 1) * size
    return PageRequest(kind, terms, sql.SQL("TRUE"), params, page, size)
