"""Retries: which failures are worth another attempt, backoff with full jitter, and a budget
that keeps retries from becoming a retry storm."""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

from shipyard.config.resilience import RetryConfig
from shipyard.errors import (
    CircuitOpen,
    ShipyardError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["RetryBudget", "backoff_s", "is_retryable", "retry_after_s"]

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def is_retryable(exc: ShipyardError) -> bool:
    """Connect errors, timeouts, resets, malformed answers, 408/429/5xx: yes.
    400/401/403/404/413/422 and errors in the caller's own request: never."""
    if isinstance(exc, UpstreamTimeout | UpstreamUnavailable | CircuitOpen):
        return True
    if isinstance(exc, UpstreamError):
        status = exc.upstream_status
        return status is None or status == 200 or status in _RETRYABLE_STATUS
    return exc.status == 429 and exc.type == "rate_limit_error"


def retry_after_s(exc: ShipyardError) -> float | None:
    """The upstream's `Retry-After` (seconds form), if it sent one."""
    value = exc.headers.get("retry-after") or exc.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from model APIs; fall back to our own backoff


def backoff_s(attempt: int, config: RetryConfig, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt)] (attempt counts from 0)."""
    ceiling = min(config.backoff_max_s, config.backoff_base_s * (2 ** attempt))
    return (rng or random).uniform(0.0, ceiling)


class RetryBudget:
    """Retries allowed over a rolling window: `ratio` x requests + `min_per_s` x window."""

    def __init__(self, config: RetryConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = config.budget_ratio
        self.window = config.budget_window_s
        self.min_per_s = config.budget_min_per_s
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.exhausted = 0

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        for events in (self._requests, self._retries):
            while events and events[0] <= horizon:
                events.popleft()

    def record_request(self) -> None:
        self._requests.append(self.clock())

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) when it is spent."""
        now = self.clock()
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_s * self.window
        if len(self._retries) + 1 > allowed:
            self.exhausted += 1
            return False
        self._retries.append(now)
        return True
