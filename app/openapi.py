"""/openapi.json and /docs, generated from the routes and the marshmallow schemas they load.

Views declare what they read and answer with ``@doc(...)``: the same schema
classes that validate requests become the OpenAPI components (apispec's
MarshmallowPlugin), so the document cannot drift from what is enforced. Routes
of other modules without ``@doc`` are listed from their docstrings. /docs is
rendered on the server from the spec: no CDN, it works offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app, jsonify, render_template
from marshmallow import Schema

from app.errors import MESSAGES
from app.schemas import (
    BIGINT_MAX,
    MAX_JSON_DEPTH,
    ErrorSchema,
    QueuePatchSchema,
    TaskCreateSchema,
)

bp = Blueprint("openapi", __name__)

PATH_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
# Pages and WebSocket endpoints (OpenAPI 3.0 cannot describe a WebSocket: DESCRIPTION
# names them), not API operations.
HIDDEN_ENDPOINTS = {
    "websocket.task_socket",
    "websocket.tasks_socket",
    "websocket.task_socket_plain",
    "websocket.tasks_socket_plain",
    "static",
    "openapi.openapi_json",
    "openapi.docs",
    "root",
    "dashboard.index",
    "dashboard.asset",
}
DESCRIPTION = (
    "A task queue and notification service on PostgreSQL alone. Authenticate with "
    "`Authorization: Bearer <access token>` (from /api/v1/auth/login). Every error body is "
    '`{"error": "...", "field_errors": {"field": ["..."]}}` (components/schemas/Error). '
    "What Postgres cannot store is refused with 400: a string holding NUL (U+0000) or an "
    "unpaired surrogate, anywhere in a body or a query, and JSON nested deeper than "
    f"{MAX_JSON_DEPTH} levels; a body over TASKQ_MAX_BODY_BYTES, chunked or not, gets 413. "
    "Lists page by `cursor` (the `next_cursor` of the page before: keyset, so any page costs "
    "what the first does; a cursor the list did not give is a 400) or by `page` (an offset, "
    "for compatibility). `count` is exact when `count_exact` is true, else a lower bound "
    "(counting stopped at TASKQ_COUNT_LIMIT; a search counts the rows its page read). "
    "WebSocket streams (not operations of this document): `/ws/tasks/{task_id}/` and "
    "`/ws/tasks/` carry the events of GET /api/v1/tasks/{task_id}/events and "
    "GET /api/v1/events, one JSON message per event (its data, plus `event` and "
    "`last_event_id`), with the same `?token=` and `?last_event_id=`."
)
# The error answers every operation may give, each one shared response component
# (the one error shape, components/schemas/Error) that operations reference.
ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
# gunicorn answers a request line over its limit (4094 bytes) itself, in HTML.
URI_TOO_LONG = {
    "description": "URI too long: answered by the HTTP server (gunicorn) in HTML, not JSON.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "TASKQ_METRICS_TOKEN (required by /metrics only when it is set).",
    },
    "streamToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "A token from POST /api/v1/events/token (EventSource sends no headers).",
    },
}


def doc(
    summary: str,
    *,
    tag: str,
    body: type[Schema] | None = None,
    body_required: bool = True,
    bare_list: str | None = None,
    query: type[Schema] | None = None,
    headers: type[Schema] | None = None,
    response: type[Schema] | dict[str, Any] | None = None,
    status: int = 200,
    media_type: str = "application/json",
    also: dict[int, type[Schema] | None] | None = None,
    auth: bool = True,
    scheme: str = "bearerAuth",
    auth_setting: str | None = None,
    stream_token: bool = False,
    database: bool = True,
    errors: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Describe a view for the OpenAPI document (put it right under the route decorator).

    ``body_required=False``: the body may be left out. ``bare_list``: the body
    may also be the bare array of that field. ``also``: other success answers
    (status -> schema, or None for no body). ``scheme``: the security scheme
    (``auth_setting``: needed only when that app setting is set). ``stream_token``:
    ``?token=`` is accepted in place of the bearer header. ``database=False``: no 503.
    """

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        view.openapi = {  # type: ignore[attr-defined]
            "summary": summary,
            "tag": tag,
            "body": body,
            "body_required": body_required,
            "bare_list": bare_list,
            "query": query,
            "headers": headers,
            "response": response,
            "status": status,
            "media_type": media_type,
            "also": also or {},
            "auth": auth,
            "scheme": scheme,
            "auth_setting": auth_setting,
            "stream_token": stream_token,
            "database": database,
            "errors": errors,
        }
        return view

    return decorator


def needs_auth(info: dict[str, Any]) -> bool:
    """Whether the operation takes credentials in this app (``auth_setting`` may turn it off)."""
    setting = info["auth_setting"]
    return info["auth"] and (setting is None or bool(current_app.config.get(setting)))


