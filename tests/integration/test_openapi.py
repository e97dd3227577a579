"""/openapi.json and /docs come from the schemas the views validate with."""

from __future__ import annotations

import re

from app import schemas
from app.openapi import HIDDEN_ENDPOINTS


def test_openapi_lists_every_route_with_its_schemas(app, client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    routes = {
        rule.rule.replace("<int:task_id>", "{task_id}")
        .replace("<int:dead_letter_id>", "{dead_letter_id}")
        .replace("<name>", "{name}")
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in {"auth", "tasks", "admin"}
    }
    assert routes <= set(spec["paths"])
    create = spec["paths"]["/api/v1/tasks"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/TaskCreate"
    assert {"400", "401", "413", "415", "503", "201"} <= set(create["responses"])
    assert create["security"] == [{"bearerAuth": []}]
    listing = spec["paths"]["/api/v1/tasks"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"status", "search", "ordering", "page"}
    assert "403" in spec["paths"]["/api/v1/admin/tasks"]["get"]["responses"]
    assert "409" in spec["paths"]["/api/v1/tasks/{task_id}/cancel"]["post"]["responses"]
    params = spec["paths"]["/api/v1/tasks/{task_id}"]["parameters"]
    bigint = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    assert params == [{"in": "path", "name": "task_id", "required": True, "schema": bigint}]


def test_every_operation_is_described_with_its_errors_shared(app, client):
    spec = client.get("/openapi.json").get_json()
    operations = [
        (f"{method.upper()} {path}", op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    ]
    # Left out: the pages (the console, /docs, the document itself, static files).
    documented = {r.rule for r in app.url_map.iter_rules() if r.endpoint not in HIDDEN_ENDPOINTS}
    assert len(documented) == len(spec["paths"])
    assert {"/api/v1/admin/stuck-tasks", "/api/v1/admin/events"} <= set(spec["paths"])
    error = {"$ref": "#/components/schemas/Error"}
    for name, answer in spec["components"]["responses"].items():
        assert answer["content"] == {"application/json": {"schema": error}}, name
    for label, op in operations:
        assert op.get("operationId"), f"{label} has no @doc"
        for status, answer in op["responses"].items():
            # gunicorn's 414 is HTML; /readyz says why it is not ready in its own body
            if status[0] in "45" and status != "414" and label != "GET /readyz":
                assert answer["$ref"].startswith("#/components/responses/"), (label, status)


def test_components_are_the_validating_schemas(client):
    components = client.get("/openapi.json").get_json()["components"]["schemas"]
    task_create = components["TaskCreate"]["properties"]
    assert set(task_create) == set(schemas.TaskCreateSchema().load_fields)
    assert task_create["name"]["description"] == "Alias of title."
    assert {"type": "integer", "minimum": 0, "maximum": 100} in task_create["priority"]["oneOf"]
    register = components["Register"]
    assert set(register["required"]) == {"username", "email", "password", "password2"}
    assert set(components["Task"]["properties"]) == set(schemas.TaskSchema().fields)
    assert "callback_secret" not in components["Task"]["properties"]


def test_docs_page_is_rendered_on_the_server(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for path in ("/api/v1/tasks/{task_id}/cancel", "/api/v1/auth/register", "/api/v1/admin/queues"):
        assert path in html
    assert "<script src" not in html and "cdn" not in html.lower()
    assert 'id="schema-TaskCreate"' in html


def test_openapi_unknown_method_is_json_405(client):
    response = client.post("/openapi.json", json={})
    assert response.status_code == 405
    assert set(response.get_json()) == {"error", "field_errors"}


def test_each_stream_documents_its_resume_points(client):
    # The all-tasks streams resume from a place <xact_id>-<history id> or a history id; a
    # task's stream from a history id only. ASCII digits only; blank is no resume point.
    paths = client.get("/openapi.json").get_json()["paths"]

    def patterns(path: str) -> list[re.Pattern[str]]:
        parameters = paths[path]["get"]["parameters"]
        found = [p["schema"]["pattern"] for p in parameters if p["name"].lower().startswith("last")]
        assert len(found) == 2, path  # the header and the query parameter
        return [re.compile(pattern) for pattern in found]

    for path in ("/api/v1/events", "/api/v1/admin/events", "/api/v1/tasks/{task_id}/events"):
        for pattern in patterns(path):
            assert pattern.search("42") and pattern.search("")
            for bad in ("abc", "-5", "\u0661\u0662", "1-2-3", "1" * 20):
                assert not pattern.search(bad), (path, bad)
            assert bool(pattern.search("7315-42")) == (path != "/api/v1/tasks/{task_id}/events")
