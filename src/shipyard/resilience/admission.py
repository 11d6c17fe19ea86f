"""Admission control: a bounded number of requests in flight, a bounded priority queue with a
bounded wait, and a fast 503 with `Retry-After` when full — never an unbounded queue."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time

from shipyard.config.resilience import AdmissionConfig
from shipyard.errors import CapacityError

__all__ = ["BATCH", "INTERACTIVE", "AdaptiveLimit", "Admission"]

INTERACTIVE, BATCH = 0, 1


class AdaptiveLimit:
    """AIMD concurrency limit that finds the upstream's capacity by itself.

    The no-load latency is the lowest latency seen in the current period (re-learned every
    `reset_s`, so a slower upstream is noticed). A good answer adds 1/limit (so +1 per limit's
    worth of answers, while the limit is in use); an answer slower than `tolerance` x the
    no-load latency, or an overload signal (429, 503, timeout), multiplies the limit by 0.9 —
    at most once per no-load latency, so one burst of slow answers cannot collapse it.
    """

    def __init__(self, *, minimum: int, maximum: int, tolerance: float = 2.0,
                 reset_s: float = 30.0) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.reset_s = reset_s
        self.limit = float(min(maximum, max(minimum, 4)))
        self._floor_latency = math.inf
        self._next_floor = math.inf
        self._period_end = time.monotonic() + reset_s
        self._last_decrease = 0.0

    def observe(self, latency_s: float, *, overloaded: bool, in_flight: int) -> None:
        now = time.monotonic()
        if now >= self._period_end:
            self._floor_latency = min(self._next_floor, self._floor_latency * 1.5)
            self._next_floor = math.inf
            self._period_end = now + self.reset_s
        if not overloaded:
            self._floor_latency = min(self._floor_latency, latency_s)
            self._next_floor = min(self._next_floor, latency_s)
        slow = latency_s > self._floor_latency * self.tolerance
        if overloaded or slow:
            if now - self._last_decrease >= max(self._floor_latency, 0.001):
                self.limit = max(float(self.minimum), self.limit * 0.9)
                self._last_decrease = now
        elif in_flight >= self.limit / 2:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)


class Admission:
    """A semaphore with a priority wait queue (interactive before batch, FIFO within)."""

    def __init__(self, name: str, *, max_in_flight: int | None, max_queue: int = 0,
                 max_queue_ms: float = 1000.0, adaptive: AdaptiveLimit | None = None) -> None:
        self.name = name
        self._ceiling = max_in_flight
        self.adaptive = adaptive
        self.max_queue = max_queue
        self.max_queue_ms = max_queue_ms
        self.in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiting = 0  # waiters whose future is not done: set with every transition
        self._arriving = 0  # passed `full()` this turn of the event loop (`expect`)
        self._seq = itertools.count()
        self.shed = 0

    @classmethod
    def from_config(cls, name: str, settings: AdmissionConfig) -> Admission:
        """The admission of one model alias or service, as `admission:` configures it."""
        adaptive = None
        if settings.adaptive:
            adaptive = AdaptiveLimit(minimum=settings.min_in_flight,
                                     maximum=settings.max_in_flight or 1,
                                     tolerance=settings.latency_tolerance)
        return cls(name, max_in_flight=settings.max_in_flight, max_queue=settings.max_queue,
                   max_queue_ms=settings.max_queue_ms, adaptive=adaptive)

    @property
    def max_in_flight(self) -> int | None:
        """The limit in force now (adaptive limits move between their floor and ceiling)."""
        if self.adaptive is not None:
            return int(self.adaptive.limit)
        return self._ceiling

    def observe(self, latency_s: float, *, overloaded: bool) -> None:
        """Feed an answer's latency to the adaptive limit (no-op for a fixed limit)."""
        if self.adaptive is None:
            return
        before = self.max_in_flight or 0
        self.adaptive.observe(latency_s, overloaded=overloaded, in_flight=self.in_flight)
        for _ in range(max(0, (self.max_in_flight or 0) - before)):
            if not self._wake_one():
                break

    def _wake_one(self) -> bool:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                self.in_flight += 1
                self._waiting -= 1
                future.set_result(None)
                return True
        return False

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return self._waiting

    def full(self) -> bool:
        """True when a request arriving now would be refused at once (every slot taken, the
        queue full, counting the requests `expect`ed this turn): what the server checks before
        it reads a request."""
        limit = self.max_in_flight
        if limit is None:
            return False
        room = max(0, limit - self.in_flight) + max(0, self.max_queue - self._waiting)
        return self._arriving >= room

    def expect(self) -> None:
        """Note a request that passed `full()` and will call `acquire` on the event loop's
        next turn. A flood's requests are parsed many at a time (every connection with data,
        one after the other) before any of them reaches `acquire`: without this, each would
        see the room the first one takes, and be refused later at a higher cost. The count
        lasts one turn of the loop, so nothing can leave it wrong for longer."""
        if not self._arriving:
            asyncio.get_running_loop().call_soon(self._next_turn)
        self._arriving += 1

    def _next_turn(self) -> None:
        self._arriving = 0

    def refuse(self) -> None:
        """Count a request refused because `full()` was true (it never reached `acquire`)."""
        self.shed += 1

    @property
    def retry_after_s(self) -> int:
        """The `Retry-After` of a refusal: the longest queue wait, rounded up to seconds."""
        return max(1, math.ceil(self.max_queue_ms / 1000.0))

    def full_error(self) -> CapacityError:
        """The 503 for a request refused because every slot is taken and the queue full."""
        return self._error(f"{self.in_flight} requests in flight, {self.queued} queued")

    def _error(self, why: str) -> CapacityError:
        retry = self.retry_after_s
        return CapacityError(
            f"{self.name} is at capacity ({why}); retry after {retry} s.",
            headers={"retry-after": str(retry)})

    async def acquire(self, priority: int = INTERACTIVE) -> float:
        """Wait for a slot; returns the milliseconds spent queued, or raises 503."""
        limit = self.max_in_flight
        if limit is None:
            self.in_flight += 1
            return 0.0
        if self.in_flight < limit and not self._waiters:
            self.in_flight += 1
            return 0.0
        if self.in_flight < limit:
            self._wake_one()  # a slot is free: serve the queue first, in priority order
        if self._waiting >= self.max_queue:
            self.shed += 1
            raise self.full_error()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._seq), future)
        heapq.heappush(self._waiters, entry)
        self._waiting += 1
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.max_queue_ms / 1000.0)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return (time.perf_counter() - started) * 1000.0  # granted at the last moment
            self._cancel(future)
            self._forget(entry)
            self.shed += 1
            raise self._error(
                f"waited {self.max_queue_ms:g} ms in the queue without a free slot") from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, but the caller went away
            else:
                self._cancel(future)
                self._forget(entry)
            raise
        return (time.perf_counter() - started) * 1000.0

    def _cancel(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            self._waiting -= 1
        future.cancel()

    def _forget(self, entry: tuple[int, int, asyncio.Future[None]]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            return
        heapq.heapify(self._waiters)

    def release(self) -> None:
        """Free a slot, handing it straight to the most urgent waiter (if the limit, which
        may have shrunk, still allows it)."""
        self.in_flight = max(0, self.in_flight - 1)
        limit = self.max_in_flight
        if limit is None or self.in_flight < limit:
            self._wake_one()
