"""The web console at ``/dashboard/`` (``/`` redirects there): one page and its ES modules.

The page holds no data of its own: every figure comes from the JSON API, then
from its event streams, with the session in HttpOnly cookies (``app.auth``).
The assets are package data served by Flask: no CDN, no build step. Their URLs
carry a digest of their content (``assets/<digest>/js/main.js``), so they are
cached for good and a new release is fetched at once; the modules import each
other by relative paths, which keeps them under the same digest. Every URL is
relative to the page, so the console also works behind a proxy that mounts
taskq under a path prefix.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from taskq import __version__

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

ASSETS = Path(__file__).parent / "static" / "dashboard"
YEAR = 365 * 24 * 3600

# Scripts, styles and connections from this origin only: no inline script can run.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


@cache
def asset_digest() -> str:
    """A digest of every asset file (read once per process): their URLs change with them."""
    digest = hashlib.sha256()
    for path in sorted(ASSETS.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(ASSETS).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def modules() -> list[str]:
    """The page's ES modules, preloaded so the browser fetches them in parallel."""
    return sorted(p.relative_to(ASSETS).as_posix() for p in ASSETS.glob("js/**/*.js"))


@bp.get("/")
def index():
    """The console's page; the views are client-side routes after ``#``."""
    if not request.path.endswith("/"):  # the page's relative asset URLs need the slash
        return redirect(url_for("dashboard.index"))
    page = render_template(
        "dashboard.html", version=__version__, assets=f"assets/{asset_digest()}", modules=modules()
    )
    response = Response(page)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/assets/<digest>/<path:filename>")
def asset(digest: str, filename: str):
    """An asset; immutable under the current digest (an older page's digest is not cached)."""
    response = send_from_directory(ASSETS, filename)
    if digest == asset_digest():
        response.cache_control.public = True
        response.cache_control.max_age = YEAR
        response.cache_control.immutable = True
        response.cache_control.no_cache = None
    return response


@bp.after_request
def harden(response: Response) -> Response:
    """No sniffing, no framing, no referrer beyond this origin (stream tokens ride in URLs)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def root():
    """``/`` is the console."""
    return redirect(url_for("dashboard.index"))


def init_app(app: Flask) -> None:
    """Register the console and the redirect of ``/``."""
    app.register_blueprint(bp)
    app.add_url_rule("/", "root", root)
