"""Rate limits (flask-limiter): per user on the API, per IP on login/register; login lockout.

Login and register are limited per client IP (every attempt counts). Password
guessing against one account is limited per account (``taskq.lockout``): only
failed logins count, however the account is named (username or email).

Counters live in Redis so every API process shares them; when Redis is down
flask-limiter falls back to in-memory counters (limits per process) and checks
Redis again later. A 429 has the contract's error body (app.errors), plus
``Retry-After`` and ``X-RateLimit-*`` headers. Behind a proxy, ProxyFix with
``TASKQ_PROXY_HOPS`` trusted hops gives the real client IP.

Cost per limited request: one Redis round trip. The moving window is flask-limiter's
``moving-window`` strategy, except that the hit also returns the window the
``X-RateLimit-*`` headers need (stock limits asks Redis a second time for them).
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from math import ceil
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request
from flask_jwt_extended import decode_token
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import STRATEGIES, MovingWindowRateLimiter
from limits.util import WindowStats
from werkzeug.middleware.proxy_fix import ProxyFix

from app.errors import ApiError
from taskq.lockout import Attempt, Locked, LoginFailures, account_key, name_key

# Endpoints that take a password: brute force is limited per IP (and per account: lockout).
AUTH_RULE = re.compile(r"^/api/v1/auth/(login|token|register)/?$")


# KEYS[1] the window (newest first); ARGV limit, expiry, cost. The time is Redis's own
# (TIME), so API hosts whose clocks differ still share one window.
# limits' acquire_moving_window.lua, then its moving_window.lua on the result, in one call:
# {acquired, oldest timestamp still in the window (or false), entries in the window, now}.
ACQUIRE_AND_WINDOW_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local stamp = string.format('%d.%06d', clock[1], clock[2])
local now = tonumber(stamp)
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local acquired = 0
if cost <= limit then
  local entry = redis.call('lindex', KEYS[1], limit - cost)
  if not (entry and tonumber(entry) >= now - expiry) then
    for i = 1, cost do
      redis.call('lpush', KEYS[1], stamp)
    end
    redis.call('ltrim', KEYS[1], 0, limit - 1)
    redis.call('expire', KEYS[1], expiry)
    acquired = 1
  end
end
local low, high, found = 0, redis.call('llen', KEYS[1]) - 1, nil
while low <= high do
  local mid = math.floor((low + high) / 2)
  local value = tonumber(redis.call('lindex', KEYS[1], mid))
  if value and value >= now - expiry then
    found = mid
    low = mid + 1
  else
    high = mid - 1
  end
end
if found then
  return {acquired, redis.call('lindex', KEYS[1], found), found + 1, stamp}
end
return {acquired, false, 0, stamp}
"""
STRATEGY = "taskq-moving-window"


class OneTripMovingWindow(MovingWindowRateLimiter):
    """The moving window whose hit also learns the window (headers cost no second trip)."""

    _script = None

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """Consume ``cost`` and remember the window after it for this request's headers."""
        storage = self.storage
        if type(storage) is not RedisStorage or not has_request_context():
            return super().hit(item, *identifiers, cost=cost)  # the in-memory fallback
        if self._script is None:
            self._script = storage.get_connection().register_script(ACQUIRE_AND_WINDOW_SCRIPT)
        key = item.key_for(*identifiers)
        expiry = item.get_expiry()
        acquired, oldest, entries, now = self._script(
            keys=[storage.prefixed_key(key)], args=[item.amount, expiry, cost]
        )
        # The window ends on Redis's clock; the headers count on this host's.
        ends_in = (float(oldest) if oldest else float(now)) + expiry - float(now)
        g.setdefault("taskq_limit_windows", {})[key] = WindowStats(
            time.time() + ends_in, item.amount - int(entries)
        )
        return bool(acquired)

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """The window this request's hit saw; asks the storage only for limits not hit."""
        if has_request_context():
            seen = g.get("taskq_limit_windows")
            key = item.key_for(*identifiers)
            if seen and key in seen:
                return seen[key]
        return super().get_window_stats(item, *identifiers)


STRATEGIES.setdefault(STRATEGY, OneTripMovingWindow)


