"""The key-value interface shared state backends implement."""

from __future__ import annotations

from typing import Protocol

__all__ = ["KeyValue"]


class KeyValue(Protocol):
    """Bytes by key with a time to live. Implementations: memory (tests, one process), Redis."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...
