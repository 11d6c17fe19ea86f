"""The durable work queue on both store backends (SQLite and a real PostgreSQL): enqueue with
idempotency keys, leases, retries with backoff, dead letter, cancel, requeue, reclaiming
expired leases, racing claimers, the worker loop, and idempotency records."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from shipyard.errors import Conflict, InvalidRequest, NotFound
from shipyard.store import create_store_engine, migrate
from shipyard.work import (
    Attempt,
    Backoff,
    IdempotencyStore,
    Permanent,
    Retry,
    Worker,
    WorkItem,
    WorkQueue,
    request_fingerprint,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_store_engine(store_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_enqueue_claim_complete_and_idempotent_enqueue(engine: Engine) -> None:
    queue = WorkQueue(engine)
    first = queue.enqueue("email", {"to": "a"}, tenant_id="acme", idempotency_key="welcome-1")
    again = queue.enqueue("email", {"to": "other"}, tenant_id="acme",
                          idempotency_key="welcome-1")
    assert first.created and not again.created and again.item.id == first.item.id
    assert again.item.payload == {"to": "a"}
    # The key is per tenant and kind.
    assert queue.enqueue("email", {}, tenant_id="globex", idempotency_key="welcome-1").created
    assert queue.enqueue("sms", {}, tenant_id="acme", idempotency_key="welcome-1").created

    [claim] = queue.claim(["email"], owner="w1", lease_s=30, limit=1)
    assert claim.item.status == "running" and claim.attempt == 1
    assert claim.item.lease_owner == "w1"
    assert queue.complete(claim, {"sent": True}, detail={"smtp": 250})
    done = queue.get(claim.id, tenant_id=claim.item.tenant_id)
    assert done.status == "succeeded" and done.result == {"sent": True}
    assert done.finished_at is not None and done.finished_at.tzinfo is not None
    assert not queue.complete(claim, {"sent": "twice"})  # the lease is gone
    [log] = queue.attempts(claim.id)
    assert (log.attempt, log.outcome, log.detail) == (1, "succeeded", {"smtp": 250})
    with pytest.raises(NotFound):
        queue.get(claim.id, tenant_id="someone-else")
    counts = queue.counts(kind="email")
    assert counts["succeeded"] == 1 and counts["queued"] == 1
    with pytest.raises(InvalidRequest, match="max_attempts"):
        queue.enqueue("email", {}, max_attempts=0)


def test_retries_back_off_then_dead_letter_then_requeue(engine: Engine) -> None:
    clock = Clock()
    queue = WorkQueue(engine, clock=clock)
    item = queue.enqueue("hook", {"n": 1}, max_attempts=3).item
    for attempt in (1, 2):
        [claim] = queue.claim(["hook"], owner="w", lease_s=30)
        assert claim.attempt == attempt
        assert queue.fail(claim, f"HTTP 503 on attempt {attempt}", delay_s=10) == "queued"
        assert queue.claim(["hook"], owner="w", lease_s=30) == []  # not due yet
        clock.advance(10.5)
    [claim] = queue.claim(["hook"], owner="w", lease_s=30)
    assert queue.fail(claim, "HTTP 503 on attempt 3", delay_s=10) == "dead"
    dead = queue.get(item.id, tenant_id=None)
    assert dead.status == "dead" and dead.last_error == "HTTP 503 on attempt 3"
    assert [a.outcome for a in queue.attempts(item.id)] == ["retry", "retry", "dead"]
    with pytest.raises(Conflict, match="is dead"):
        queue.cancel(item.id, tenant_id=None)

    again = queue.requeue(item.id, tenant_id="default")
    assert again.status == "queued" and again.attempts == 0 and again.finished_at is None
    with pytest.raises(Conflict, match="is queued"):
        queue.requeue(item.id, tenant_id="default")
    [claim] = queue.claim(["hook"], owner="w", lease_s=30)
    assert claim.attempt == 1
    assert queue.fail(claim, "the receiver refused it (HTTP 400)", retry=False) == "dead"
    assert len(queue.attempts(item.id)) == 4  # the log keeps every attempt


def test_cancel_queued_and_running(engine: Engine) -> None:
    queue = WorkQueue(engine)
    queued = queue.enqueue("job", {}).item
    assert queue.cancel(queued.id, tenant_id="default").status == "cancelled"
    running = queue.enqueue("job", {}).item
    [claim] = queue.claim(["job"], owner="w", lease_s=30)
    asked = queue.cancel(running.id, tenant_id="default")
    assert asked.status == "running" and asked.cancel_requested
    beat = queue.extend([claim], lease_s=30)
    assert beat.cancel == {running.id} and not beat.lost
    assert queue.mark_cancelled(claim)
    assert queue.get(running.id, tenant_id=None).status == "cancelled"
    # A retryable failure of an item someone cancelled ends cancelled, not queued.
    third = queue.enqueue("job", {}).item
    [claim] = queue.claim(["job"], owner="w", lease_s=30)
    queue.cancel(third.id, tenant_id=None)
    assert queue.fail(claim, "boom") == "cancelled"


def test_expired_leases_are_reclaimed_and_the_old_holder_cannot_finish(engine: Engine) -> None:
    clock = Clock()
    queue = WorkQueue(engine, clock=clock)
    item = queue.enqueue("job", {"x": 1}, max_attempts=2).item
    [stale] = queue.claim(["job"], owner="crashed", lease_s=5)
    clock.advance(3)
    assert queue.reap() == 0  # still leased
    clock.advance(3)
    assert queue.reap() == 1
    back = queue.get(item.id, tenant_id=None)
    assert back.status == "queued" and "stopped renewing its lease" in (back.last_error or "")
    [fresh] = queue.claim(["job"], owner="alive", lease_s=5)
    assert fresh.attempt == 2
    assert queue.extend([stale], lease_s=5).lost == {item.id}
    assert not queue.complete(stale, "from the dead worker")
    assert queue.complete(fresh, "from the live worker")
    assert queue.get(item.id, tenant_id=None).result == "from the live worker"
    assert [a.outcome for a in queue.attempts(item.id)] == ["lost", "succeeded"]
    # An item whose last attempt dies with its worker is dead-lettered, not retried forever.
    last = queue.enqueue("job", {}, max_attempts=1).item
    queue.claim(["job"], owner="crashed", lease_s=1)
    clock.advance(2)
    assert queue.reap() == 1
    assert queue.get(last.id, tenant_id=None).status == "dead"


def test_racing_claimers_never_share_an_item(engine: Engine) -> None:
    queue = WorkQueue(engine)
    ids = set(queue.enqueue_many("race", ({"i": i} for i in range(300)), chunk=64))
    assert len(ids) == 300
    taken: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            claims = queue.claim(["race"], owner=name, lease_s=60, limit=7)
            if not claims:
                return
            for claim in claims:
                assert queue.complete(claim, name)
            with lock:
                taken.extend(c.id for c in claims)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(ids)  # each once
    assert queue.counts(kind="race")["succeeded"] == 300


def test_priority_then_due_time_order(engine: Engine) -> None:
    queue = WorkQueue(engine)
    low = queue.enqueue("p", "low").item
    high = queue.enqueue("p", "high", priority=5).item
    claims = queue.claim(["p"], owner="w", lease_s=30, limit=2)
    assert [c.id for c in claims] == [high.id, low.id]


def test_purge_removes_old_finished_items_only(engine: Engine) -> None:
    clock = Clock()
    queue = WorkQueue(engine, clock=clock)
    old = queue.enqueue("p", {}).item
    [claim] = queue.claim(["p"], owner="w", lease_s=30)
    queue.complete(claim)
    waiting = queue.enqueue("p", {}).item
    clock.advance(86_400 * 3)
    assert queue.purge(finished_before=clock() - timedelta(days=2)) == 1
    with pytest.raises(NotFound):
        queue.get(old.id, tenant_id=None)
    assert queue.attempts(old.id) == []
    assert queue.get(waiting.id, tenant_id=None).status == "queued"


def test_worker_runs_kinds_with_bounded_concurrency_retries_and_dead_letters(
        engine: Engine) -> None:
    queue = WorkQueue(engine)
    seen: dict[str, int] = {}
    active = {"now": 0, "max": 0}
    finished: list[tuple[str, str]] = []

    async def slow(item: WorkItem, attempt: Attempt) -> dict[str, Any]:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        try:
            await asyncio.sleep(0.05)
        finally:
            active["now"] -= 1
        attempt.detail["latency_ms"] = 50
        return {"doubled": item.payload["n"] * 2}

    async def flaky(item: WorkItem, attempt: Attempt) -> str:
        seen[item.id] = attempt.number
        mode = item.payload["mode"]
        if mode == "retry" and attempt.number < 3:
            raise Retry(f"not yet ({attempt.number})", delay_s=0.01)
        if mode == "permanent":
            raise Permanent("the receiver refused it")
        if mode == "crash":
            raise ValueError("a bug in the handler")
        if mode == "slow":
            await asyncio.sleep(5)
        return "ok"

    for n in range(12):
        queue.enqueue("slow", {"n": n})
    ids = {mode: queue.enqueue("flaky", {"mode": mode}, max_attempts=3, timeout_s=(
        0.2 if mode == "slow" else None)).item.id
        for mode in ("retry", "permanent", "crash", "slow")}

    async def run() -> int:
        worker = Worker(queue, lease_s=5, poll_interval_s=0.05)
        worker.handle("slow", slow, concurrency=3)
        worker.handle("flaky", flaky, concurrency=2, backoff=Backoff(base_s=0.01, max_s=0.02),
                      on_finish=lambda item, status, error: finished.append((item.id, status)))
        return await worker.run_until_idle(timeout_s=30)

    ran = asyncio.run(run())
    assert ran >= 12 + 3 + 1 + 3 + 3
    assert active["max"] == 3  # the bound holds, and it is used
    assert queue.counts(kind="slow")["succeeded"] == 12
    done = queue.list_items(tenant_id="default", kind="slow", limit=1)[0]
    assert done.result == {"doubled": done.payload["n"] * 2}
    assert queue.attempts(done.id)[0].detail == {"latency_ms": 50}
    statuses = {mode: queue.get(i, tenant_id=None) for mode, i in ids.items()}
    assert statuses["retry"].status == "succeeded" and statuses["retry"].attempts == 3
    assert statuses["permanent"].status == "dead" and statuses["permanent"].attempts == 1
    assert statuses["permanent"].last_error == "the receiver refused it"
    assert statuses["crash"].status == "dead" and statuses["crash"].attempts == 3
    assert statuses["crash"].last_error == "ValueError: a bug in the handler"
    assert statuses["slow"].status == "dead"
    assert "timed out after 0.2s" in (statuses["slow"].last_error or "")
    assert (ids["permanent"], "dead") in finished and (ids["retry"], "queued") in finished
    assert (ids["retry"], "succeeded") in finished


def test_worker_cancels_running_items_and_releases_on_stop(engine: Engine) -> None:
    queue = WorkQueue(engine)
    started = {"n": 0}

    async def forever(item: WorkItem, attempt: Attempt) -> None:
        started["n"] += 1
        await asyncio.sleep(60)

    cancel_me = queue.enqueue("long", {}).item
    keep = queue.enqueue("long", {}).item

    async def run() -> None:
        worker = Worker(queue, lease_s=0.9, poll_interval_s=0.05)  # heartbeat every 0.3 s
        worker.handle("long", forever, concurrency=2)
        await worker.start()
        deadline = time.monotonic() + 10
        while started["n"] < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(queue.cancel, cancel_me.id, tenant_id=None)
        while (await asyncio.to_thread(queue.get, cancel_me.id, tenant_id=None)).status != (
                "cancelled") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # longer than the lease: the heartbeat keeps it
        assert (await asyncio.to_thread(queue.get, keep.id, tenant_id=None)).status == (
            "running")
        await worker.stop(grace_s=0.1)

    asyncio.run(run())
    assert queue.get(cancel_me.id, tenant_id=None).status == "cancelled"
    released = queue.get(keep.id, tenant_id=None)
    assert released.status == "queued" and released.attempts == 0  # not counted


def test_backoff_is_exponential_with_full_jitter() -> None:
    backoff = Backoff(base_s=2, max_s=100)
    assert [backoff.cap(n) for n in (1, 2, 3, 4, 7, 8)] == [2, 4, 8, 16, 100, 100]
    rng = random.Random(7)
    draws = [backoff.delay(3, rng) for _ in range(2000)]
    assert min(draws) >= 0 and max(draws) <= 8
    assert min(draws) < 0.5 and max(draws) > 7.5  # spread over the whole range
    assert 3.5 < sum(draws) / len(draws) < 4.5


def test_idempotency_keys(engine: Engine) -> None:
    clock = Clock()
    store = IdempotencyStore(engine, ttl_s=3600, lock_s=30, clock=clock)
    body = b'{"input": 1}'
    digest = request_fingerprint("POST", "/v1/services/s/invoke", body)
    scope = "POST /v1/services/s/invoke"
    first = store.begin(tenant_id="acme", scope=scope, key="k1", request_hash=digest)
    assert first.action == "proceed"
    assert store.begin(tenant_id="acme", scope=scope, key="k1",
                       request_hash=digest).action == "in_progress"
    other = request_fingerprint("POST", "/v1/services/s/invoke", b'{"input": 2}')
    with pytest.raises(Conflict, match="different request body") as caught:
        store.begin(tenant_id="acme", scope=scope, key="k1", request_hash=other)
    assert caught.value.status == 409 and caught.value.param == "Idempotency-Key"
    assert store.complete(tenant_id="acme", scope=scope, key="k1", status=200,
                          body=b'{"output": 2}', headers={"x-request-id": "r1"})
    replay = store.begin(tenant_id="acme", scope=scope, key="k1", request_hash=digest)
    assert replay.action == "replay" and replay.record.response_body == b'{"output": 2}'
    assert replay.record.response_status == 200
    assert replay.record.response_headers == {"x-request-id": "r1"}
    # Per tenant: the same key elsewhere is new.
    assert store.begin(tenant_id="globex", scope=scope, key="k1",
                       request_hash=other).action == "proceed"
    # A first request that died: after its lock, a retry takes the key over.
    store.begin(tenant_id="acme", scope=scope, key="k2", request_hash=digest)
    clock.advance(31)
    assert store.begin(tenant_id="acme", scope=scope, key="k2",
                       request_hash=digest).action == "proceed"
    # abandon: a failed request is forgotten, so the retry runs.
    store.abandon(tenant_id="acme", scope=scope, key="k2")
    assert store.get(tenant_id="acme", scope=scope, key="k2") is None
    # Jobs: the key maps to the job for the whole window.
    job = store.begin(tenant_id="acme", scope="POST /v1/jobs", key="k3", request_hash=digest,
                      job_id="job_1")
    assert job.action == "proceed"
    again = store.begin(tenant_id="acme", scope="POST /v1/jobs", key="k3",
                        request_hash=digest, job_id="job_2")
    assert again.action == "replay" and again.record.job_id == "job_1"
    # Expiry: past the retention window the key is new again, and purge deletes it.
    clock.advance(3600)
    assert store.get(tenant_id="acme", scope=scope, key="k1") is None
    assert store.begin(tenant_id="acme", scope=scope, key="k1",
                       request_hash=other).action == "proceed"
    assert store.purge() >= 2  # k3 and globex's k1
    with pytest.raises(InvalidRequest, match="Idempotency-Key"):
        store.begin(tenant_id="acme", scope=scope, key="has space", request_hash=digest)


def test_a_kind_registered_after_start_is_served(engine: Engine) -> None:
    queue = WorkQueue(engine)

    async def late(item: WorkItem, attempt: Attempt) -> str:
        return "served"

    async def run() -> None:
        worker = Worker(queue, lease_s=5, poll_interval_s=0.05)
        await worker.start()
        try:
            worker.handle("late", late)
            item = (await asyncio.to_thread(queue.enqueue, "late", {})).item
            worker.wake("late")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (await asyncio.to_thread(
                    queue.get, item.id, tenant_id=None)).status != "succeeded":
                await asyncio.sleep(0.05)
            assert (await asyncio.to_thread(queue.get, item.id, tenant_id=None)).result == (
                "served")
            with pytest.raises(ValueError, match="already has a handler"):
                worker.handle("late", late)
        finally:
            await worker.stop()

    asyncio.run(run())


def test_lists_by_key_prefix_and_counts_kinds_per_tenant(engine: Engine) -> None:
    """What the dashboard's job pages read: a job's webhook deliveries (by the prefix of
    their idempotency keys, `%` and `_` taken literally) and each lane's counts per tenant."""
    queue = WorkQueue(engine)
    run = f"{random.getrandbits(40):x}"
    kind = f"lane{run}:"
    mine = queue.enqueue("hook" + run, {}, tenant_id="acme",
                         idempotency_key=f"job_{run}%:job.completed:a").item
    queue.enqueue("hook" + run, {}, tenant_id="acme", idempotency_key=f"job_{run}x:other")
    queue.enqueue("hook" + run, {}, tenant_id="globex",
                  idempotency_key=f"job_{run}%:job.completed:a")
    found = queue.list_items(tenant_id="acme", kind="hook" + run, key_prefix=f"job_{run}%:")
    assert [i.id for i in found] == [mine.id]
    for tenant, n in (("acme", 2), ("globex", 1)):
        for _ in range(n):
            queue.enqueue(kind + "a", {}, tenant_id=tenant)
    assert queue.counts_by_kind(kind, tenant_id="acme") == {(kind + "a", "queued"): 2}
    assert queue.counts_by_kind(kind) == {(kind + "a", "queued"): 3}