def error_statuses(info: dict[str, Any], path: str, has_path_args: bool) -> list[int]:
    """The error statuses an operation can answer with."""
    statuses = set(info["errors"])
    if info["database"]:
        statuses.add(503)
    if info["body"] is not None:
        statuses |= {400, 413, 415}
    if info["query"] is not None or info["headers"] is not None:
        statuses.add(400)
    if needs_auth(info):
        statuses.add(401)
    if has_path_args:
        statuses.add(404)
    if path.startswith("/api/"):
        statuses.add(429)  # the rate limits cover the API only
    return sorted(statuses)


def success_response(view: Callable[..., Any], info: dict[str, Any], schema: Any, media: str):
    """The description and content of a success answer."""
    answer: dict[str, Any] = {
        "description": (view.__doc__ or info["summary"]).strip().splitlines()[0]
    }
    if schema is not None:
        answer["content"] = {media: {"schema": schema}}
    return answer


def request_body(plugin: MarshmallowPlugin, info: dict[str, Any]) -> dict[str, Any]:
    """The requestBody of an operation: its schema, or that or the bare array of one field."""
    schema: Any = info["body"]
    if info["bare_list"]:
        field = info["body"]._declared_fields[info["bare_list"]]
        schema = {"oneOf": [schema, plugin.converter.field2property(field)]}  # type: ignore[union-attr]
    return {
        "required": info["body_required"],
        "content": {"application/json": {"schema": schema}},
    }


def operation(
    plugin: MarshmallowPlugin, view: Callable[..., Any], endpoint: str, path: str, has_args: bool
) -> dict[str, Any]:
    """The OpenAPI operation of one view."""
    info = getattr(view, "openapi", None)
    if info is None:
        lines = (view.__doc__ or endpoint).strip().splitlines()
        tag = endpoint.split(".")[0] if "." in endpoint else "service"
        return {"summary": lines[0], "tags": [tag], "responses": {"200": {"description": "OK"}}}
    responses: dict[str, Any] = {
        str(info["status"]): success_response(view, info, info["response"], info["media_type"])
    }
    for status, schema in info["also"].items():
        responses[str(status)] = success_response(view, info, schema, "application/json")
    for status in error_statuses(info, path, has_args):
        responses.setdefault(str(status), ERROR_RESPONSES[status])
    if info["query"] is not None:
        responses["414"] = URI_TOO_LONG
    op: dict[str, Any] = {
        "summary": info["summary"],
        "tags": [info["tag"]],
        "operationId": endpoint.replace(".", "_"),
        "responses": dict(sorted(responses.items())),
    }
    if info["body"] is not None:
        op["requestBody"] = request_body(plugin, info)
    parameters = [
        {"in": location, "schema": info[key]}
        for location, key in (("query", "query"), ("header", "headers"))
        if info[key] is not None
    ]
    if parameters:
        op["parameters"] = parameters
    if needs_auth(info):
        op["security"] = [{info["scheme"]: []}]
        if info["stream_token"]:
            op["security"].append({"streamToken": []})
    return op


def path_parameters(rule: str) -> list[dict[str, Any]]:
    """The path parameters of a werkzeug rule (ids start at 1 and are Postgres bigints)."""
    return [
        {
            "in": "path",
            "name": name,
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}
            if converter == "int"
            else {"type": "string"},
        }
        for converter, name in PATH_ARGUMENT.findall(rule)
    ]


def add_error_responses(spec: APISpec) -> None:
    """The shared error answers: each status's description and the one error schema."""
    spec.components.schema("Error", schema=ErrorSchema)
    for status, name in ERROR_RESPONSES.items():
        answer: dict[str, Any] = {
            "description": MESSAGES.get(status, "Error."),
            "content": {"application/json": {"schema": "Error"}},
        }
        if status in (429, 503):
            answer["headers"] = RETRY_AFTER
        spec.components.response(name, answer)


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3 document of every route of ``app`` (limits read from its settings)."""
    from taskq import __version__

    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="taskq",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": DESCRIPTION},
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    add_error_responses(spec)
    spec.components.schema("TaskCreate", TaskCreateSchema.OPENAPI_EXTRA, schema=TaskCreateSchema)
    spec.components.schema("QueuePatch", QueuePatchSchema.OPENAPI_EXTRA, schema=QueuePatchSchema)
    paths: dict[str, dict[str, Any]] = {}
    with app.app_context():
        for rule in app.url_map.iter_rules():
            if rule.endpoint in HIDDEN_ENDPOINTS:
                continue
            view = app.view_functions[rule.endpoint]
            path = PATH_ARGUMENT.sub(r"{\2}", rule.rule)
            has_args = bool(rule.arguments)
            entry = paths.setdefault(path, {"parameters": path_parameters(rule.rule), "ops": {}})
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                op = operation(plugin, view, rule.endpoint, path, has_args)
                entry["ops"][method.lower()] = op
        for path, entry in sorted(paths.items()):
            spec.path(path=path, operations=entry["ops"], parameters=entry["parameters"])
        return spec.to_dict()


def get_spec() -> dict[str, Any]:
    """The app's OpenAPI document, built once per process."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "taskq_openapi" not in app.extensions:
        app.extensions["taskq_openapi"] = build_spec(app)
    return app.extensions["taskq_openapi"]


