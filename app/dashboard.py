"""The web console at ``/dashboard/`` (``/`` redirects there): one page and its ES modules.

The page holds no data of its own: every figure comes from the JSON API, then
from its event streams, with the session in HttpOnly cookies (``app.auth``).
The assets are package data served by Flask: no CDN, no build step. Every URL
the scripts use is relative to the script itself, so the console also works
behind a proxy that mounts taskq under a path prefix.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for

from taskq import __version__

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    static_folder="static/dashboard",
    static_url_path="/static",
)

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


@bp.get("/")
def index():
    """The console's page; the views are client-side routes after ``#``."""
    if not request.path.endswith("/"):  # the page's relative asset URLs need the slash
        return redirect(url_for("dashboard.index"))
    response = Response(render_template("dashboard.html", version=__version__))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-cache"
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
