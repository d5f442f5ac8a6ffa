"""Query embeddings cached in process and, with REDIS_URL, across workers and replicas.

A popular question is embedded once for the whole fleet: each process looks in its own
LRU first, then in Redis, and only then asks the provider (and fills both). The Redis
key names everything that shapes the vector: `bookchat:qemb:{provider}:{model}:{dim}:
{task}:{sha256(text)}`; the value is the vector as little-endian float32 bytes (3 KiB
for 768 dimensions), kept `ttl` seconds (24 h by default).

Redis is an optimisation, never a dependency: any Redis failure is logged and the
process carries on with its local LRU, skipping Redis for a few seconds so an outage
does not add a timeout to every question.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600
_RETRY_REDIS_AFTER = 5.0  # seconds without Redis after a failure
_REDIS_TIMEOUT = 0.25  # a cache lookup must cost less than the embedding it saves


def cache_key(namespace: str, text: str) -> str:
    """The Redis key of `text`'s vector; `namespace` is `provider:model:dim:task`."""
    return f"bookchat:qemb:{namespace}:{hashlib.sha256(text.encode()).hexdigest()}"


def pack_vector(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


class QueryEmbeddingCache:
    """A local LRU of `size` entries in front of an optional shared Redis cache.

    `hits` counts answers from either layer (`redis_hits` from Redis alone); `misses`
    counts lookups that had to call the provider.
    """

    def __init__(
        self, *, size: int = 1024, redis_url: str | None = None, ttl: int = DEFAULT_TTL
    ) -> None:
        self._size = size
        self._ttl = ttl
        self._local: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._redis: Any = None
        if redis_url:
            import redis.asyncio as redis

            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=_REDIS_TIMEOUT, socket_connect_timeout=_REDIS_TIMEOUT
            )
        self._redis_down_until = 0.0
        self.hits = 0
        self.redis_hits = 0
        self.misses = 0

    @property
    def shared(self) -> bool:
        """True when a Redis layer is configured (whether or not it is up right now)."""
        return self._redis is not None

    async def get(self, namespace: str, text: str) -> list[float] | None:
        """The cached vector, or None (the caller then embeds and `put`s it)."""
        local_key = (namespace, text)
        vector = self._local.get(local_key)
        if vector is not None:
            self._local.move_to_end(local_key)
            self.hits += 1
            return list(vector)
        # Without Redis (or while it is down) no key is hashed and no vector packed.
        data = (
            await self._redis_call("get", cache_key(namespace, text)) if self._redis_up() else None
        )
        if isinstance(data, bytes) and data:
            vector = unpack_vector(data)
            self._remember(local_key, vector)
            self.hits += 1
            self.redis_hits += 1
            return list(vector)
        self.misses += 1
        return None

    async def put(self, namespace: str, text: str, vector: list[float]) -> None:
        self._remember((namespace, text), list(vector))
        if self._redis_up():
            key = cache_key(namespace, text)
            await self._redis_call("set", key, pack_vector(vector), ex=self._ttl)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def _remember(self, key: tuple[str, str], vector: list[float]) -> None:
        if self._size <= 0:
            return
        self._local[key] = vector
        if len(self._local) > self._size:
            self._local.popitem(last=False)

    def _redis_up(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_down_until

    async def _redis_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self._redis_up():
            return None
        try:
            return await getattr(self._redis, method)(*args, **kwargs)
        except Exception as exc:
            # Documented choice: the cache is an optimisation; carry on with the local LRU.
            self._redis_down_until = time.monotonic() + _RETRY_REDIS_AFTER
            logger.warning(
                "query embedding cache: Redis unavailable, using the local cache for %.0f s",
                _RETRY_REDIS_AFTER,
                extra={"error": type(exc).__name__},
            )
            return None
