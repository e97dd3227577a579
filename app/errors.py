"""The one JSON error shape, ``{"error": "...", "field_errors": {...}}``, and every handler.

Views raise ``ApiError`` (or let marshmallow, werkzeug or psycopg raise); the
handlers here turn each into the contract's body and status. Nothing a client
sends produces a stack trace or a 500.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from flask import Flask, jsonify, request
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


def get_json_body() -> Any:
    """The request's JSON body: 415 unless it is JSON, 400 when it does not parse."""
    if not request.is_json:
        raise ApiError(415)
    data = request.get_json(silent=True)
    if data is None:
        raise ApiError(400, "Malformed JSON body.")
    return data


def init_app(app: Flask) -> None:
    """Register the handlers that give every error the contract's shape."""

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
