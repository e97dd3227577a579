"""The Redis detail cache of ``GET /tasks/{id}``: key ``task_queue:task:{id}``, TTL 300 s.

Correctness comes from versions, not from timing. A version is the task's
newest ``task_history`` id. Every transition, whoever makes it, reaches each
API process's listener (``app.events.Notifier``), whose hook overwrites the
entry with a tombstone carrying the transition's history id. A read that
misses takes the version *before* it loads the detail and writes back only
when no newer version is stored (one Lua script, atomic in Redis): a read
that raced a transition can never put the older detail back. The hook runs
before SSE subscribers hear the event, so a client that has seen an event
never reads a detail older than it.

Redis down (or the listener not listening): reads go to Postgres and say
``cached: false``; a short circuit-breaker keeps a dead Redis from costing a
timeout per request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, current_app

from app.db import fetch_one
from app.events import Change, get_notifier

log = logging.getLogger(__name__)

KEY_PREFIX = "task_queue:task:"
DELETED_VERSION = 2**62  # a deleted task's tombstone outranks every fill

# Stored value: "<version>|<task json>"; a tombstone is "<version>|".
# KEYS[1] key; ARGV version, value, ttl. Refuse when a newer version is stored.
FILL_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local stored = tonumber(string.match(current, '^(%d+)|'))
  if stored and stored > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS: the keys; ARGV[1] ttl, ARGV[2..] the versions. Tombstone unless already newer.
INVALIDATE_SCRIPT = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[i + 1])
  local current = redis.call('GET', key)
  local stored = current and tonumber(string.match(current, '^(%d+)|'))
  if not stored or stored < version then
    redis.call('SET', key, ARGV[i + 1] .. '|', 'EX', ttl)
  end
end
return #KEYS
"""


def cache_key(task_id: int) -> str:
    """The Redis key of a task's detail."""
    return f"{KEY_PREFIX}{task_id}"


class DetailCache:
    """Version-guarded task details in Redis, with a circuit breaker for a dead Redis."""

    def __init__(self, url: str | None, ttl: int, retry_after: float = 2.0) -> None:
        self.ttl = ttl
        self.retry_after = retry_after
        self._down_until = 0.0
        self._must_clear = False
        self.client = (
            redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5)
            if url
            else None
        )
        if self.client is not None:
            self._fill = self.client.register_script(FILL_SCRIPT)
            self._invalidate = self.client.register_script(INVALIDATE_SCRIPT)

    @property
    def available(self) -> bool:
        """Configured, and not inside the back-off after a failure."""
        return self.client is not None and time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("redis unavailable, detail cache off for %.0fs: %s", self.retry_after, exc)
        self._down_until = time.monotonic() + self.retry_after

    def ping(self) -> bool:
        """Redis answers (readiness)."""
        if self.client is None:
            return False
        try:
            return bool(self.client.ping())
        except redis.RedisError as exc:
            self._failed(exc)
            return False

    def get(self, task_id: int) -> dict[str, Any] | None:
        """The cached detail, or None (missing, tombstone, or Redis down)."""
        if not self.available:
            return None
        try:
            if self._must_clear:
                self.clear()
            raw = self.client.get(cache_key(task_id))
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        if not raw:
            return None
        _, _, body = raw.partition(b"|")
        return json.loads(body) if body else None

    def fill(self, task_id: int, version: int, task: dict[str, Any]) -> bool:
        """Store ``task`` at ``version`` unless a newer version is there; True when stored."""
        if not self.available:
            return False
        try:
            body = json.dumps(task, separators=(",", ":"))
            return bool(self._fill(keys=[cache_key(task_id)], args=[version, body, self.ttl]))
        except redis.RedisError as exc:
            self._failed(exc)
            return False

    def invalidate(self, changes: list[Change]) -> None:
        """Tombstone every task of a notification batch at its transition's version."""
        if self.client is None or not changes:
            return
        versions: dict[str, int] = {}
        for change in changes:
            version = DELETED_VERSION if change.history_id is None else change.history_id
            key = cache_key(change.task_id)
            versions[key] = max(version, versions.get(key, 0))
        try:
            self._invalidate(keys=list(versions), args=[self.ttl, *versions.values()])
        except redis.RedisError as exc:
            # Entries we could not tombstone may be stale when Redis is back: drop them all then.
            self._must_clear = True
            self._failed(exc)

    def clear(self) -> None:
        """Drop every cached detail (the listener reconnected and may have missed transitions)."""
        if self.client is None:
            return
        try:
            for keys in _chunks(self.client.scan_iter(match=KEY_PREFIX + "*", count=1000), 500):
                self.client.delete(*keys)
            self._must_clear = False
        except redis.RedisError as exc:
            self._must_clear = True
            self._failed(exc)


def _chunks(items, size: int):
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def get_cache(app: Flask | None = None) -> DetailCache:
    """The app's detail cache."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["taskq_cache"]


def cached_task_detail(
    task_id: int, user_id: int, load: Callable[[int, int], dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, bool]:
    """``(task, cached)``: the detail from Redis when fresh, else ``load(task_id, user_id)``.

    ``load`` applies the caller's permissions; a cached entry is served only to
    its owner (anyone else goes through ``load``, which decides).
    """
    cache = get_cache()
    if not cache.available or not get_notifier().start(timeout=2.0):
        return load(task_id, user_id), False  # without the listener an entry could go stale
    task = cache.get(task_id)
    if task is not None and task.get("user_id") == user_id:
        return task, True
    row = fetch_one("task_cache_version", {"task_id": task_id})
    task = load(task_id, user_id)
    # A running task's progress changes without a transition (no new version): it is not
    # cached while it runs, so its detail is always read fresh.
    if task is not None and task.get("user_id") == user_id and task["status"] != "PROCESSING":
        cache.fill(task_id, row["version"] if row else 0, task)
    return task, False


def init_app(app: Flask) -> None:
    """Create the cache, hook it to the process's listener, and give /readyz its Redis check."""
    cache = DetailCache(
        app.config.get("REDIS_URL"),
        int(app.config["TASKQ_CACHE_TTL"]),
        retry_after=float(app.config["TASKQ_REDIS_RETRY_SECONDS"]),
    )
    app.extensions["taskq_cache"] = cache
    app.extensions["taskq_redis_check"] = cache.ping
    notifier = get_notifier(app)
    notifier.add_hook(cache.invalidate)
    notifier.add_reset_hook(cache.clear)