@lru_cache(maxsize=4096)
def token_subject(secret: str, token: str) -> str:
    """The ``sub`` of a token signed with ``secret``; raises when it does not decode.

    Cached per (secret, token): a token's subject never changes, so each token's
    signature is checked once, not on every request (failures are not cached).
    """
    return str(decode_token(token, allow_expired=True).get("sub"))


def token_user_key() -> str | None:
    """``user:<id>`` from a well-signed bearer token or access cookie (expired or revoked
    still identify)."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = header[7:].strip()
    else:
        token = request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"], "")
    if not token:
        return None
    try:
        subject = token_subject(current_app.config["JWT_SECRET_KEY"], token)
    except Exception:  # any undecodable token is just anonymous for limiting
        return None
    return f"user:{subject}"


def user_or_ip_key() -> str:
    """The default limit's key: the authenticated user, else the client IP."""
    return token_user_key() or f"ip:{get_remote_address()}"


def ip_key() -> str:
    """The client IP (after ProxyFix)."""
    return f"ip:{get_remote_address()}"


def default_limit() -> str:
    """TASKQ_RATELIMIT_DEFAULT, read per request so tests can change it."""
    return current_app.config["TASKQ_RATELIMIT_DEFAULT"]


def auth_limit() -> str:
    """TASKQ_RATELIMIT_AUTH."""
    return current_app.config["TASKQ_RATELIMIT_AUTH"]


def reserve_login(user: dict[str, Any] | None, login: str) -> Attempt | None:
    """Count a password check against its account before it runs; 429 while locked.

    The account is the user's id whatever name the login used, or the name itself
    when it is no active account. None when limits are off.
    """
    failures: LoginFailures | None = current_app.extensions.get("taskq_login_failures")
    if failures is None:
        return None
    key = account_key(user["id"]) if user is not None else name_key(login)
    try:
        return failures.reserve(key)
    except Locked as exc:
        raise ApiError(
            429,
            "Too many failed logins for this account: try again later.",
            headers={"Retry-After": str(max(1, ceil(exc.retry_after)))},
        ) from None


def release_login(attempt: Attempt | None) -> None:
    """The password was right: the reserved attempt is not a failure."""
    if attempt is not None:
        current_app.extensions["taskq_login_failures"].release(attempt)


def auth_windows(limit: str) -> list[tuple[int, float]]:
    """``20/minute;60/hour`` as ``[(20, 60.0), (60, 3600.0)]``."""
    return [(item.amount, float(item.get_expiry())) for item in parse_many(limit)]


def forwarded_prefix_is_a_path() -> None:
    """400 unless X-Forwarded-Prefix (the root path ProxyFix took from it) is empty or a
    path: it starts every link, and one like ``::1`` would be glued to the host."""
    if request.script_root and not request.script_root.startswith("/"):
        raise ApiError(
            400,
            "Invalid X-Forwarded-Prefix.",
            {"X-Forwarded-Prefix": ["Must be a path starting with /."]},
        )


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
        app.before_request(forwarded_prefix_is_a_path)
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
        strategy=STRATEGY,
        headers_enabled=True,
        swallow_errors=True,
    )

    @app.after_request
    def retry_after_only_when_refused(response: Response) -> Response:
        """Retry-After means "wait, then again": flask-limiter puts it on every limited
        answer; keep it on 429 and 503 only. (Registered before the limiter's own hook,
        so it runs after it.)"""
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        return response

    limiter.init_app(app)
    by_ip = limiter.limit(auth_limit, key_func=ip_key, scope="auth-ip", methods=["POST"])
    endpoints = {r.endpoint for r in app.url_map.iter_rules() if AUTH_RULE.match(r.rule)}
    for endpoint in endpoints:
        app.view_functions[endpoint] = by_ip(app.view_functions[endpoint])
    if app.config.get("RATELIMIT_ENABLED", True):
        app.extensions["taskq_login_failures"] = LoginFailures(
            redis_url,
            auth_windows(app.config["TASKQ_RATELIMIT_AUTH"]),
            retry_after=float(app.config["TASKQ_REDIS_RETRY_SECONDS"]),
        )
    app.extensions["taskq_limiter"] = limiter
    return limiter
