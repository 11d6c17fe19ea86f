"""Durable work: one store-backed queue for everything that must happen even if a process
dies — webhook deliveries today; jobs, batch lines and connector offsets next.

Items are claimed with leases, retried with exponential backoff and full jitter,
dead-lettered with their last error after `max_attempts`, cancelled or requeued by an
operator, and taken back from a worker that crashed (its lease expires). Idempotency keys
make a client's retries safe. See docs/integration.md.

```
WorkQueue            the queue over the store (enqueue, claim, extend, complete, fail,
                     release, cancel, requeue, reap, list, counts, purge)
Worker               claim loops per kind with bounded concurrency, lease heartbeat, reaper
Backoff              exponential backoff with full jitter
Retry / Permanent    what a handler raises to retry later or dead-letter now
IdempotencyStore     Idempotency-Key -> request fingerprint and the first result (or job)
```
"""

from __future__ import annotations

from shipyard.work.idempotency import (
    Decision,
    IdempotencyRecord,
    IdempotencyStore,
    check_key,
    request_fingerprint,
)
from shipyard.work.queue import (
    FINISHED,
    STATUSES,
    AttemptLog,
    Claim,
    Enqueued,
    Heartbeat,
    WorkItem,
    WorkQueue,
    new_item_id,
)
from shipyard.work.worker import Attempt, Backoff, Handler, Permanent, Retry, Worker

__all__ = [
    "FINISHED",
    "STATUSES",
    "Attempt",
    "AttemptLog",
    "Backoff",
    "Claim",
    "Decision",
    "Enqueued",
    "Handler",
    "Heartbeat",
    "IdempotencyRecord",
    "IdempotencyStore",
    "Permanent",
    "Retry",
    "WorkItem",
    "WorkQueue",
    "Worker",
    "check_key",
    "new_item_id",
    "request_fingerprint",
]