@cache
def payload_json_schema(schema_cls: type[Schema]) -> dict[str, Any]:
    """The JSON schema of a task type's payload schema (GET /task-types)."""
    plugin = MarshmallowPlugin()
    APISpec("payload", "1", "3.0.3", plugins=[plugin])
    return plugin.converter.schema2jsonschema(schema_cls)  # type: ignore[union-attr]


# ------------------------------------------------------------------ /docs


def schema_name(schema: dict[str, Any]) -> str | None:
    """The component name a ``$ref`` points at."""
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None


def type_label(prop: dict[str, Any]) -> str:
    """A short human type of a JSON schema property."""
    if "$ref" in prop:
        return schema_name(prop) or "object"
    if "oneOf" in prop:
        return " | ".join(type_label(p) for p in prop["oneOf"])
    if "allOf" in prop:
        return " & ".join(type_label(p) for p in prop["allOf"])
    kind = prop.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(k for k in kind if k != "null")
    if kind == "array":
        return f"array of {type_label(prop.get('items', {}))}"
    if prop.get("enum"):
        return f"{kind}: " + ", ".join(str(v) for v in prop["enum"] if v is not None)
    if prop.get("format"):
        return f"{kind} ({prop['format']})"
    return str(kind)


def field_rows(schema: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields of a (referenced) schema as table rows."""
    name = schema_name(schema)
    resolved = components.get(name, {}) if name else schema
    required = set(resolved.get("required", []))
    rows = []
    for field, prop in resolved.get("properties", {}).items():
        if prop.get("readOnly"):
            continue
        rows.append(
            {
                "name": field,
                "type": type_label(prop),
                "required": field in required,
                "description": prop.get("description", ""),
            }
        )
    return rows


def resolve(node: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the component its ``$ref`` names."""
    ref = node.get("$ref", "")
    if not ref.startswith("#/components/"):
        return node
    _, _, kind, name = ref.split("/", 3)
    return spec["components"][kind][name]


def body_table_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema whose fields the body table lists (the first named one of a oneOf)."""
    for option in schema.get("oneOf", []):
        if "$ref" in option:
            return option
    return schema


def docs_sections(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Operations grouped by tag, flattened for the template."""
    components = spec.get("components", {}).get("schemas", {})
    sections: dict[str, list[dict[str, Any]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            params = [
                {
                    "name": p["name"],
                    "in": p["in"],
                    "type": type_label(p.get("schema", {})),
                    "required": p.get("required", False),
                    "description": p.get("description", ""),
                }
                for p in item.get("parameters", []) + op.get("parameters", [])
            ]
            responses = []
            for status, answer in op["responses"].items():
                answer = resolve(answer, spec)
                content = answer.get("content", {})
                schema = next(iter(content.values()), {}).get("schema", {})
                responses.append(
                    {
                        "status": status,
                        "description": answer.get("description", ""),
                        "schema": schema_name(schema) or "",
                    }
                )
            body_schema = body.get("schema", {})
            sections.setdefault(op.get("tags", ["other"])[0], []).append(
                {
                    "id": op.get("operationId") or f"{method}-{path}",
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "auth": bool(op.get("security")),
                    "params": params,
                    "body": field_rows(body_table_schema(body_schema), components) if body else [],
                    "body_schema": type_label(body_schema) if body else "",
                    "responses": responses,
                }
            )
    return [{"tag": tag, "operations": ops} for tag, ops in sections.items()]


def component_tables(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every component schema with its fields."""
    components = spec.get("components", {}).get("schemas", {})
    return [
        {"name": name, "fields": field_rows(schema, components)}
        for name, schema in sorted(components.items())
    ]


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document."""
    return jsonify(get_spec())


@bp.get("/docs")
def docs():
    """Human-readable API documentation, rendered from the OpenAPI document."""
    spec = get_spec()
    return render_template(
        "docs.html",
        info=spec["info"],
        sections=docs_sections(spec),
        schemas=component_tables(spec),
    )


def init_app(app: Flask) -> None:
    """Register /openapi.json and /docs."""
    app.register_blueprint(bp)
