"""Durable jobs: any target (a model alias or a hosted service) invoked asynchronously.

A job is a work item (`shipyard.work`) of kind `job:model:ALIAS` or `job:service:NAME`, so
each target has its own lane with its own concurrency limit, and a job inherits everything
the queue does: it is in the store before its id is returned, claimed with a lease, retried
with backoff and jitter, dead-lettered with its last error, cancelled, requeued, and taken
back from a gateway that died (its lease expires; the next attempt runs it again — an
attempt that outlived its lease can never complete the job, so a job completes once).

What a job runs is given as `run`, a function of a `JobRequest` that sends the request
through the target's full chain (the gateway's `Invoker`: limits, budget, admission, PII,
guards, cache, traces and cost — exactly as a synchronous request) and returns the status
and body a client would have received.

>>> jobs = Jobs(WorkQueue(engine), JobsConfig())  # doctest: +SKIP
>>> job = jobs.create(principal, target_type="service", target="score",
...                   endpoint="invoke", body={"text": "hi"})  # doctest: +SKIP
>>> jobs.attach(worker, run=invoke, targets=[("service", "score")])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shipyard.config.jobs import JobsConfig
from shipyard.errors import InvalidRequest, NotFound
from shipyard.security.principal import Principal
from shipyard.webhooks.delivery import KIND as WEBHOOK_KIND
from shipyard.webhooks.delivery import WebhookOutbox
from shipyard.work import (
    STATUSES,
    Attempt,
    AttemptLog,
    Backoff,
    Permanent,
    Retry,
    Worker,
    WorkItem,
    WorkQueue,
    new_item_id,
)

__all__ = [
    "EVENTS",
    "KIND_PREFIX",
    "RETRYABLE",
    "Job",
    "JobRequest",
    "Jobs",
    "Outcome",
    "Run",
    "TargetType",
    "error_message",
    "principal_from_json",
    "principal_to_json",
    "public_endpoint",
    "retry_after_s",
]

log = logging.getLogger("shipyard.jobs")

KIND_PREFIX = "job:"
TargetType = Literal["model", "service"]
# Answers worth another attempt: the target was busy, overloaded or failed on its side.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
# The webhook event each final status publishes (endpoints subscribe with `job.*`).
EVENTS = {"succeeded": "job.completed", "dead": "job.failed", "cancelled": "job.cancelled"}
_METADATA_MAX = 16


def principal_to_json(principal: Principal) -> dict[str, Any]:
    """What a job keeps of its creator: tenant, key id, role and restrictions (no secret)."""
    return {"tenant_id": principal.tenant_id, "key_id": principal.key_id,
            "role": principal.role, "subject": principal.subject,
            "services": list(principal.services) if principal.services is not None else None,
            "models": list(principal.models) if principal.models is not None else None,
            "rpm": principal.rpm, "tpm": principal.tpm,
            "max_concurrent": principal.max_concurrent}


def principal_from_json(data: Mapping[str, Any]) -> Principal:
    services, models = data.get("services"), data.get("models")
    return Principal(tenant_id=str(data["tenant_id"]), key_id=data.get("key_id"),
                     role=str(data.get("role") or "client"), subject=data.get("subject"),
                     services=tuple(services) if services is not None else None,
                     models=tuple(models) if models is not None else None,
                     rpm=data.get("rpm"), tpm=data.get("tpm"),
                     max_concurrent=data.get("max_concurrent"))


def public_endpoint(endpoint: str, target_type: str, target: str) -> str:
    """The HTTP path a job's request stands for: `/v1/chat/completions`,
    `/v1/services/NAME/invoke`, ..."""
    return f"/v1/services/{target}/invoke" if target_type == "service" else f"/v1/{endpoint}"


def error_message(body: Any) -> str:
    """The message of an OpenAI-shaped error body (or a short repr of anything else)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or "")
    return str(body)[:500]


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRequest:
    """One request a job (or a batch line) sends through its target's chain."""

    principal: Principal
    endpoint: str  # chat/completions | completions | embeddings | invoke
    target: str  # the model alias or service name
    body: Any
    route: str = "job"
    timeout_s: float | None = None
    request_id: str | None = None


