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
from app.schemas import ErrorSchema

bp = Blueprint("openapi", __name__)

PATH_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
# Pages, not API operations.
HIDDEN_ENDPOINTS = {
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
    '`{"error": "...", "field_errors": {"field": ["..."]}}`.'
)


def doc(
    summary: str,
    *,
    tag: str,
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    response: type[Schema] | None = None,
    status: int = 200,
    auth: bool = True,
    errors: tuple[int, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Describe a view for the OpenAPI document (put it right under the route decorator)."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        view.openapi = {  # type: ignore[attr-defined]
            "summary": summary,
            "tag": tag,
            "body": body,
            "query": query,
            "response": response,
            "status": status,
            "auth": auth,
            "errors": errors,
        }
        return view

    return decorator


def error_statuses(info: dict[str, Any], has_path_args: bool) -> list[int]:
    """The error statuses an operation can answer with."""
    statuses = set(info["errors"]) | {503}
    if info["body"] is not None:
        statuses |= {400, 413, 415}
    if info["query"] is not None:
        statuses.add(400)
    if info["auth"]:
        statuses.add(401)
    if has_path_args:
        statuses.add(404)
    return sorted(statuses)


def operation(view: Callable[..., Any], endpoint: str, has_path_args: bool) -> dict[str, Any]:
    """The OpenAPI operation of one view."""
    info = getattr(view, "openapi", None)
    if info is None:
        lines = (view.__doc__ or endpoint).strip().splitlines()
        tag = endpoint.split(".")[0] if "." in endpoint else "service"
        return {"summary": lines[0], "tags": [tag], "responses": {"200": {"description": "OK"}}}
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": (view.__doc__ or info["summary"]).strip().splitlines()[0]}
    if info["response"] is not None:
        ok["content"] = {"application/json": {"schema": info["response"]}}
    responses[str(info["status"])] = ok
    for status in error_statuses(info, has_path_args):
        responses[str(status)] = {
            "description": MESSAGES.get(status, "Error."),
            "content": {"application/json": {"schema": "Error"}},
        }
    op: dict[str, Any] = {
        "summary": info["summary"],
        "tags": [info["tag"]],
        "operationId": endpoint.replace(".", "_"),
        "responses": responses,
    }
    if info["body"] is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": info["body"]}},
        }
    if info["query"] is not None:
        op["parameters"] = [{"in": "query", "schema": info["query"]}]
    if info["auth"]:
        op["security"] = [{"bearerAuth": []}]
    return op


def path_parameters(rule: str) -> list[dict[str, Any]]:
    """The path parameters of a werkzeug rule."""
    return [
        {
            "in": "path",
            "name": name,
            "required": True,
            "schema": {"type": "integer" if converter == "int" else "string"},
        }
        for converter, name in PATH_ARGUMENT.findall(rule)
    ]


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3 document of every route of ``app``."""
    from taskq import __version__

    spec = APISpec(
        title="taskq",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
    )
    spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    spec.components.schema("Error", schema=ErrorSchema)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in HIDDEN_ENDPOINTS:
            continue
        view = app.view_functions[rule.endpoint]
        path = PATH_ARGUMENT.sub(r"{\2}", rule.rule)
        has_args = bool(rule.arguments)
        entry = paths.setdefault(path, {"parameters": path_parameters(rule.rule), "ops": {}})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry["ops"][method.lower()] = operation(view, rule.endpoint, has_args)
    for path in sorted(paths):
        spec.path(path=path, operations=paths[path]["ops"], parameters=paths[path]["parameters"])
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
                schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                responses.append(
                    {
                        "status": status,
                        "description": answer.get("description", ""),
                        "schema": schema_name(schema) or "",
                    }
                )
            sections.setdefault(op.get("tags", ["other"])[0], []).append(
                {
                    "id": op.get("operationId") or f"{method}-{path}",
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "auth": bool(op.get("security")),
                    "params": params,
                    "body": field_rows(body["schema"], components) if body else [],
                    "body_schema": schema_name(body.get("schema", {})) if body else "",
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
