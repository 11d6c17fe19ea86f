"""Admission control: a bounded number of requests in flight, a bounded priority queue with a
bounded wait, and a fast 503 with `Retry-After` when full — never an unbounded queue."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time

from shipyard.errors import CapacityError

__all__ = ["BATCH", "INTERACTIVE", "Admission"]

INTERACTIVE, BATCH = 0, 1


class Admission:
    """A semaphore with a priority wait queue (interactive before batch, FIFO within)."""

    def __init__(self, name: str, *, max_in_flight: int | None, max_queue: int = 0,
                 max_queue_ms: float = 1000.0) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_queue_ms = max_queue_ms
        self.in_flight = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.shed = 0

    @property
    def queued(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def _refuse(self, why: str) -> CapacityError:
        self.shed += 1
        retry = max(1, math.ceil(self.max_queue_ms / 1000.0))
        return CapacityError(
            f"{self.name} is at capacity ({why}); retry after {retry} s.",
            headers={"retry-after": str(retry)})

    async def acquire(self, priority: int = INTERACTIVE) -> float:
        """Wait for a slot; returns the milliseconds spent queued, or raises 503."""
        if self.max_in_flight is None:
            self.in_flight += 1
            return 0.0
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return 0.0
        if self.queued >= self.max_queue:
            raise self._refuse(f"{self.in_flight} requests in flight, {self.queued} queued")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._seq), future)
        heapq.heappush(self._waiters, entry)
        started = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.max_queue_ms / 1000.0)
        except TimeoutError:
            if future.done() and not future.cancelled():
                return (time.perf_counter() - started) * 1000.0  # granted at the last moment
            future.cancel()
            raise self._refuse(
                f"waited {self.max_queue_ms:g} ms in the queue without a free slot") from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted, but the caller went away
            else:
                future.cancel()
            raise
        return (time.perf_counter() - started) * 1000.0

    def release(self) -> None:
        """Free a slot, handing it straight to the most urgent waiter."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight = max(0, self.in_flight - 1)
