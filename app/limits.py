"""Rate limits (flask-limiter): per user on the API, per IP and per username on login/register.

Counters live in Redis so every API process shares them; when Redis is down
flask-limiter falls back to in-memory counters (limits per process) and checks
Redis again later. A 429 has the contract's error body (app.errors), plus
``Retry-After`` and ``X-RateLimit-*`` headers. Behind a proxy, ProxyFix with
``TASKQ_PROXY_HOPS`` trusted hops gives the real client IP.
"""

from __future__ import annotations

import re

from flask import Flask, current_app, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

# Endpoints that take a password: brute force is limited per IP and per username.
AUTH_RULE = re.compile(r"^/api/v1/auth/(login|token|register)/?$")


def token_user_key() -> str | None:
    """``user:<id>`` from a well-signed bearer token (expired or revoked still identify)."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    try:
        claims = decode_token(header[7:].strip(), allow_expired=True)
    except Exception:  # any undecodable token is just anonymous for limiting
        return None
    return f"user:{claims.get('sub')}"


def user_or_ip_key() -> str:
    """The default limit's key: the authenticated user, else the client IP."""
    return token_user_key() or f"ip:{get_remote_address()}"


def ip_key() -> str:
    """The client IP (after ProxyFix)."""
    return f"ip:{get_remote_address()}"


def username_key() -> str:
    """The username a login/register body names (lower-cased); the IP when there is none."""
    body = request.get_json(silent=True)
    username = body.get("username") if isinstance(body, dict) else None
    if isinstance(username, str) and username.strip():
        return f"username:{username.strip().lower()[:150]}"
    return ip_key()


def default_limit() -> str:
    """TASKQ_RATELIMIT_DEFAULT, read per request so tests can change it."""
    return current_app.config["TASKQ_RATELIMIT_DEFAULT"]


def auth_limit() -> str:
    """TASKQ_RATELIMIT_AUTH."""
    return current_app.config["TASKQ_RATELIMIT_AUTH"]


def outside_api() -> bool:
    """Health, metrics and docs are never limited."""
    return not request.path.startswith("/api/")


def init_app(app: Flask) -> Limiter:
    """Install ProxyFix and the limiter; call after every blueprint is registered."""
    hops = int(app.config.get("TASKQ_PROXY_HOPS", 0))
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    redis_url = app.config.get("REDIS_URL")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    app.config.setdefault("RATELIMIT_KEY_PREFIX", "taskq")
    limiter = Limiter(
        key_func=user_or_ip_key,
        default_limits=[default_limit],
        default_limits_exempt_when=outside_api,
        storage_uri=redis_url or "memory://",
        storage_options={"socket_connect_timeout": 0.3, "socket_timeout": 0.5} if redis_url else {},
        in_memory_fallback_enabled=bool(redis_url),
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,
    )
    limiter.init_app(app)
    by_ip = limiter.limit(auth_limit, key_func=ip_key, scope="auth-ip", methods=["POST"])
    by_name = limiter.limit(auth_limit, key_func=username_key, scope="auth-user", methods=["POST"])
    endpoints = {r.endpoint for r in app.url_map.iter_rules() if AUTH_RULE.match(r.rule)}
    for endpoint in endpoints:
        app.view_functions[endpoint] = by_name(by_ip(app.view_functions[endpoint]))
    app.extensions["taskq_limiter"] = limiter
    return limiter
