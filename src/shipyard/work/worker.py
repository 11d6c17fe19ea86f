"""The worker loop: claim due items per kind, run their handlers with bounded concurrency,
keep their leases alive, retry failures with backoff, and give everything back on shutdown.

A handler is an async function of the item and its `Attempt`; what it returns (JSON-able) is
stored as the item's result. It signals failure by raising:

- `Retry("why", delay_s=None)`: try again later (after `delay_s`, else the kind's backoff);
- `Permanent("why")`: no retry will help; dead-letter the item now;
- any other exception: like `Retry` with the exception's type and message as the error.

>>> async def send_email(item: WorkItem, attempt: Attempt) -> dict[str, Any]:
...     attempt.detail["smtp"] = "250"
...     return {"sent": True}
>>> worker = Worker(queue, lease_s=30)  # doctest: +SKIP
>>> worker.handle("email", send_email, concurrency=4, backoff=Backoff(base_s=1, max_s=600))
... # doctest: +SKIP
>>> await worker.start()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from shipyard.config.work import WorkConfig
from shipyard.work.idempotency import IdempotencyStore
from shipyard.work.queue import Claim, WorkItem, WorkQueue

__all__ = ["Attempt", "Backoff", "Handler", "Permanent", "Retry", "Worker"]

log = logging.getLogger("shipyard.work")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: the delay after the n-th failed attempt is
    drawn uniformly from [0, min(max_s, base_s * 2 ** (n - 1))].

    >>> Backoff(base_s=1, max_s=60).cap(3), Backoff(base_s=1, max_s=60).cap(10)
    (4.0, 60.0)
    """

    base_s: float = 1.0
    max_s: float = 3600.0

    def cap(self, attempt: int) -> float:
        return float(min(self.max_s, self.base_s * 2 ** max(0, attempt - 1)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.cap(attempt))


class Retry(Exception):  # a signal to the worker, never shown to a client
    """Raised by a handler: this attempt failed; try again later (`delay_s` overrides the
    backoff, e.g. from a `Retry-After` header)."""

    def __init__(self, message: str, *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.delay_s = delay_s


class Permanent(Exception):  # likewise
    """Raised by a handler: retrying cannot help; dead-letter the item with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Attempt:
    """What a handler gets besides the item: the attempt number and a `detail` dict it may
    fill (response code, latency, ...), stored in the attempt log."""

    item: WorkItem
    number: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> bool:
        """True when a failure of this attempt dead-letters the item."""
        return self.number >= self.item.max_attempts


Handler = Callable[[WorkItem, Attempt], Awaitable[Any]]
# Called (in a thread) after an item's attempt was recorded: (item, new status, error).
OnFinish = Callable[[WorkItem, str, str | None], None]


@dataclass
class _Lane:
    kind: str
    handler: Handler
    concurrency: int
    backoff: Backoff
    timeout_s: float | None
    on_finish: OnFinish | None
    running: dict[str, tuple[Claim, asyncio.Task[None]]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # why a task was cancelled
    wake: asyncio.Event | None = None
    loop_task: asyncio.Task[None] | None = None
    processed: int = 0
    failing: bool = False


class Worker:
    """Runs handlers for the kinds registered with `handle`, against one `WorkQueue`.

    Several workers (threads, processes, machines) may share a store; each item is held by
    one of them at a time. Each kind has its own concurrency bound. `stop()` waits up to
    `grace_s` for running handlers, then cancels them and releases their items to the queue
    (the attempt is not counted).
    """

    def __init__(self, queue: WorkQueue, *, owner: str | None = None, lease_s: float = 30.0,
                 poll_interval_s: float = 0.5, heartbeat_s: float | None = None,
                 reap_interval_s: float | None = None,
                 housekeeping: Sequence[tuple[float, Callable[[], object]]] = ()) -> None:
        self.queue = queue
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.heartbeat_s = heartbeat_s or max(0.2, lease_s / 3)
        self.reap_interval_s = reap_interval_s or max(0.5, min(lease_s / 2, 15.0))
        self.housekeeping = list(housekeeping)
        self._lanes: dict[str, _Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = False

    @classmethod
    def from_config(cls, queue: WorkQueue, config: WorkConfig, *,
                    idempotency: IdempotencyStore | None = None,
                    housekeeping_s: float = 600.0) -> Worker:
        """A worker with the `work:` settings, which also deletes finished items past
        `work.retention_days` and expired idempotency keys every `housekeeping_s`."""
        jobs: list[tuple[float, Callable[[], object]]] = []
        if config.retention_days > 0:
            keep = timedelta(days=config.retention_days)
            jobs.append((housekeeping_s, lambda: queue.purge(
                finished_before=queue.clock() - keep)))
        if idempotency is not None:
            jobs.append((housekeeping_s, idempotency.purge))
        return cls(queue, lease_s=config.lease_s, poll_interval_s=config.poll_interval_s,
                   housekeeping=jobs)

    # -- registration -----------------------------------------------------------------------
    def handle(self, kind: str, handler: Handler, *, concurrency: int = 4,
               backoff: Backoff | None = None, timeout_s: float | None = None,
               on_finish: OnFinish | None = None) -> None:
        """Run `handler` for items of `kind`, at most `concurrency` at once in this worker
        (before or after `start()`). `timeout_s` bounds one attempt (an item's own
        `timeout_s` wins); `on_finish` hears every recorded outcome (in a worker thread)."""
        if concurrency < 1:
            raise ValueError(f"concurrency for '{kind}' is {concurrency}; it must be >= 1")
        if kind in self._lanes:
            raise ValueError(f"kind '{kind}' already has a handler")
        lane = self._lanes[kind] = _Lane(kind, handler, concurrency, backoff or Backoff(),
                                         timeout_s, on_finish)
        if self.started and self._loop is not None:  # added while running: start its loop
            self._start_lane(lane)

    @property
    def kinds(self) -> list[str]:
        return list(self._lanes)

    def in_flight(self, kind: str | None = None) -> int:
        lanes = [self._lanes[kind]] if kind else self._lanes.values()
        return sum(len(lane.running) for lane in lanes)

    def processed(self, kind: str) -> int:
        return self._lanes[kind].processed

    def wake(self, kind: str | None = None) -> None:
        """Look for due items now (call after enqueueing in this process; safe from any
        thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for lane in ([self._lanes[kind]] if kind in self._lanes else
                     self._lanes.values() if kind is None else []):
            if lane.wake is not None:
                loop.call_soon_threadsafe(lane.wake.set)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the claim loops, the lease heartbeat and the reaper."""
        if self.started:
            return
        self.started, self._stopping = True, False
        loop = self._loop = asyncio.get_running_loop()
        for lane in self._lanes.values():
            self._start_lane(lane)
        self._tasks.append(loop.create_task(self._heartbeat_loop()))
        self._tasks.append(loop.create_task(self._reap_loop()))
        for interval, job in self.housekeeping:
            self._tasks.append(loop.create_task(self._every(interval, job)))

    def _start_lane(self, lane: _Lane) -> None:
        assert self._loop is not None  # set by start()
        lane.wake = asyncio.Event()
        lane.loop_task = self._loop.create_task(self._claim_loop(lane))
        self._tasks.append(lane.loop_task)

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop claiming; let running handlers finish for `grace_s`, then cancel and release."""
        if not self.started:
            return
        self._stopping = True
        for lane in self._lanes.values():
            if lane.loop_task is not None:
                lane.loop_task.cancel()
        running = [task for lane in self._lanes.values() for _, task in lane.running.values()]
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for lane in self._lanes.values():
                for item_id, (_, task) in list(lane.running.items()):
                    if task in late:
                        lane.reasons[item_id] = "stop"
                        task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.started = False

    async def run_until_idle(self, *, timeout_s: float = 60.0) -> int:
        """Process due items of every registered kind until none is due or running (for the
        CLI's `flush` and tests); returns how many attempts ran."""
        before = sum(lane.processed for lane in self._lanes.values())
        started_here = not self.started
        if started_here:
            await self.start()
        deadline = time.monotonic() + timeout_s
        try:
            idle_rounds = 0
            while time.monotonic() < deadline:
                self.wake()
                await asyncio.sleep(0.05)
                if self.in_flight() == 0:
                    due = await asyncio.to_thread(self._due_now)
                    idle_rounds = idle_rounds + 1 if not due else 0
                    if idle_rounds >= 2:
                        break
        finally:
            if started_here:
                await self.stop()
        return sum(lane.processed for lane in self._lanes.values()) - before

    def _due_now(self) -> bool:
        when = self.queue.next_due(self.kinds)
        return when is not None and when <= self.queue.clock()

    # -- loops ------------------------------------------------------------------------------
    async def _claim_loop(self, lane: _Lane) -> None:
        assert lane.wake is not None  # set by start()
        loop = asyncio.get_running_loop()
        while not self._stopping:
            free = lane.concurrency - len(lane.running)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = await asyncio.to_thread(
                        self.queue.claim, [lane.kind], owner=self.owner, lease_s=self.lease_s,
                        limit=free)
                except Exception as exc:  # the store may be down: try again after a pause
                    if not lane.failing:  # once per outage, not once per poll
                        log.warning("work: claiming '%s' items failed (%s); retrying until "
                                    "the store answers", lane.kind, type(exc).__name__)
                    lane.failing = True
                    await asyncio.sleep(min(5.0, self.poll_interval_s * 4))
                    continue
                if lane.failing:
                    log.info("work: claiming '%s' items works again", lane.kind)
                    lane.failing = False
            for claim in claims:
                task = loop.create_task(self._run(lane, claim))
                lane.running[claim.id] = (claim, task)
            if claims and len(lane.running) < lane.concurrency:
                continue  # there may be more due right away
            lane.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.wake.wait(), self.poll_interval_s)

    async def _run(self, lane: _Lane, claim: Claim) -> None:
        item = claim.item
        attempt = Attempt(item, claim.attempt)
        timeout = item.timeout_s or lane.timeout_s
        status: str | None = None
        error: str | None = None
        try:
            try:
                work = lane.handler(item, attempt)
                result = await (asyncio.wait_for(work, timeout) if timeout else work)
            except asyncio.CancelledError:
                reason = lane.reasons.pop(item.id, "stop")
                if reason == "cancel":
                    error = "cancelled while running"
                    if await asyncio.to_thread(self.queue.mark_cancelled, claim, error):
                        status = "cancelled"
                elif reason == "stop":
                    await asyncio.to_thread(self.queue.release, claim)
                # reason "lost": another worker owns the item now; nothing to record
                return
            except Permanent as exc:
                error = exc.message
                status = await asyncio.to_thread(self.queue.fail, claim, error, retry=False,
                                                 detail=attempt.detail)
            except Retry as exc:
                error = exc.message
                delay = exc.delay_s if exc.delay_s is not None else lane.backoff.delay(
                    attempt.number)
                status = await asyncio.to_thread(self.queue.fail, claim, error, delay_s=delay,
                                                 detail=attempt.detail)
            except TimeoutError:
                error = f"The attempt timed out after {timeout:g}s."
                status = await asyncio.to_thread(
                    self.queue.fail, claim, error,
                    delay_s=lane.backoff.delay(attempt.number), detail=attempt.detail)
            except Exception as exc:  # a handler's bug or a failed call: retried with backoff
                error = f"{type(exc).__name__}: {exc}"
                log.warning("work item %s (%s) attempt %d failed: %s", item.id, item.kind,
                            attempt.number, type(exc).__name__)
                status = await asyncio.to_thread(
                    self.queue.fail, claim, error,
                    delay_s=lane.backoff.delay(attempt.number), detail=attempt.detail)
            else:
                ok = await asyncio.to_thread(self.queue.complete, claim, result,
                                             detail=attempt.detail)
                status = "succeeded" if ok else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # recording failed (store down): the lease will expire and
            # the reaper puts the item back, so nothing is lost
            log.warning("work item %s: recording the attempt failed (%s); it will be retried "
                        "when its lease expires", item.id, type(exc).__name__)
        finally:
            lane.running.pop(item.id, None)
            lane.processed += 1
            if lane.wake is not None:
                lane.wake.set()
        if status is not None and lane.on_finish is not None:
            try:
                await asyncio.to_thread(lane.on_finish, item, status, error)
            except Exception:
                log.exception("work: the on_finish hook of '%s' failed", lane.kind)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            for lane in self._lanes.values():
                claims = [claim for claim, _ in lane.running.values()]
                if not claims:
                    continue
                try:
                    beat = await asyncio.to_thread(self.queue.extend, claims,
                                                   lease_s=self.lease_s)
                except Exception as exc:
                    log.warning("work: renewing leases failed (%s)", type(exc).__name__)
                    continue
                for item_id, reason in ([(i, "lost") for i in beat.lost]
                                        + [(i, "cancel") for i in beat.cancel]):
                    entry = lane.running.get(item_id)
                    if entry is not None and item_id not in lane.reasons:
                        lane.reasons[item_id] = reason
                        entry[1].cancel()

    async def _reap_loop(self) -> None:
        while True:
            try:
                reaped = await asyncio.to_thread(self.queue.reap_items)
                if reaped:
                    self.wake()
                for item_id, kind, status in reaped:
                    lane = self._lanes.get(kind)
                    if status != "queued" and lane is not None and lane.on_finish is not None:
                        # Ended by the reaper (its last attempt died with its worker): its
                        # kind hears of it like of any other end.
                        await asyncio.to_thread(self._reaped, lane, item_id, status)
            except Exception as exc:
                log.warning("work: reclaiming expired leases failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.reap_interval_s)

    def _reaped(self, lane: _Lane, item_id: str, status: str) -> None:
        item = self.queue.get(item_id, tenant_id=None)
        if lane.on_finish is not None:
            lane.on_finish(item, status, item.last_error)

    async def _every(self, interval_s: float, job: Callable[[], object]) -> None:
        while True:
            try:
                await asyncio.to_thread(job)
            except Exception as exc:
                log.warning("work: housekeeping failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval_s)
