"""Per-request state, filled in by each stage and turned into one trace at the end."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shipyard.observe.tracing import SpanTuple, new_span_id

__all__ = ["Invocation", "RequestContext", "invocation"]


@dataclass(frozen=True, slots=True)
class Invocation:
    """What code running inside a hosted service knows of the request that called it: the
    W3C `traceparent` naming the service's span (calls it makes to the gateway become child
    traces), the request id and tenant, and how to reach the gateway (`shipyard.client()`)."""

    traceparent: str
    request_id: str
    tenant_id: str
    base_url: str | None = None
    api_key: str | None = None


# Set by a service's terminal step while its function runs (threads see it too: the thread
# pool copies the context).
invocation: ContextVar[Invocation | None] = ContextVar("shipyard_invocation", default=None)


class RequestContext:
    """Everything known about one request; cheap to create (slots, no validation)."""

    __slots__ = (
        "attributes",
        "budget",
        "capture",
        "completion_tokens",
        "cost_usd",
        "current_span",
        "error_message",
        "error_type",
        "finish_reason",
        "key_id",
        "model_alias",
        "otel_trace_id",
        "parent_span_id",
        "prompt_tokens",
        "provider",
        "queue_ms",
        "rate_limit",
        "request_body",
        "request_bytes",
        "request_id",
        "request_payload",
        "response_body",
        "response_bytes",
        "response_payload",
        "root_span",
        "route",
        "sampled",
        "service",
        "shed_by",
        "spans",
        "started_at",
        "status",
        "stream",
        "t0",
        "tenant_id",
        "tokens_estimated",
        "total_tokens",
        "trace_id",
        "ttft_ms",
        "upstream_model",
        "upstream_ms",
        "version",
    )

    def __init__(self, request_id: str, route: str, trace_id: str, *,
                 parent: tuple[str, str, str] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.started_at = datetime.now(UTC)
        self.trace_id = trace_id  # this request's record id (unique)
        # The W3C trace: the caller's (from `traceparent`) or a new one named by trace_id.
        self.otel_trace_id = trace_id
        self.parent_span_id: str | None = None
        self.sampled = True  # OTLP export (the caller's sampled flag, when it sent one)
        if parent is not None:
            self.otel_trace_id, self.parent_span_id, flags = parent
            self.sampled = flags[-1] in "13579bdf"
        self.root_span = new_span_id()
        self.current_span = self.root_span
        self.spans: list[SpanTuple] = []
        self.shed_by: str | None = None
        self.request_id = request_id
        self.route = route
        self.tenant_id = "default"
        self.key_id: str | None = None
        self.service: str | None = None
        self.model_alias: str | None = None
        self.provider: str | None = None
        self.upstream_model: str | None = None
        self.version: str | None = None  # the target version that answered
        self.stream = False
        self.status = 0
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.queue_ms: float | None = None
        self.upstream_ms: float | None = None
        self.ttft_ms: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.total_tokens: int | None = None
        self.tokens_estimated = False
        self.finish_reason: str | None = None
        self.capture = "metadata"
        self.request_bytes: int | None = None
        self.response_bytes: int | None = None
        # What the trace keeps of the payloads (`capture: full`): the objects as they were
        # last cleaned (serialised, truncated and encrypted when the trace is recorded), or
        # the streamed answer's text in `response_body`.
        self.request_payload: Any = None
        self.response_payload: Any = None
        self.request_body: str | None = None
        self.response_body: str | None = None
        self.attributes: dict[str, Any] | None = None
        self.cost_usd: float | None = None
        self.rate_limit: Any = None  # token buckets to settle once usage is known
        self.budget: Any = None  # the budget reservation to settle with the real cost

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def overhead_ms(self) -> float:
        """Time spent in Shipyard so far, excluding the time waiting on the upstream."""
        return max(0.0, self.elapsed_ms() - (self.upstream_ms or 0.0))

    def set_usage(self, usage: Any, *, estimated: bool = False) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        self.prompt_tokens = prompt if isinstance(prompt, int) else None
        self.completion_tokens = completion if isinstance(completion, int) else None
        if not isinstance(total, int):
            total = (self.prompt_tokens or 0) + (self.completion_tokens or 0)
        self.total_tokens = total
        self.tokens_estimated = estimated or bool(usage.get("estimated"))

    def to_record(self) -> dict[str, Any]:
        total_ms = self.elapsed_ms()
        return {
            "id": self.trace_id,
            "trace_id": self.otel_trace_id,
            "request_id": self.request_id,
            "started_at": self.started_at,
            "ended_at": self.started_at + timedelta(milliseconds=total_ms),
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "route": self.route,
            "service": self.service,
            "model_alias": self.model_alias,
            "provider": self.provider,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "status": self.status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "queue_ms": self.queue_ms,
            "upstream_ms": self.upstream_ms,
            "ttft_ms": self.ttft_ms,
            "overhead_ms": max(0.0, total_ms - (self.upstream_ms or 0.0)),
            "total_ms": total_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "tokens_estimated": self.tokens_estimated,
            "finish_reason": self.finish_reason,
            "capture": self.capture,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "attributes": orjson.dumps(self.attributes).decode() if self.attributes else None,
            "request_body": self.request_body,
            "response_body": self.response_body,
            "cost_usd": self.cost_usd,
            "version": self.version or (self.upstream_model if self.model_alias else None),
            "outcome": None,  # filled by the recorder (shipyard.gateway.recorder.outcome_of)
        }
