"""Redis key-value store (`state.backend: redis`), shared by every worker and replica.

Every Redis call goes through `RedisState.run`, which turns a connection failure or timeout
into `StateUnavailable` (a 503 with Retry-After, never a 500) and keeps a `StateHealth`: once
Redis failed, calls fail fast for a second instead of each paying the connect timeout, then
one call tries again. Features that fail open (rate limits with `state.on_outage.rate_limits:
local`, the cache, circuit breakers) catch the error and fall back to their per-process part.

Needs the `redis` extra: pip install 'shipyard[redis]'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shipyard.errors import ConfigError, StateUnavailable

# The redis client (an optional dependency: only needed when state.backend is redis) is
# imported when the first RedisState is made: with the OpenTelemetry SDK that recent clients
# import, it is ~20 MiB resident that a gateway on the memory backend never needs.
redis_asyncio: Any = None
redis_errors: Any = None
_retry: Any = None  # () -> the client's "no retries" policy


def _load_client() -> bool:
    """Import the redis client once; False when it is not installed."""
    global redis_asyncio, redis_errors, _retry
    if redis_asyncio is None:
        try:
            import redis.asyncio as client
            import redis.exceptions as errors
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
            return False
        redis_errors = errors
        _retry = lambda: Retry(NoBackoff(), 0)  # noqa: E731
        redis_asyncio = client
    return True


__all__ = ["FEATURES", "OUTAGE_POLICY", "RedisKeyValue", "RedisState", "StateHealth"]

log = logging.getLogger("shipyard.state")
T = TypeVar("T")


class StateHealth:
    """Whether Redis answered lately; after a failure, calls fail fast for `retry_s`."""

    def __init__(self, *, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_s = retry_s
        self.clock = clock
        self.up = True
        self.down_since: float | None = None
        self.last_error = ""
        self._last_try = 0.0
        self.failures = 0
        self.on_change: Callable[[bool], None] | None = None

    def should_try(self) -> bool:
        """True when a call should go to Redis: it is up, or a retry is due."""
        if self.up:
            return True
        now = self.clock()
        if now - self._last_try >= self.retry_s:
            self._last_try = now
            return True
        return False

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        self._last_try = self.clock()
        if self.up:
            self.up = False
            self.down_since = self._last_try
            log.warning("Redis is unreachable (%s); each feature now follows its "
                        "state.on_outage policy", self.last_error)
            if self.on_change is not None:
                self.on_change(False)

    def succeeded(self) -> None:
        if not self.up:
            self.up = True
            self.down_since = None
            log.warning("Redis is reachable again; shared state is back in use")
            if self.on_change is not None:
                self.on_change(True)


# The features that keep state in Redis, what a message calls them, and what each does while
# Redis is unreachable (rate limits: `state.on_outage.rate_limits`). docs/resilience.md has
# the table for users; a test keeps the two the same.
FEATURES = {
    "rate_limits": "rate limits",
    "budgets": "budgets",
    "circuits": "circuit breakers",
    "cache": "the response cache",
    "conversations": "PII conversation tables and escalation triggers",
}
OUTAGE_POLICY = {
    "rate_limits": "local",
    "budgets": "closed",
    "circuits": "local",
    "cache": "open",
    "conversations": "closed",
}


class RedisState:
    """The Redis client every shared-state feature uses, and its health."""

    def __init__(self, url: str, *, prefix: str = "shipyard:", timeout_s: float = 1.0,
                 retry_after_s: int = 2, rate_limits: str = "local",
                 max_connections: int = 32) -> None:
        if not _load_client():
            raise ConfigError(
                "Config key 'state.backend' is 'redis', but the redis client is not installed; "
                "run: pip install 'shipyard[redis]'")
        self.prefix = prefix
        self.url = url
        self.retry_after_s = retry_after_s
        self.health = StateHealth()
        # No client-side retries: an outage is handled by each feature's policy, at once. A
        # bounded pool: under a burst, requests wait for one of `max_connections` (each call
        # takes well under a millisecond) instead of opening hundreds of sockets whose
        # connect timeouts would look like an outage.
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=_retry(), retry_on_timeout=False)
        self._pool: Any = pool
        self._client: Any = redis_asyncio.Redis(connection_pool=pool)
        self._checked = (0.0, True)
        self.policy = {**OUTAGE_POLICY, "rate_limits": rate_limits}
        self.on_outage: Callable[[str, str], None] | None = None  # (feature, policy)

    @property
    def client(self) -> Any:
        return self._client

    def unavailable(self, feature: str) -> StateUnavailable:
        """The 503 a feature that fails closed answers while Redis is down."""
        return StateUnavailable(
            f"Shared state is unavailable: Redis (state.redis_url) cannot be reached "
            f"({self.health.last_error or 'not answering'}), and {FEATURES[feature]} fail "
            f"closed while it is; retry after {self.retry_after_s} s.",
            headers={"retry-after": str(self.retry_after_s)})

    async def run(self, call: Callable[[], Awaitable[T]], *, feature: str) -> T:
        """Run one Redis call for `feature` (a key of FEATURES); a connection failure or
        timeout becomes `StateUnavailable`, counted with the feature's outage policy."""
        if not self.health.should_try():
            self._count(feature)
            raise self.unavailable(feature)
        try:
            result = await call()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError,
                TimeoutError) as exc:
            self.health.failed(exc)
            self._count(feature)
            raise self.unavailable(feature) from None
        self.health.succeeded()
        return result

    def _count(self, feature: str) -> None:
        if self.on_outage is not None:
            self.on_outage(feature, self.policy[feature])

    async def reachable(self) -> bool:
        """A PING, cached for a second so probes stay cheap."""
        checked, ok = self._checked
        now = time.monotonic()
        if now - checked > 1.0:
            try:
                await self._client.ping()
                self.health.succeeded()
                ok = True
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                self.health.failed(exc)
                ok = False
            self._checked = (now, ok)
        return ok and self.health.up  # a call that failed since the last PING counts too

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.disconnect()  # a pool passed in is not closed by the client


class RedisKeyValue:
    """`KeyValue` over `RedisState`: a failure raises `StateUnavailable` (features that fail
    open catch it; PII conversation tables fail closed with it)."""

    def __init__(self, state: RedisState | str, *, prefix: str = "shipyard:",
                 feature: str = "conversations") -> None:
        self.state = state if isinstance(state, RedisState) else RedisState(state, prefix=prefix)
        self.prefix = self.state.prefix
        self.feature = feature

    @property
    def client(self) -> Any:
        return self.state.client

    async def get(self, key: str) -> bytes | None:
        value = await self.state.run(lambda: self.state.client.get(self.prefix + key),
                                     feature=self.feature)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.state.run(
            lambda: self.state.client.set(self.prefix + key, value,
                                          px=max(1, int(ttl_s * 1000))),
            feature=self.feature)

    async def close(self) -> None:
        await self.state.close()
