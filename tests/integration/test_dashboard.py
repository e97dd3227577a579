"""The console's page and assets as Flask serves them (the browser tests use them for real)."""

from __future__ import annotations

import re
from pathlib import Path

import app as app_package

STATIC = Path(app_package.__file__).parent / "static" / "dashboard"
IMPORT = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s+["'](\.[^"']+)["']""")
# Any absolute URL in an asset would be a request to somewhere else (a CDN).
ABSOLUTE_URL = re.compile(r"""https?://(?!www\.w3\.org/2000/svg)""")


def test_root_redirects_to_the_console_and_the_console_needs_its_slash(client):
    root = client.get("/")
    assert root.status_code == 302
    assert root.headers["Location"].endswith("/dashboard/")
    bare = client.get("/dashboard")
    assert bare.status_code == 302 and bare.headers["Location"].endswith("/dashboard/")


def test_the_page_is_served_with_a_strict_content_security_policy(client):
    response = client.get("/dashboard/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert re.search(r'<script type="module" src="assets/[0-9a-f]{16}/js/main.js">', html)
    assert "<script>" not in html  # nothing inline: the policy would block it
    assert not ABSOLUTE_URL.search(html)


def test_every_asset_the_page_names_is_served_and_every_module_import_resolves(client):
    html = client.get("/dashboard/").get_data(as_text=True)
    named = set(re.findall(r'(?:href|src)="assets/[0-9a-f]{16}/([^"]+)"', html))
    assert {"dashboard.css", "js/main.js"} <= named
    modules = sorted(STATIC.glob("js/**/*.js"))
    # Every module is preloaded by the page, so the browser fetches them in parallel.
    assert {p.relative_to(STATIC).as_posix() for p in modules} <= named
    digest = re.search(r'src="assets/([0-9a-f]{16})/js/main.js"', html).group(1)
    for path in sorted(named):
        response = client.get(f"/dashboard/assets/{digest}/{path}")
        response.close()  # a static file's response holds the file open until closed
        assert response.status_code == 200, path
        if path.endswith(".js"):
            assert response.mimetype == "text/javascript", path
        # Cached for good: a change of any asset changes the digest in every URL.
        assert response.cache_control.immutable and response.cache_control.max_age >= 86400
    stale = client.get(f"/dashboard/assets/{'0' * 16}/js/main.js")
    stale.close()
    assert stale.status_code == 200 and not stale.cache_control.immutable
    missing = client.get(f"/dashboard/assets/{digest}/js/nothing.js")
    assert missing.status_code == 404 and missing.get_json()["error"]
    for module in modules:
        text = module.read_text()
        assert not ABSOLUTE_URL.search(text), module.name
        for target in IMPORT.findall(text):
            assert (module.parent / target).resolve().is_file(), f"{module.name} imports {target}"
    assert not ABSOLUTE_URL.search((STATIC / "dashboard.css").read_text())


def test_the_console_is_not_in_the_api_document(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert not any(path == "/" or path.startswith("/dashboard") for path in paths)
    assert "/api/v1/admin/stuck-tasks" in paths
    assert "/api/v1/admin/events" in paths
