"""Fixed-window rate limits per tier: in process by default, Redis when REDIS_URL is set.

Written by hand rather than with Litestar's RateLimitMiddleware or its Store API: a
request must be checked against two windows at once (per token and per IP) and counted
exactly under concurrency across workers, which needs an atomic check-and-increment
(one Lua script in Redis; no await between check and increment in process).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("bookchat.ratelimit")


@dataclass(frozen=True)
class Window:
    key: str
    limit: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the tightest window's limit
    remaining: int
    reset_after: float  # seconds until the tightest window resets

    def headers(self) -> dict[str, str]:
        reset = max(1, math.ceil(self.reset_after))
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(reset)
        return headers


class RateLimiter(Protocol):
    async def hit(self, windows: list[Window], period: float) -> Decision:
        """Count one request in every window if all have room; else count nothing."""

    async def close(self) -> None: ...


class MemoryRateLimiter:
    """One process's counters; exact because check and increment share no await."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}
        self._last_sweep = time.monotonic()

    async def hit(self, windows: list[Window], period: float) -> Decision:
        now = time.monotonic()
        if now - self._last_sweep > period:
            self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            self._last_sweep = now
        states = []
        for window in windows:
            expires, count = self._counts.get(window.key, (0.0, 0))
            if expires <= now:
                expires, count = now + period, 0
            states.append((window, expires, count))
        blocked = [(w, e, c) for w, e, c in states if c >= w.limit]
        if blocked:
            window, expires, count = min(blocked, key=lambda s: s[1] - now)
            return Decision(False, window.limit, 0, expires - now)
        for window, expires, count in states:
            self._counts[window.key] = (expires, count + 1)
        window, expires, count = min(states, key=lambda s: s[0].limit - s[2])
        return Decision(True, window.limit, window.limit - count - 1, expires - now)

    async def close(self) -> None:
        return None


# KEYS: window keys; ARGV[1]: period in ms; ARGV[2..]: limits. All-or-nothing increment.
_LUA = """
local period = tonumber(ARGV[1])
local counts, ttls = {}, {}
for i, key in ipairs(KEYS) do
  counts[i] = tonumber(redis.call('GET', key) or '0')
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then ttl = period end
  ttls[i] = ttl
  if counts[i] >= tonumber(ARGV[i + 1]) then
    return {0, i, counts[i], ttl}
  end
end
local best, best_room = 1, nil
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, period); ttls[i] = period end
  local room = tonumber(ARGV[i + 1]) - n
  if best_room == nil or room < best_room then best, best_room = i, room end
end
return {1, best, best_room, ttls[best]}
"""


class RedisRateLimiter:
    """Counters shared by every worker and replica. Fails open (logged) if Redis is down."""

    def __init__(self, url: str, prefix: str = "bookchat:rl:") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(_LUA)
        self._prefix = prefix

    async def hit(self, windows: list[Window], period: float) -> Decision:
        keys = [self._prefix + w.key for w in windows]
        try:
            allowed, index, value, ttl_ms = await self._script(
                keys=keys, args=[int(period * 1000), *[w.limit for w in windows]]
            )
        except Exception as exc:
            # Documented choice: an outage of the limiter must not take reading down.
            logger.warning(
                "rate limiter unavailable, allowing request", extra={"error": type(exc).__name__}
            )
            return Decision(True, windows[0].limit, windows[0].limit, period)
        window = windows[int(index) - 1]
        if int(allowed):
            return Decision(True, window.limit, int(value), int(ttl_ms) / 1000)
        return Decision(False, window.limit, 0, int(ttl_ms) / 1000)

    async def close(self) -> None:
        await self._redis.aclose()