class Outcome(Protocol):
    """What running a request ended with (the gateway's `Invocation` is one)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    trace_id: str


Run = Callable[[JobRequest], Awaitable[Outcome]]


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


@dataclass(frozen=True)
class Job:
    """A job as the API shows it."""

    item: WorkItem
    last: AttemptLog | None = None

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def status(self) -> str:
        return self.item.status

    @property
    def target(self) -> str:
        return str(self.item.payload.get("target", ""))

    @property
    def target_type(self) -> str:
        return str(self.item.payload.get("target_type", ""))

    def public(self) -> dict[str, Any]:
        item, payload = self.item, self.item.payload
        result = item.result if isinstance(item.result, dict) else None
        error: dict[str, Any] | None = None
        if item.status in ("dead", "cancelled") or (item.status == "queued" and
                                                    item.last_error):
            detail = self.last.detail if self.last is not None else {}
            upstream: dict[str, Any] = (detail["error"] if isinstance(detail.get("error"), dict)
                                        else {})
            error = {"message": item.last_error or "", "status_code": detail.get("status_code"),
                     "type": upstream.get("type"), "code": upstream.get("code"),
                     "param": upstream.get("param")}
        return {
            "id": item.id, "object": "job", "status": item.status,
            "endpoint": public_endpoint(str(payload.get("endpoint")), self.target_type,
                                        self.target),
            "target": self.target, "target_type": self.target_type,
            "created_at": _ts(item.created_at), "started_at": _ts(item.started_at),
            "finished_at": _ts(item.finished_at),
            "next_attempt_at": _ts(item.run_after) if item.status == "queued" else None,
            "attempts": item.attempts, "max_attempts": item.max_attempts,
            "timeout_s": item.timeout_s, "cancel_requested": item.cancel_requested,
            "metadata": payload.get("metadata") or {},
            "result": result.get("body") if result else None,
            "status_code": result.get("status_code") if result else (
                error["status_code"] if error else None),
            "trace_id": (result or {}).get("trace_id") or (
                self.last.detail.get("trace_id") if self.last is not None else None),
            "error": error,
        }


@dataclass
class _Wiring:
    run: Run
    stopping: Callable[[], bool]
    worker: Worker
    lanes: set[str] = field(default_factory=set)


class Jobs:
    """Create, read, cancel and retry jobs, and run them from a `Worker` (see the module
    docstring). Store calls block: call them from a thread in async code."""

    def __init__(self, queue: WorkQueue, config: JobsConfig, *,
                 outbox: WebhookOutbox | None = None,
                 on_finish: Callable[[str, str], None] | None = None) -> None:
        self.queue = queue
        self.config = config
        self.outbox = outbox
        self.on_finish = on_finish  # (target, final status): metrics
        self._wiring: _Wiring | None = None

    @staticmethod
    def kind(target_type: str, target: str) -> str:
        return f"{KIND_PREFIX}{target_type}:{target}"

    # -- creating and reading ---------------------------------------------------------------
    def create(self, principal: Principal, *, target_type: TargetType, target: str,
               endpoint: str, body: Any, timeout_s: float | None = None,
               max_attempts: int | None = None, metadata: Mapping[str, Any] | None = None,
               job_id: str | None = None) -> Job:
        """Queue a job (durable when this returns). The caller has validated the request;
        its options may lower the target's timeout and attempts, never raise them."""
        settings = self.config.for_target(target)
        limit_s = float(settings.timeout_s or self.config.timeout_s)
        attempts_max = int(settings.max_attempts or self.config.max_attempts)
        if timeout_s is not None and not 0 < timeout_s <= limit_s:
            raise InvalidRequest(f"'timeout_s' is {timeout_s}; it must be above 0 and at most "
                                 f"{limit_s:g} (jobs.timeout_s for '{target}').",
                                 param="timeout_s")
        if max_attempts is not None and not 1 <= max_attempts <= attempts_max:
            raise InvalidRequest(f"'max_attempts' is {max_attempts}; it must be from 1 to "
                                 f"{attempts_max} (jobs.max_attempts for '{target}').",
                                 param="max_attempts")
        meta = check_metadata(metadata)
        payload = {"target_type": target_type, "target": target, "endpoint": endpoint,
                   "body": body, "principal": principal_to_json(principal), "metadata": meta}
        enqueued = self.queue.enqueue(
            self.kind(target_type, target), payload, tenant_id=principal.tenant_id,
            max_attempts=max_attempts or attempts_max, ref=target,
            timeout_s=timeout_s or limit_s, item_id=job_id or new_item_id("job"))
        if self._wiring is not None:
            self._ensure_lane(target_type, target)
            self._wiring.worker.wake(self.kind(target_type, target))
        return Job(enqueued.item)

    def get(self, job_id: str, *, tenant_id: str | None) -> Job:
        item = self.queue.get(job_id, tenant_id=tenant_id)
        if not item.kind.startswith(KIND_PREFIX):
            raise NotFound(f"There is no job '{job_id}' in this tenant; list them with GET "
                           "/v1/jobs.", param="job_id")
        attempts = self.queue.attempts(job_id)
        return Job(item, attempts[-1] if attempts else None)

    def list(self, *, tenant_id: str | None, status: str | None = None,
             target: str | None = None, limit: int = 20,
             after: str | None = None) -> tuple[list[Job], bool]:
        """Jobs newest first (`after`: the last id of the previous page); and whether there
        are more."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"Query parameter 'status' is {status!r}; use one of "
                                 f"{', '.join(STATUSES)}.", param="status")
        before = None
        if after is not None:
            cursor = self.get(after, tenant_id=tenant_id).item
            before = (cursor.created_at, cursor.id)
        items = self.queue.list_items(tenant_id=tenant_id, kind_prefix=KIND_PREFIX,
                                      status=status, ref=target, limit=limit + 1,
                                      before=before)
        more = len(items) > limit
        items = items[:limit]
        last = self.queue.last_attempts([i.id for i in items])
        return [Job(i, last.get(i.id)) for i in items], more

    def cancel(self, job_id: str, *, tenant_id: str | None) -> Job:
        """Cancel a queued job now, or stop a running one (within a third of the lease)."""
        self.get(job_id, tenant_id=tenant_id)
        item = self.queue.cancel(job_id, tenant_id=tenant_id)
        if item.status == "cancelled":  # it never ran: nobody else will announce it
            self._announce(item, "cancelled")
        return self.get(job_id, tenant_id=tenant_id)

    def retry(self, job_id: str, *, tenant_id: str | None) -> Job:
        """Run a dead, cancelled or succeeded job again with a fresh set of attempts."""
        job = self.get(job_id, tenant_id=tenant_id)
        self.queue.requeue(job_id, tenant_id=tenant_id)
        if self._wiring is not None:
            self._ensure_lane(job.target_type, job.target)
            self._wiring.worker.wake(job.item.kind)
        return self.get(job_id, tenant_id=tenant_id)

    def counts(self) -> dict[tuple[str, str], int]:
        """{(target, status): n} over every job in the store."""
        out: dict[tuple[str, str], int] = {}
        for (kind, status), n in self.queue.counts_by_kind(KIND_PREFIX).items():
            target = kind.split(":", 2)[-1]
            out[(target, status)] = out.get((target, status), 0) + n
        return out

    # -- running ----------------------------------------------------------------------------
    def attach(self, worker: Worker, *, run: Run, targets: Sequence[tuple[str, str]],
               stopping: Callable[[], bool] = lambda: False) -> None:
        """Run jobs of `targets` ((type, name) pairs) from `worker`, each target in its own
        lane of `jobs.targets.NAME.concurrency`; a job created later for a target without a
        lane gets one then. `stopping` tells a shutting-down gateway apart (its refusals
        are not the job's failures)."""
        self._wiring = _Wiring(run, stopping, worker)
        for target_type, name in targets:
            self._ensure_lane(target_type, name)

    def _ensure_lane(self, target_type: str, name: str) -> None:
        wiring = self._wiring
        kind = self.kind(target_type, name)
        if wiring is None or kind in wiring.lanes or kind in wiring.worker.kinds:
            return
        settings = self.config.for_target(name)
        wiring.worker.handle(kind, self.handle, concurrency=int(settings.concurrency or 1),
                             backoff=Backoff(self.config.backoff_base_s,
                                             self.config.backoff_max_s),
                             timeout_s=settings.timeout_s, on_finish=self._finished)
        wiring.lanes.add(kind)

    async def handle(self, item: WorkItem, attempt: Attempt) -> dict[str, Any]:
        """The worker's handler: one attempt of one job, through the target's chain."""
        if self._wiring is None:
            raise Retry("This process does not run jobs.")
        payload = item.payload
        try:
            principal = principal_from_json(payload["principal"])
        except (KeyError, TypeError) as exc:
            raise Permanent(f"The job's stored request is unreadable ({exc}).") from None
        request = JobRequest(principal, str(payload["endpoint"]), str(payload["target"]),
                             payload.get("body"), route="job", timeout_s=item.timeout_s,
                             request_id=f"{item.id}-{attempt.number}")
        outcome = await self._wiring.run(request)
        attempt.detail.update(status_code=outcome.status, trace_id=outcome.trace_id)
        if outcome.status < 400:
            return {"status_code": outcome.status, "body": outcome.body,
                    "trace_id": outcome.trace_id}
        if isinstance(outcome.body.get("error"), dict):
            attempt.detail["error"] = {k: outcome.body["error"].get(k)
                                       for k in ("type", "code", "param")}
        message = f"HTTP {outcome.status}: {error_message(outcome.body)}"
        if outcome.status == 503 and self._wiring.stopping():
            # This gateway is shutting down: not the job's failure. Wait to be released.
            await asyncio.Event().wait()
        if outcome.status in RETRYABLE:
            raise Retry(message, delay_s=_capped(retry_after_s(outcome.headers),
                                                 self.config.backoff_max_s))
        raise Permanent(message)

    def _finished(self, item: WorkItem, status: str, error: str | None) -> None:
        if status == "queued":
            return
        if self.on_finish is not None:
            self.on_finish(str(item.payload.get("target", "")), status)
        self._announce(item, status)

    def _announce(self, item: WorkItem, status: str) -> None:
        """Publish the job's final state to subscribed webhook endpoints (once per job and
        status: the delivery's idempotency key)."""
        event = EVENTS.get(status)
        if event is None or self.outbox is None or not self._subscribed(event):
            return
        job = self.get(item.id, tenant_id=None)
        self.outbox.publish(event, {"job": job.public()}, tenant_id=item.tenant_id,
                            idempotency_key=f"{item.id}:{status}")

    def _subscribed(self, event: str) -> bool:
        return self.outbox is not None and any(
            ep.name.startswith("webhooks.endpoints.") and ep.wants(event, ep.tenant or "")
            for ep in self.outbox.endpoints.values())

    def announce_recent(self, *, since: datetime, limit: int = 10_000) -> int:
        """Publish the final state of jobs that finished since `since` (deliveries already
        queued are not queued again): covers a crash between a job's completion and its
        webhook. Returns how many jobs were looked at."""
        if self.outbox is None or not any(self._subscribed(e) for e in EVENTS.values()):
            return 0
        assert self.outbox is not None  # checked above
        seen = 0
        for status, event in EVENTS.items():
            endpoints = [ep for ep in self.outbox.endpoints.values()
                         if ep.name.startswith("webhooks.endpoints.")]
            for item in self.queue.list_items(tenant_id=None, kind_prefix=KIND_PREFIX,
                                              status=status, limit=limit):
                if item.finished_at is None or item.finished_at < since:
                    continue
                seen += 1
                if all(self.queue.find(tenant_id=item.tenant_id, kind=WEBHOOK_KIND,
                                       idempotency_key=f"{item.id}:{status}:{ep.name}")
                       for ep in endpoints if ep.wants(event, item.tenant_id)):
                    continue  # announced already (the usual case): no second look
                self._announce(item, status)
        return seen


def _capped(value: float | None, cap: float) -> float | None:
    return None if value is None else min(value, cap)


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 and values up to 512
    characters, both strings."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequest("'metadata' must be an object of string keys and values.",
                             param="metadata")
    if len(metadata) > _METADATA_MAX:
        raise InvalidRequest(f"'metadata' has {len(metadata)} keys; at most {_METADATA_MAX} "
                             "are allowed.", param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(key) > 64 or \
                len(value) > 512:
            raise InvalidRequest(f"'metadata.{str(key)[:64]}' must be a string key of at most "
                                 "64 characters with a string value of at most 512.",
                                 param="metadata")
    return dict(metadata)
