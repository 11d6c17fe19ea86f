"""Circuit breakers: stop calling a deployment that keeps failing, probe it, close again.

closed --(failure rate >= threshold over the window, with enough requests;
          or `consecutive_failures` failures in a row)--> open
open   --(open_s elapsed)--> half-open: up to `half_open_probes` calls at a time are let through
half-open --(that many successes in a row)--> closed;  --(any failure)--> open
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from shipyard.config.resilience import CircuitConfig

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """Failure-rate breaker over a rolling window of one-second buckets."""

    def __init__(self, config: CircuitConfig, *, name: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.config = config
        self.name = name
        self.clock = clock
        self.on_change = on_change
        self.state = CLOSED
        self.opened_at = 0.0
        self._buckets: deque[list[float]] = deque()  # [second, ok, failed]
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._consecutive_failures = 0
        self.opened_count = 0

    def _set(self, state: str) -> None:
        if state != self.state:
            old, self.state = self.state, state
            if self.on_change is not None:
                self.on_change(old, state)

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def counts(self) -> tuple[int, int]:
        """(requests, failures) in the current window."""
        self._trim(self.clock())
        ok = sum(b[1] for b in self._buckets)
        failed = sum(b[2] for b in self._buckets)
        return int(ok + failed), int(failed)

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets a probe through."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.config.open_s - self.clock())

    def available(self) -> bool:
        """Would a call be let through now? (Does not reserve a probe slot.)"""
        if not self.config.enabled or self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self.clock() >= self.opened_at + self.config.open_s
        return self._probes_in_flight < self.config.half_open_probes

    def acquire(self) -> bool:
        """Reserve the right to call; False when the circuit rejects the call."""
        if not self.config.enabled or self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() < self.opened_at + self.config.open_s:
                return False
            self._set(HALF_OPEN)
            self._probes_in_flight = 0
            self._probe_successes = 0
        if self._probes_in_flight >= self.config.half_open_probes:
            return False
        self._probes_in_flight += 1
        return True

    def release(self) -> None:
        """A call let through ended without a verdict (cancelled): free its probe slot."""
        if self.state == HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def record(self, success: bool) -> None:
        """Record the outcome of a call let through by `acquire()`."""
        if not self.config.enabled:
            return
        now = self.clock()
        if self.state == HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if not success:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._buckets.clear()
                self._set(CLOSED)
            return
        if self.state == OPEN:
            return  # a call that started before the circuit opened
        second = float(int(now))
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        self._buckets[-1][1 if success else 2] += 1
        self._consecutive_failures = 0 if success else self._consecutive_failures + 1
        if not success and self._consecutive_failures >= self.config.consecutive_failures:
            self._open(now)  # a run of failures: no need to wait for the window's rate
            return
        if not success:
            requests, failures = self.counts()
            if (requests >= self.config.min_requests
                    and failures / requests >= self.config.failure_rate):
                self._open(now)

    def _open(self, now: float) -> None:
        self._consecutive_failures = 0
        self.opened_at = now
        self.opened_count += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._set(OPEN)
