"""Failed logins per account: the brute-force lock of ``POST /auth/login`` (flask-free).

One account has one key however a login names it: ``account:<user id>`` (the
username and the email of a user share it); a name that is no active account
gets ``name:<name lower-cased>``, so a stranger cannot tell the two apart by
when the lock starts. Only failed password checks count. A check first
*reserves* a slot of every window (atomically, so concurrent guesses cannot
all slip past a nearly full window), and a correct password gives its slot
back: the owner's own logins never lock the account.

Failures live in Redis (one sorted set per account, member = attempt id,
score = time), shared by every API process; with no Redis, or while it is
down, in this process's memory. ``taskq unlock-account`` deletes an account's
key to lift a lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from sql import queries

log = logging.getLogger(__name__)

KEY_PREFIX = "taskq:login-failures:"
MAX_MEMORY_KEYS = 10_000  # in-process fallback: past this, forget accounts with no recent failure

# KEYS[1] the account's sorted set; ARGV attempt id, longest window (s), then pairs of
# (limit, window seconds). {1} reserved, or {0, seconds until a slot frees up}. The time is
# Redis's own (TIME): API hosts whose clocks differ still count into one set of windows.
RESERVE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local longest = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
local wait = 0
for i = 3, #ARGV, 2 do
  local limit = tonumber(ARGV[i])
  local seconds = tonumber(ARGV[i + 1])
  local since = '(' .. (now - seconds)
  local count = redis.call('ZCOUNT', KEYS[1], since, '+inf')
  if count >= limit then
    local entry = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES',
                             'LIMIT', count - limit, 1)
    wait = math.max(wait, tonumber(entry[2]) + seconds - now)
  end
end
if wait > 0 then
  return {0, tostring(wait)}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(longest))
return {1}
"""


def account_key(user_id: int) -> str:
    """The key of an account's failures (username and email alike)."""
    return f"{KEY_PREFIX}account:{user_id}"


def name_key(login: str) -> str:
    """The key of a login name that is no active account."""
    return f"{KEY_PREFIX}name:{login.strip().lower()[:254]}"


@dataclass(frozen=True)
class Attempt:
    """A reserved slot: a failure unless given back with ``release``."""

    key: str
    member: str
    in_redis: bool


class Locked(Exception):
    """The account has used its failures; ``retry_after`` seconds until one more is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"locked for {retry_after:.0f}s")
        self.retry_after = retry_after


class LoginFailures:
    """Per-account failure windows in Redis, with an in-process fallback (one per process)."""

    def __init__(
        self, redis_url: str | None, windows: Sequence[tuple[int, float]], retry_after: float = 2.0
    ) -> None:
        if not windows:
            raise ValueError("at least one (limit, seconds) window")
        self.windows = [(int(limit), float(seconds)) for limit, seconds in windows]
        self.longest = max(seconds for _, seconds in self.windows)
        self.retry_after = retry_after
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._memory: dict[str, list[tuple[float, str]]] = {}
        self.client = (
            redis.Redis.from_url(url=redis_url, socket_connect_timeout=0.3, socket_timeout=0.5)
            if redis_url
            else None
        )
        self._reserve = self.client.register_script(RESERVE_SCRIPT) if self.client else None

    def reserve(self, key: str) -> Attempt:
        """Count an attempt on ``key`` now; ``Locked`` when a window is full (nothing counted)."""
        member = uuid.uuid4().hex
        if self._reserve is not None and time.monotonic() >= self._down_until:
            args: list[float | str] = [member, self.longest]
            for limit, seconds in self.windows:
                args += [limit, seconds]
            try:
                reply = self._reserve(keys=[key], args=args)
            except redis.RedisError as exc:
                self._failed(exc)
            else:
                if int(reply[0]) != 1:
                    raise Locked(float(reply[1]))
                return Attempt(key, member, in_redis=True)
        self._reserve_in_memory(key, member, time.time())
        return Attempt(key, member, in_redis=False)

    def release(self, attempt: Attempt) -> None:
        """Give a slot back: the password was right, so the attempt is no failure."""
        if attempt.in_redis and self.client is not None:
            try:
                self.client.zrem(attempt.key, attempt.member)
            except redis.RedisError as exc:
                self._failed(exc)
            return
        with self._lock:
            entries = self._memory.get(attempt.key, [])
            self._memory[attempt.key] = [e for e in entries if e[1] != attempt.member]

    def _reserve_in_memory(self, key: str, member: str, now: float) -> None:
        with self._lock:
            if len(self._memory) > MAX_MEMORY_KEYS:
                self._memory = {
                    k: v for k, v in self._memory.items() if v and v[-1][0] > now - self.longest
                }
            entries = [e for e in self._memory.get(key, []) if e[0] > now - self.longest]
            wait = 0.0
            for limit, seconds in self.windows:
                recent = [at for at, _ in entries if at > now - seconds]  # oldest first
                if len(recent) >= limit:
                    wait = max(wait, recent[len(recent) - limit] + seconds - now)
            if wait > 0:
                self._memory[key] = entries
                raise Locked(wait)
            entries.append((now, member))
            self._memory[key] = entries

    def _failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "redis unavailable, login failures counted per process for %.0fs: %s",
                self.retry_after,
                exc,
            )
        self._down_until = time.monotonic() + self.retry_after


def unlock_account(database_url: str, redis_url: str, login: str) -> dict[str, Any] | None:
    """Forget the failed logins of the account ``login`` names (username or email).

    The user (``id``, ``username``) it named, or None when it names no active
    account (its name's failures are cleared all the same).
    """
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        user = conn.execute(queries["get_user_for_login"], {"login": login}).fetchone()
    keys = [name_key(login)]
    if user is not None:
        keys.append(account_key(user["id"]))
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.delete(*keys)
    finally:
        client.close()
    return {"id": user["id"], "username": user["username"]} if user is not None else None
