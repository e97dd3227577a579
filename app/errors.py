"""The one JSON error shape, ``{"error": "...", "field_errors": {...}}``, and every handler.

Views raise ``ApiError`` (or let marshmallow, werkzeug or psycopg raise); the
handlers here turn each into the contract's body and status. Nothing a client
sends produces a stack trace or a 500.
"""

from __future__ import annotations

import json
import logging
import re
from itertools import accumulate
from typing import Any

import psycopg
from flask import Flask, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError
from psycopg_pool import PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

MESSAGES = {
    400: "Bad request.",
    401: "Authentication credentials were not provided or are invalid.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    405: "Method not allowed.",
    409: "Conflict.",
    413: "Request body too large.",
    415: "Unsupported media type: send application/json.",
    422: "Idempotency-Key already used with a different request.",
    429: "Too many requests.",
    503: "Service unavailable: the database cannot be reached.",
}
# Deepest JSON a request body may nest: far above what a schema accepts (stored JSON
# stops at schemas.MAX_JSON_DEPTH), far below where Python's parser would recurse out.
MAX_BODY_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class ApiError(Exception):
    """An error a view reports to the client in the contract's shape."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        field_errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or MESSAGES.get(status, "Error."))
        self.status = status
        self.message = message or MESSAGES.get(status, "Error.")
        self.field_errors = field_errors or {}
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    field_errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
):
    """The Flask response for an error."""
    response = jsonify({"error": message, "field_errors": field_errors or {}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def flatten_field_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages as ``{"a.b": ["..."]}`` (batch items as ``tasks.3.title``)."""
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "non_field_errors": messages}
    if isinstance(messages, dict):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            name = "non_field_errors" if key == "_schema" else str(key)
            flat.update(flatten_field_errors(value, f"{prefix}.{name}" if prefix else name))
        return flat
    return {prefix or "non_field_errors": [str(messages)]}


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the arrays and objects of JSON ``text`` nest more than ``limit`` deep.

    Linear and without recursion (brackets inside strings do not count), so it can
    run before a parser that recurses.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) > limit


class BodyJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing a document nested deeper than MAX_BODY_DEPTH before parsing it.

    Every request body is parsed here (``request.get_json``, the views and the rate
    limiter alike): JSON nested 10,000 deep is a ValueError (a 400), not a
    RecursionError (a 500).
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            s = s.decode(json.detect_encoding(s), "surrogatepass")  # as json.loads does
        if nests_deeper_than(s, MAX_BODY_DEPTH):
            raise ValueError(f"nested deeper than {MAX_BODY_DEPTH} levels")
        return super().loads(s, **kwargs)


def request_body() -> bytes:
    """The raw request body; 413 when it is longer than MAX_CONTENT_LENGTH, chunked or not.

    werkzeug refuses a Content-Length over the limit, but reads a chunked body
    only up to the limit and hands back those bytes as if they were all; one
    more byte left in the stream means the client sent too much.
    """
    data = request.get_data(cache=True)
    limit = request.max_content_length
    at_limit = request.content_length is None and limit is not None and len(data) >= limit
    if at_limit and request.environ["wsgi.input"].read(1):
        raise ApiError(413)
    return data


def get_json_body(optional: bool = False) -> Any:
    """The request's JSON body: 415 unless it is JSON, 400 when it does not parse, 413
    when too long. ``optional``: ``{}`` for a request without a body."""
    raw = request_body()
    if optional and not raw:
        return {}
    if not request.is_json:
        raise ApiError(415)
    try:
        return current_app.json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}.") from None


def init_app(app: Flask) -> None:
    """Register the handlers that give every error the contract's shape."""
    app.json = BodyJSONProvider(app)

    @app.errorhandler(ApiError)
    def handle_api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.field_errors, exc.headers)

    @app.errorhandler(ValidationError)
    def handle_validation_error(exc: ValidationError):
        return error_response(400, "Invalid input.", flatten_field_errors(exc.messages))

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        status = exc.code or 500
        message = MESSAGES.get(status) or exc.description or "Error."
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        if status == 429:
            message = f"Too many requests: limit {exc.description}."
        return error_response(status, message, headers=headers)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def handle_database_down(exc: Exception):
        log.warning("database unavailable: %s", exc)
        return error_response(503, MESSAGES[503], headers={"Retry-After": "5"})

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error.")
