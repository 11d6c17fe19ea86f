"""Rate limits: token buckets for requests and tokens per minute, plus concurrency caps.

A bucket holds up to `capacity` units and refills at `capacity / 60` per second, so "600
requests per minute" allows a burst of 600 and then 10 per second. Taking from a bucket is
one atomic step: in process, a dict under the event loop; in Redis, a Lua script that reads,
refills, checks and writes in one call — so any number of replicas share one limit exactly
(peers that pre-check per pod multiply the limit by the replica count).

Token limits are taken up front from an estimate (prompt tokens + the answer's `max_tokens`,
or a default) and reconciled with the real usage afterwards (`settle`), so a bucket can go
briefly negative when an answer was longer than estimated.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shipyard.errors import StateUnavailable
from shipyard.state.redis import RedisState

__all__ = ["Bucket", "Decision", "MemoryLimiter", "RateLimiter", "RedisLimiter"]

T = TypeVar("T")


@dataclass(frozen=True)
class Bucket:
    key: str
    capacity: float  # units per minute (and the burst)

    @property
    def refill_per_s(self) -> float:
        return self.capacity / 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after_s: float  # until `cost` units are available (0 when allowed)
    reset_s: float  # until the bucket is full again


class RateLimiter(Protocol):
    async def take(self, bucket: Bucket, cost: float, *, force: bool = False) -> Decision: ...

    async def give_back(self, bucket: Bucket, amount: float) -> None: ...

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> bool: ...

    async def release_slot(self, key: str) -> None: ...

    async def close(self) -> None: ...


def _decide(tokens: float, capacity: float, refill: float, cost: float) -> Decision:
    if tokens >= cost:
        left = tokens - cost
        return Decision(True, left, 0.0, (capacity - left) / refill if refill else 0.0)
    wait = (cost - tokens) / refill if refill else math.inf
    return Decision(False, max(0.0, tokens), wait, (capacity - tokens) / refill if refill else 0)


class MemoryLimiter:
    """One process. Buckets are refilled lazily when touched."""

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._slots: dict[str, int] = {}

    async def take(self, bucket: Bucket, cost: float, *, force: bool = False) -> Decision:
        now = self.clock()
        tokens, at = self._buckets.get(bucket.key, (bucket.capacity, now))
        tokens = min(bucket.capacity, tokens + (now - at) * bucket.refill_per_s)
        decision = _decide(tokens, bucket.capacity, bucket.refill_per_s, cost)
        taken = decision.allowed or force
        self._buckets[bucket.key] = (tokens - cost if taken else tokens, now)
        return decision

    async def give_back(self, bucket: Bucket, amount: float) -> None:
        now = self.clock()
        tokens, at = self._buckets.get(bucket.key, (bucket.capacity, now))
        tokens = min(bucket.capacity, tokens + (now - at) * bucket.refill_per_s + amount)
        self._buckets[bucket.key] = (tokens, now)

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> bool:
        used = self._slots.get(key, 0)
        if used >= limit:
            return False
        self._slots[key] = used + 1
        return True

    async def release_slot(self, key: str) -> None:
        self._slots[key] = max(0, self._slots.get(key, 0) - 1)

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV: capacity, refill per second, cost (may be negative: a refund).
# The bucket is a hash {tokens, at}; time comes from the Redis server, so replicas with
# skewed clocks still agree.
_TAKE = """
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local force = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then tokens = capacity; at = now end
tokens = math.min(capacity, tokens + (now - at) * refill)
local allowed = 0
if cost <= 0 or force == 1 or tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
if tokens > capacity then tokens = capacity end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / math.max(refill, 0.000001) * 1000) + 1000)
return {allowed, tostring(tokens)}
"""

# KEYS[1] counter; ARGV: limit, ttl ms. The TTL frees slots held by a crashed replica.
_SLOT = """
local used = redis.call('INCR', KEYS[1])
if used > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisLimiter:
    """Shared by every replica through Redis (install `shipyard[redis]`).

    While Redis is unreachable, `state.on_outage.rate_limits: local` falls back to a
    `MemoryLimiter` in this process (the same limits, per process: fail open, but still
    limited), and `closed` refuses with `StateUnavailable` (503 + Retry-After). Buckets in
    Redis are untouched by the outage and take over again as soon as it answers.
    """

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.client = state.client
        self.prefix = state.prefix + "rl:"
        self.on_outage = state.policy["rate_limits"]
        self.local = MemoryLimiter()
        self.fallbacks = 0
        self._take = self.client.register_script(_TAKE)
        self._slot = self.client.register_script(_SLOT)
        self._local_slots: dict[str, int] = {}

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        return await self.state.run(call, feature="rate_limits")

    def _fall_back(self) -> None:
        if self.on_outage != "local":
            raise self.state.unavailable("rate_limits")
        self.fallbacks += 1

    async def take(self, bucket: Bucket, cost: float, *, force: bool = False) -> Decision:
        try:
            allowed, tokens = await self._run(lambda: self._take(
                keys=[self.prefix + bucket.key],
                args=[bucket.capacity, bucket.refill_per_s, cost, 1 if force else 0]))
        except StateUnavailable:
            self._fall_back()
            return await self.local.take(bucket, cost, force=force)
        left = float(tokens)
        if int(allowed):
            return Decision(True, left, 0.0, (bucket.capacity - left) / bucket.refill_per_s)
        return _decide(left, bucket.capacity, bucket.refill_per_s, cost)

    async def give_back(self, bucket: Bucket, amount: float) -> None:
        try:
            await self._run(lambda: self._take(keys=[self.prefix + bucket.key],
                                               args=[bucket.capacity, bucket.refill_per_s,
                                                     -amount, 0]))
        except StateUnavailable:
            await self.local.give_back(bucket, amount)  # settling never fails a request

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> bool:
        try:
            return bool(int(await self._run(lambda: self._slot(
                keys=[self.prefix + "c:" + key], args=[limit, int(ttl_s * 1000)]))))
        except StateUnavailable:
            self._fall_back()
            taken = await self.local.acquire_slot(key, limit, ttl_s)
            if taken:
                self._local_slots[key] = self._local_slots.get(key, 0) + 1
            return taken

    async def release_slot(self, key: str) -> None:
        held = self._local_slots.get(key, 0)
        if held:  # taken from the local limiter during an outage: give it back there
            self._local_slots[key] = held - 1
            await self.local.release_slot(key)
            return
        with contextlib.suppress(StateUnavailable):  # on an outage the slot's TTL frees it
            await self._run(lambda: self.client.decr(self.prefix + "c:" + key))

    async def close(self) -> None:
        return None  # the client belongs to the state backend
