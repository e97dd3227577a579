"""What gunicorn answers by itself, before the app, is in the OpenAPI document too."""

from __future__ import annotations

import pytest
import requests

from bench.sse_latency import start_api

pytestmark = pytest.mark.slow


def test_gunicorn_answers_a_too_long_url_as_documented(database_url: str):
    """414 comes from gunicorn, not the app: the document says so for the operations with a
    query string, as HTML."""
    url, proc = start_api(database_url, "openapi-414-secret-0123456789abcdef", workers=1)
    try:
        spec = requests.get(f"{url}/openapi.json", timeout=10).json()
        response = requests.get(f"{url}/api/v1/tasks", params={"search": "x" * 5000}, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    documented = spec["paths"]["/api/v1/tasks"]["get"]["responses"]["414"]
    assert response.status_code == 414
    assert response.headers["Content-Type"].split(";")[0] in documented["content"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method != "parameters" and any(p["in"] == "query" for p in op.get("parameters", [])):
                assert "414" in op["responses"], f"{method.upper()} {path}"
