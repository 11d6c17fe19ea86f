"""The one delivery path for outbound webhooks: a durable outbox on the work queue.

`send` writes the delivery to the store (kind `webhook`) and returns; a `Worker` that the
outbox is attached to POSTs it, signed per Standard Webhooks, and retries failures with
exponential backoff and full jitter across restarts until the endpoint's `max_attempts` are
spent, then dead-letters it with the last error. Operators list deliveries, read their
attempt log (status code, latency, error) and redeliver from the CLI, the admin API or the
dashboard.

Endpoints are named and resolved from the config when a delivery is attempted, so URLs and
secrets never enter the store and a rotated secret applies to pending retries:

- `alerts.channels.NAME` (webhook and Slack channels),
- `models.ALIAS.escalation` / `services.NAME.escalation` (escalation webhooks),
- `webhooks.endpoints.NAME` (receivers that subscribe to event types; see `publish`).

Nothing about a delivery reaches the log but its id, endpoint name, event type, attempt,
status code or exception type: never the URL (it may hold a token), the secret or the body.

>>> outbox = WebhookOutbox(WorkQueue(engine), [Endpoint("crm", "https://crm.example/hook",
...                        secret=generate_secret())])  # doctest: +SKIP
>>> outbox.send("crm", "job.completed", {"job": {"id": "job_1"}})  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import orjson

from shipyard._version import __version__
from shipyard.config.schema import Config
from shipyard.errors import ConfigError, NotFound
from shipyard.webhooks.signing import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    secret_bytes,
    signature_header,
)
from shipyard.work import (
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
    "KIND",
    "LEGACY_REMOVAL",
    "Delivery",
    "Endpoint",
    "WebhookOutbox",
    "delivery_headers",
    "endpoints_from_config",
]

log = logging.getLogger("shipyard.webhooks")
KIND = "webhook"
# The deprecated `x-shipyard-signature` / `x-shipyard-timestamp` headers go in this version.
LEGACY_REMOVAL = "0.3.0"
LEGACY_SIGNATURE_HEADER = "x-shipyard-signature"
LEGACY_TIMESTAMP_HEADER = "x-shipyard-timestamp"
_RESPONSE_READ_MAX = 4096
_RETRYABLE_4XX = frozenset({408, 425, 429})

Legacy = Literal["none", "body", "timestamp"]
# (endpoint name, event type, outcome): outcome is delivered | retry | dead | cancelled
ResultHook = Callable[[str, str, str], None]
# (delivery, final status "succeeded" | "dead" | "cancelled"): runs in a worker thread
FinishHook = Callable[["Delivery", str], None]


@dataclass(frozen=True)
class Endpoint:
    """Where deliveries go and how they are signed and retried."""

    name: str
    url: str
    secret: str | None = None
    events: tuple[str, ...] = ("*",)
    tenant: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 15.0
    max_attempts: int = 8
    backoff: Backoff = field(default_factory=lambda: Backoff(2.0, 3600.0))
    # Deprecated extra header, until LEGACY_REMOVAL: "body" = alert channels' HMAC of the
    # body, "timestamp" = escalation webhooks' HMAC of "{timestamp}.{body}".
    legacy: Legacy = "none"

    def wants(self, event_type: str, tenant_id: str) -> bool:
        """True when this endpoint subscribes to `event_type` of `tenant_id`."""
        if self.tenant is not None and self.tenant != tenant_id:
            return False
        return any(p == "*" or p == event_type or (p.endswith(".*") and event_type.startswith(
            p[:-1])) for p in self.events)

    def where(self) -> str:
        """The endpoint's host, for messages (never its path or query, which may hold a
        token)."""
        rest = self.url.split("://", 1)[-1]
        return rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Delivery:
    """A delivery as the delivery log shows it (never the URL or the secret)."""

    id: str
    tenant_id: str
    endpoint: str
    event_type: str
    status: str
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    last_status_code: int | None
    last_latency_ms: float | None
    meta: dict[str, Any]
    body: str | None = None

    @classmethod
    def of(cls, item: WorkItem, last: AttemptLog | None = None, *,
           body: bool = False) -> Delivery:
        payload = item.payload if isinstance(item.payload, dict) else {}
        detail = last.detail if last is not None else {}
        return cls(
            id=item.id, tenant_id=item.tenant_id, endpoint=str(payload.get("endpoint", "")),
            event_type=str(payload.get("type", "")), status=item.status,
            attempts=item.attempts, max_attempts=item.max_attempts,
            created_at=item.created_at, updated_at=item.updated_at,
            next_attempt_at=item.run_after if item.status == "queued" else None,
            finished_at=item.finished_at, last_error=item.last_error,
            last_status_code=detail.get("status_code"),
            last_latency_ms=detail.get("latency_ms"), meta=dict(payload.get("meta") or {}),
            body=str(payload.get("body", "")) if body else None)

    def public(self) -> dict[str, Any]:
        out = {"id": self.id, "object": "webhook.delivery", "tenant": self.tenant_id,
               "endpoint": self.endpoint, "event_type": self.event_type,
               "status": self.status, "attempts": self.attempts,
               "max_attempts": self.max_attempts, "created_at": _iso(self.created_at),
               "updated_at": _iso(self.updated_at),
               "next_attempt_at": _iso(self.next_attempt_at),
               "finished_at": _iso(self.finished_at), "last_error": self.last_error,
               "last_status_code": self.last_status_code,
               "last_latency_ms": self.last_latency_ms}
        if self.body is not None:
            out["body"] = self.body
        return out


def endpoints_from_config(config: Config) -> dict[str, Endpoint]:
    """Every webhook endpoint the config names (see the module docstring for the names)."""
    hooks = config.webhooks
    default_backoff = Backoff(hooks.backoff_base_s, hooks.backoff_max_s)
    out: dict[str, Endpoint] = {}
    for channel in config.alerts.channels:
        if channel.kind not in ("webhook", "slack") or channel.url is None:
            continue
        secret = channel.secret.get_secret_value() if channel.secret else None
        out[f"alerts.channels.{channel.name}"] = Endpoint(
            f"alerts.channels.{channel.name}", channel.url.get_secret_value(), secret=secret,
            headers={k: v.get_secret_value() for k, v in channel.headers.items()},
            timeout_s=channel.timeout_s, max_attempts=channel.attempts,
            backoff=Backoff(channel.backoff_s, hooks.backoff_max_s),
            legacy="body" if channel.kind == "webhook" else "none")
    targets = [("models", name, m.escalation) for name, m in config.models.items()]
    targets += [("services", name, s.escalation) for name, s in config.services.items()]
    for section, name, escalation in targets:
        if escalation.webhook_url is None:
            continue
        key = f"{section}.{name}.escalation"
        out[key] = Endpoint(
            key, escalation.webhook_url,
            secret=escalation.webhook_secret.get_secret_value()
            if escalation.webhook_secret else None,
            timeout_s=escalation.webhook_timeout_s,
            max_attempts=escalation.webhook_retries + 1,
            backoff=Backoff(0.5, hooks.backoff_max_s), legacy="timestamp")
    for name, ep in hooks.endpoints.items():
        key = f"webhooks.endpoints.{name}"
        out[key] = Endpoint(
            key, ep.url.get_secret_value(),
            secret=ep.secret.get_secret_value() if ep.secret else None,
            events=tuple(ep.events), tenant=ep.tenant,
            headers={k: v.get_secret_value() for k, v in ep.headers.items()},
            timeout_s=ep.timeout_s or hooks.timeout_s,
            max_attempts=ep.max_attempts or hooks.max_attempts, backoff=default_backoff)
    for built in out.values():
        try:
            if built.secret:
                secret_bytes(built.secret)
        except ValueError as exc:
            raise ConfigError(f"The signing secret of webhook endpoint '{built.name}' is not "
                              f"usable: {exc}.") from None
    return out


class WebhookOutbox:
    """Queue, deliver and redeliver webhooks (one per gateway process; many may share a
    store). `send`/`publish`/`redeliver` block on the store: call them from a thread in
    async code (`asend` does)."""

    def __init__(self, queue: WorkQueue, endpoints: Iterable[Endpoint] = (), *,
                 legacy_signature: bool = True, concurrency: int = 8,
                 on_result: ResultHook | None = None) -> None:
        self.queue = queue
        self.endpoints: dict[str, Endpoint] = {e.name: e for e in endpoints}
        self.legacy_signature = legacy_signature
        self.concurrency = concurrency
        self.on_result = on_result
        self._listeners: list[FinishHook] = []
        self._worker: Worker | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, config: Config, queue: WorkQueue, *,
                    on_result: ResultHook | None = None) -> WebhookOutbox:
        return cls(queue, endpoints_from_config(config).values(),
                   legacy_signature=config.webhooks.legacy_signature,
                   concurrency=config.webhooks.concurrency, on_result=on_result)

    # -- queueing -------------------------------------------------------------------------
    def send(self, endpoint: str, event_type: str, data: Mapping[str, Any] | None = None, *,
             raw_body: bytes | None = None, tenant_id: str = "default",
             idempotency_key: str | None = None, headers: Mapping[str, str] | None = None,
             meta: Mapping[str, Any] | None = None) -> WorkItem:
        """Queue one delivery to `endpoint` (durable when this returns).

        The body is `{"type": event_type, "timestamp": <now>, **data}` (Standard Webhooks'
        shape with the data at the top level), or `raw_body` as given (a Slack message).
        With `idempotency_key`, the same key (per tenant) never queues a second delivery.
        `meta` is kept with the delivery for `on_finish` listeners; `headers` are sent too.
        """
        ep = self.endpoints.get(endpoint)
        if ep is None:
            raise NotFound(f"There is no webhook endpoint '{endpoint}'; known: "
                           f"{', '.join(sorted(self.endpoints)) or 'none configured'}.",
                           param="endpoint")
        if raw_body is not None:
            body = raw_body.decode()
        else:
            body = orjson.dumps({"type": event_type, "timestamp": datetime.now(UTC),
                                 **(data or {})}, option=orjson.OPT_UTC_Z).decode()
        payload = {"endpoint": endpoint, "type": event_type, "body": body,
                   "headers": dict(headers or {}), "meta": dict(meta or {})}
        enqueued = self.queue.enqueue(
            KIND, payload, tenant_id=tenant_id, idempotency_key=idempotency_key,
            max_attempts=ep.max_attempts, ref=endpoint, timeout_s=ep.timeout_s + 5,
            item_id=new_item_id("msg"))
        if self._worker is not None and enqueued.created:
            self._worker.wake(KIND)
        return enqueued.item

    async def asend(self, endpoint: str, event_type: str,
                    data: Mapping[str, Any] | None = None, **options: Any) -> WorkItem:
        """`send` from async code (the store write runs in a thread)."""
        return await asyncio.to_thread(self.send, endpoint, event_type, data, **options)

    def publish(self, event_type: str, data: Mapping[str, Any], *, tenant_id: str = "default",
                idempotency_key: str | None = None) -> list[WorkItem]:
        """Queue `event_type` for every `webhooks.endpoints` entry subscribed to it (jobs,
        rollouts, ...); returns the deliveries queued."""
        out = []
        for ep in self.endpoints.values():
            if ep.name.startswith("webhooks.endpoints.") and ep.wants(event_type, tenant_id):
                key = None if idempotency_key is None else f"{idempotency_key}:{ep.name}"
                out.append(self.send(ep.name, event_type, data, tenant_id=tenant_id,
                                     idempotency_key=key))
        return out

    def redeliver(self, delivery_id: str, *, tenant_id: str | None) -> WorkItem:
        """Queue a finished delivery again (same `webhook-id`, fresh attempts)."""
        item = self.queue.get(delivery_id, tenant_id=tenant_id)
        if item.kind != KIND:
            raise NotFound(f"There is no webhook delivery '{delivery_id}'.", param="id")
        again = self.queue.requeue(delivery_id, tenant_id=tenant_id)
        if self._worker is not None:
            self._worker.wake(KIND)
        return again

    # -- the delivery log -------------------------------------------------------------------
    def deliveries(self, *, tenant_id: str | None, status: str | None = None,
                   endpoint: str | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries newest first, each with its last attempt's code and latency."""
        items = self.queue.list_items(tenant_id=tenant_id, kind=KIND, status=status,
                                      ref=endpoint, limit=limit)
        last = self.queue.last_attempts([i.id for i in items])
        return [Delivery.of(i, last.get(i.id)) for i in items]

    def delivery(self, delivery_id: str, *,
                 tenant_id: str | None) -> tuple[Delivery, list[AttemptLog]]:
        """One delivery (with its body) and its attempt log."""
        item = self.queue.get(delivery_id, tenant_id=tenant_id)
        if item.kind != KIND:
            raise NotFound(f"There is no webhook delivery '{delivery_id}' in this tenant.",
                           param="id")
        attempts = self.queue.attempts(delivery_id)
        return Delivery.of(item, attempts[-1] if attempts else None, body=True), attempts

    # -- delivering -------------------------------------------------------------------------
    def listen(self, hook: FinishHook) -> None:
        """Call `hook(delivery, status)` when a delivery succeeds, is dead-lettered or
        cancelled (in whichever process delivered it)."""
        self._listeners.append(hook)

    def attach(self, worker: Worker) -> None:
        """Deliver this outbox's items from `worker` (register before `worker.start()`)."""
        worker.handle(KIND, self.deliver, concurrency=self.concurrency,
                      on_finish=self._finished)
        self._worker = worker

    def _finished(self, item: WorkItem, status: str, error: str | None) -> None:
        payload = item.payload if isinstance(item.payload, dict) else {}
        endpoint, event_type = str(payload.get("endpoint", "")), str(payload.get("type", ""))
        if self.on_result is not None:
            self.on_result(endpoint, event_type, {"succeeded": "delivered"}.get(status, (
                "retry" if status == "queued" else status)))
        if status == "queued":
            return
        if status == "dead":
            log.warning("webhook %s (%s to %s) dead-lettered after %d attempts: %s", item.id,
                        event_type, endpoint, item.attempts, error)
        delivery = Delivery.of(item)
        for hook in self._listeners:
            hook(delivery, status)

    def headers(self, ep: Endpoint, msg_id: str, body: bytes, *,
                timestamp: int | None = None,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The request headers of one attempt (see `delivery_headers`)."""
        return delivery_headers(ep, msg_id, body, timestamp=timestamp, extra=extra,
                                legacy_signature=self.legacy_signature)

    async def post(self, ep: Endpoint, msg_id: str, body: bytes, *,
                   extra_headers: Mapping[str, str] | None = None) -> tuple[int, float,
                                                                            str | None]:
        """POST once; returns (status code, latency ms, Retry-After header). Raises
        aiohttp/timeout errors when the receiver cannot be reached."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = self.headers(ep, msg_id, body, extra=extra_headers)
        started = time.perf_counter()
        async with self._session.post(
                ep.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as response:
            await response.content.read(_RESPONSE_READ_MAX)  # never stored: may hold PII
            latency = (time.perf_counter() - started) * 1000
            return response.status, round(latency, 2), response.headers.get("retry-after")

    async def deliver(self, item: WorkItem, attempt: Attempt) -> dict[str, Any]:
        """The worker's handler: one attempt at one delivery."""
        payload = item.payload if isinstance(item.payload, dict) else {}
        name = str(payload.get("endpoint", ""))
        ep = self.endpoints.get(name)
        if ep is None:
            raise Permanent(f"The endpoint '{name}' is no longer configured; add it back and "
                            "redeliver, or leave this delivery dead.")
        body = str(payload.get("body", "")).encode()
        try:
            status, latency, retry_after = await self.post(
                ep, item.id, body, extra_headers=payload.get("headers") or {})
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The exception's text can repeat the URL: keep only its type.
            problem = (f"The attempt timed out after {ep.timeout_s:g}s"
                       if isinstance(exc, TimeoutError)
                       else f"Could not reach {ep.where()} ({type(exc).__name__})")
            attempt.detail["error_type"] = type(exc).__name__
            raise Retry(problem + ".", delay_s=ep.backoff.delay(
                attempt.number)) from None
        attempt.detail.update(status_code=status, latency_ms=latency)
        if 200 <= status < 300:
            return {"status_code": status, "latency_ms": latency}
        if status == 410:
            raise Permanent("HTTP 410 Gone: the receiver no longer wants these deliveries.")
        if 300 <= status < 400:
            raise Permanent(f"HTTP {status}: the receiver redirected; webhooks do not follow "
                            "redirects, so update the endpoint URL.")
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            raise Permanent(f"HTTP {status}: the receiver refused the delivery; fix the "
                            "receiver (or its secret) and redeliver.")
        delay = _retry_after(retry_after, ep.backoff.max_s)
        raise Retry(f"HTTP {status} from the receiver.",
                    delay_s=delay if delay is not None else ep.backoff.delay(attempt.number))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def delivery_headers(ep: Endpoint, msg_id: str, body: bytes, *, timestamp: int | None = None,
                     extra: Mapping[str, str] | None = None,
                     legacy_signature: bool = True) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks' id, timestamp and signature (when the
    endpoint has a secret) and, until `LEGACY_REMOVAL`, the deprecated legacy signature."""
    now = int(time.time()) if timestamp is None else timestamp
    headers = {"content-type": "application/json",
               "user-agent": f"shipyard-webhooks/{__version__}", **ep.headers,
               **(extra or {}), ID_HEADER: msg_id, TIMESTAMP_HEADER: str(now)}
    if ep.secret:
        headers[SIGNATURE_HEADER] = signature_header([ep.secret], msg_id, now, body)
        if legacy_signature and ep.legacy != "none":
            key = ep.secret.encode()  # the legacy schemes keyed HMAC with the raw text
            signed = body if ep.legacy == "body" else f"{now}.".encode() + body
            headers[LEGACY_SIGNATURE_HEADER] = "sha256=" + hmac.new(
                key, signed, hashlib.sha256).hexdigest()
            if ep.legacy == "timestamp":
                headers[LEGACY_TIMESTAMP_HEADER] = str(now)
    return headers


def _retry_after(value: str | None, cap_s: float) -> float | None:
    """Seconds from a `Retry-After` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(cap_s, seconds))

