"""Redis key-value store (`state.backend: redis`), shared by every replica.

Needs the `redis` extra: pip install 'shipyard[redis]'.
"""

from __future__ import annotations

from typing import Any

from shipyard.errors import ConfigError

redis_asyncio: Any
try:  # optional dependency: only needed when state.backend is redis
    import redis.asyncio as redis_asyncio
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    redis_asyncio = None

__all__ = ["RedisKeyValue"]


class RedisKeyValue:
    def __init__(self, url: str, *, prefix: str = "shipyard:") -> None:
        if redis_asyncio is None:
            raise ConfigError(
                "Config key 'state.backend' is 'redis', but the redis client is not installed; "
                "run: pip install 'shipyard[redis]'")
        self.prefix = prefix
        self._client: Any = redis_asyncio.from_url(url)

    @property
    def client(self) -> Any:
        return self._client

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self.prefix + key)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._client.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))

    async def close(self) -> None:
        await self._client.aclose()
