"""Circuit breakers: stop calling a deployment that keeps failing, probe it, close again.

closed --(failure rate >= threshold over the window, with enough requests;
          or `consecutive_failures` failures in a row)--> open
open   --(open_s elapsed)--> half-open: up to `half_open_probes` calls at a time are let through
half-open --(that many successes in a row)--> closed;  --(any failure)--> open

With `state.backend: redis`, `SharedCircuits` shares the opening across replicas: a replica
whose breaker opens writes `circuit:<deployment>` with the open time as its TTL, and every
replica reads those keys every `state.circuit_sync_s` (0.25 s) and opens its own breaker for
the time left. So one replica's verdict stops all of them from hammering a dead upstream
within a second; each then probes on its own once the time is up. While Redis is
unreachable each replica's breakers simply work alone (per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shipyard.config.resilience import CircuitConfig
from shipyard.errors import StateUnavailable
from shipyard.state.redis import RedisState

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "SharedCircuits"]

log = logging.getLogger("shipyard.resilience")

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
        self.opened_by_peer = False  # the last opening came from another replica

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
        self.opened_by_peer = False
        self._consecutive_failures = 0
        self.opened_at = now
        self.opened_count += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._set(OPEN)

    def force_open(self, remaining_s: float) -> None:
        """Open because another replica's breaker did, for the `remaining_s` it has left."""
        if not self.config.enabled or self.state == OPEN:
            return
        now = self.clock()
        self._open(now - max(0.0, self.config.open_s - remaining_s))
        self.opened_by_peer = True


class SharedCircuits:
    """Share breaker openings across replicas through Redis (see the module docstring)."""

    def __init__(self, state: RedisState, breakers: Sequence[CircuitBreaker], *,
                 interval_s: float = 0.25) -> None:
        self.state = state
        self.interval_s = interval_s
        self.breakers = list(breakers)
        self._keys = [state.prefix + "circuit:" + b.name for b in self.breakers]
        self._seen: dict[str, bytes] = {}  # breaker -> the opening last applied or published
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.peer_openings = 0
        for breaker, key in zip(self.breakers, self._keys, strict=True):
            breaker.on_change = self._hook(breaker, key, breaker.on_change)

    def _hook(self, breaker: CircuitBreaker, key: str,
              previous: Callable[[str, str], None] | None) -> Callable[[str, str], None]:
        def on_change(old: str, new: str) -> None:
            if previous is not None:
                previous(old, new)
            if new == OPEN and not breaker.opened_by_peer:
                self._spawn(self._publish(breaker, key))

        return on_change

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            return  # no loop (a unit test driving a breaker by hand): nothing to share
        task = loop.create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _publish(self, breaker: CircuitBreaker, key: str) -> None:
        opening = os.urandom(8).hex().encode()
        self._seen[breaker.name] = opening
        ttl_ms = max(1, int(breaker.retry_after_s() * 1000))
        # On an outage: per-process fallback, this replica's breaker is open all the same.
        with contextlib.suppress(StateUnavailable):
            await self.state.run(lambda: self.state.client.set(key, opening, px=ttl_ms),
                                 feature="circuits")

    async def sync(self) -> None:
        """Open every breaker that another replica opened and this one has not applied."""
        async def read() -> list[object]:
            pipe = self.state.client.pipeline(transaction=False)
            for key in self._keys:
                pipe.get(key)
                pipe.pttl(key)
            return list(await pipe.execute())

        values = await self.state.run(read, feature="circuits")
        for i, breaker in enumerate(self.breakers):
            opening, ttl_ms = values[2 * i], values[2 * i + 1]
            if not isinstance(opening, bytes) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
                continue
            if self._seen.get(breaker.name) == opening:
                continue
            self._seen[breaker.name] = opening
            if breaker.state != OPEN:
                breaker.force_open(ttl_ms / 1000.0)
                self.peer_openings += 1
                log.warning("circuit of %s opened by another replica for %.1f s",
                            breaker.name, ttl_ms / 1000.0)

    def start(self) -> None:
        if self.breakers:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except StateUnavailable:
                pass  # Redis down: breakers work per process until it is back
            except Exception:
                log.exception("reading shared circuit state failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
