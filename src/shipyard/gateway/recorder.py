"""Recording: the begin and finish of every request, off the hot path.

`begin` gives a request its context (trace id, request id, the caller's W3C trace);
`finish` counts it in metrics, settles token limits and cost, serialises what the trace
keeps (`capture: full` payloads, as the stages last cleaned them), and hands one record to
the trace writer — never raising, never blocking. Spans become store rows in the writer's
thread and OpenTelemetry spans after the response.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request

from shipyard.config.schema import Config
from shipyard.config.traces import default_spool_dir
from shipyard.observe.metrics import Metrics
from shipyard.observe.tracing import parse_traceparent, record_span, sampled
from shipyard.pipeline import RequestContext
from shipyard.security.budgets import BudgetGuard
from shipyard.security.crypto import PayloadCipher, redact_encrypted
from shipyard.security.limits_stage import settle_tokens
from shipyard.security.pricing import PriceTable
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.store.journal import Journal
from shipyard.store.spool import Spool
from shipyard.store.writer import TraceWriter

__all__ = ["QUEUE_MS", "Recorder", "outcome_of"]

log = logging.getLogger("shipyard.gateway")
QUEUE_MS = "shipyard_queue_ms"  # request.state key: ms waited for a global admission slot
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def outcome_of(ctx: RequestContext) -> str:
    """What became of a request, beyond its HTTP status: `ok`, `cached`, `fixed` (a guard
    or PII policy changed it), `blocked`, `escalated` (both answered 200 with a polite
    message), `shed` (refused for capacity), `limited` (429) or `error`."""
    attributes = ctx.attributes or {}
    if ctx.shed_by is not None:
        return "shed"
    if ctx.status == 429:
        return "limited"
    if ctx.status >= 400 or ctx.status == 0:
        return "error"
    if "escalation" in attributes:
        return "escalated"
    guards = attributes.get("guards")
    actions = {r.get("action") for r in guards} if isinstance(guards, list) else set()
    if "block" in actions:
        return "blocked"
    if "escalate" in actions:
        return "escalated"
    if "fix" in actions:
        return "fixed"
    if attributes.get("cache") == "hit":
        return "cached"
    return "ok"


class Recorder:
    """Begin and finish requests: metrics, cost, the trace writer and OTLP export."""

    def __init__(self, config: Config, engine: Any, metrics: Metrics, *,
                 cipher: PayloadCipher | None, prices: PriceTable, budgets: BudgetGuard,
                 spawn: Spawn) -> None:
        self.config = config
        self.metrics = metrics
        self.cipher = cipher
        self.prices = prices
        self.budgets = budgets
        self.spawn = spawn
        traces = config.traces
        # shipyard.observe.otlp.OTLPExporter when traces.otlp is set, else None
        self.otlp: Any = _otlp_exporter(config, metrics)
        self.export_ratio = traces.otlp.sample_ratio if traces.otlp else 1.0
        self.store_spans = traces.spans
        self.sample_spans = traces.sample_spans
        self.sample_payloads = traces.sample_payloads
        self.max_payload_chars = traces.max_payload_chars
        self.durable = traces.durable
        self._sheds: dict[str, int] = {}  # service -> sheds not yet handed to the writer
        self._sheds_since = datetime.now(UTC)
        self.writer: TraceWriter | None = None
        if traces.enabled:
            self.writer = TraceWriter(
                engine,
                queue_size=traces.queue_size,
                batch_size=traces.batch_size,
                flush_interval_s=traces.flush_interval_s,
                on_drop=lambda n: metrics.trace_drops.inc(n),
                on_write=lambda n: metrics.traces_written.inc(n),
                spool=Spool(default_spool_dir(config), max_bytes=traces.spool_max_bytes),
                journal=Journal(default_spool_dir(config)) if traces.durable != "off" else None,
            )
            metrics.watch_spool(self.writer.spool_status)
            metrics.watch_queue(lambda: self.writer.depth if self.writer else 0)

    # -- begin ------------------------------------------------------------------------------
    def begin(self, request: Request, route: str) -> RequestContext:
        """Start an HTTP request: its context carries a fresh trace id, the request id, and
        the caller's W3C trace when it sent `traceparent`."""
        headers = request.headers
        ctx = self.begin_call(route, request_id=headers.get("x-request-id"),
                              traceparent=headers.get("traceparent"))
        queued = request.scope.get("state", {}).get(QUEUE_MS)
        if queued is not None:  # waited for a slot of the gateway's admission (app.FastPath)
            ctx.queue_ms = queued
        return ctx

    def begin_call(self, route: str, *, request_id: str | None = None,
                   traceparent: str | None = None) -> RequestContext:
        """Start a request that did not come over HTTP (a job, a batch line, a queue
        message): the same context, trace and metrics as an HTTP request."""
        trace_id = os.urandom(16).hex()  # 4x cheaper than uuid4().hex, same entropy
        if request_id is None or not _REQUEST_ID.match(request_id):
            request_id = "req_" + trace_id
        self.metrics.in_flight.inc()
        ctx = RequestContext(request_id, route, trace_id,
                             parent=parse_traceparent(traceparent) if traceparent else None)
        if self.export_ratio < 1.0 and ctx.parent_span_id is None:
            ctx.sampled = sampled(trace_id, self.export_ratio)  # a new trace: our own decision
        return ctx

    def shed(self, route: str, service: str | None) -> None:
        """A request refused for capacity before it was read (global admission): counted in
        metrics at once and in the rollups within a second, with no trace row, no
        authentication, no body read. Under a flood that is tens of thousands a second, so the
        rollups get one record per service a second (`flush_sheds`), not one per refusal."""
        try:
            metrics = self.metrics
            metrics.child(metrics.shed, "global").inc()
            metrics.child(metrics.outcomes, service or "", "shed").inc()
            metrics.request_series(route, service or "", "", 503)[0].inc()
            if self.writer is not None:
                pending = self._sheds
                if not pending:
                    self._sheds_since = datetime.now(UTC)
                    try:
                        asyncio.get_running_loop().call_later(1.0, self.flush_sheds)
                    except RuntimeError:  # no event loop (a test, a script): at once
                        pending[service or ""] = 1
                        self.flush_sheds()
                        return
                pending[service or ""] = pending.get(service or "", 0) + 1
        except Exception:  # recording must never break a response
            log.exception("recording a shed request failed")

    def flush_sheds(self) -> None:
        """Hand the sheds counted since the last flush to the trace writer: one rollup-only
        record per service carrying their `count`, stamped with the first one's time (so a
        shed lands in its own minute's rollup, or at most a second early)."""
        pending, self._sheds = self._sheds, {}
        if self.writer is None:
            return
        for service, count in pending.items():
            self.writer.submit({
                "rollup_only": True, "count": count, "tenant_id": PLATFORM_TENANT,
                "started_at": self._sheds_since, "service": service or None,
                "model_alias": None, "status": 503, "error_type": "CapacityError",
                "total_ms": 0.0, "prompt_tokens": None, "completion_tokens": None,
                "cost_usd": None, "outcome": "shed"})

    def set_capture(self, ctx: RequestContext, capture: str) -> None:
        """Note what the trace keeps; `full` capture of bodies is sampled
        (`traces.sample_payloads`, decided from the trace id), everything else is always kept."""
        if capture == "full" and self.sample_payloads < 1.0 and not sampled(
                ctx.otel_trace_id, self.sample_payloads):
            capture = "metadata"
            self.metrics.payloads_skipped.inc()
        ctx.capture = capture

    def record(self, ctx: RequestContext) -> None:
        """Record a request that did not come through `begin` (a shadow copy)."""
        self.metrics.in_flight.inc()
        self.finish(ctx)

    # -- finish -----------------------------------------------------------------------------
    def finish(self, ctx: RequestContext) -> None:
        """Count the request and queue its trace; never raises, never blocks."""
        try:
            queued = finishing = time.perf_counter()  # the root span ends with this call
            metrics = self.metrics
            metrics.in_flight.dec()
            service = ctx.service or ""
            model = ctx.model_alias or ""
            outcome = outcome_of(ctx)
            count, latency = metrics.request_series(ctx.route, service, model, ctx.status)
            count.inc()
            latency.observe(ctx.elapsed_ms() / 1000.0)
            if outcome != "ok":
                metrics.child(metrics.outcomes, service, outcome).inc()
            if ctx.version is not None and ctx.service:
                metrics.child(metrics.version_requests, service, ctx.version, ctx.route,
                              outcome).inc()
            if ctx.upstream_ms is not None and ctx.provider:
                metrics.child(metrics.upstream_latency, ctx.provider).observe(ctx.upstream_ms / 1e3)
            metrics.overhead.observe(ctx.overhead_ms() / 1000.0)
            if ctx.ttft_ms is not None:
                metrics.child(metrics.ttft, service, model).observe(ctx.ttft_ms / 1000.0)
            if ctx.prompt_tokens:
                metrics.child(metrics.tokens, service, model, "prompt").inc(ctx.prompt_tokens)
            if ctx.completion_tokens:
                metrics.child(metrics.tokens, service, model, "completion").inc(
                    ctx.completion_tokens)
            if ctx.spans or ctx.attributes:
                self._count_attempts(model, ctx)
            if ctx.rate_limit is not None:
                self.spawn(settle_tokens(ctx))
            if ctx.total_tokens and ctx.cost_usd is None and ctx.status < 400:
                ctx.cost_usd = self.prices.cost(
                    alias=ctx.model_alias, upstream_model=ctx.upstream_model,
                    prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens)
                if ctx.cost_usd:
                    metrics.child(metrics.cost, service, model).inc(ctx.cost_usd)
            if ctx.budget is not None:  # settle the reservation with the real cost
                self.spawn(self.budgets.settle(ctx.budget, ctx.cost_usd or 0.0))
            elif ctx.cost_usd and self.budgets.budgets:
                self.spawn(self.budgets.charge(ctx.tenant_id, ctx.key_id, ctx.cost_usd))
            if ctx.shed_by is not None:
                self.metrics.shed.labels(ctx.shed_by).inc()
            if self.writer is not None:
                self._capture(ctx)
                if ctx.capture == "none":
                    ctx.request_bytes = ctx.response_bytes = None
                    ctx.finish_reason = None
                    ctx.attributes = None
                record = ctx.to_record()
                record["outcome"] = outcome
                if outcome == "shed":  # counted in metrics and rollups, no trace row
                    record["rollup_only"] = True
                if self.store_spans and ctx.capture != "none" and self._keep_spans(ctx):
                    # Raw tuples: the writer thread turns them into rows, off the event loop.
                    finishing = time.perf_counter()
                    record_span(ctx, "store.write", queued, finishing, parent=ctx.root_span)
                    record["spans"] = [(ctx.root_span, ctx.parent_span_id, ctx.route,
                                        ctx.t0, finishing, ctx.error_type, None), *ctx.spans]
                    record["spans_t0"] = ctx.t0
                self.writer.submit(record, durable=self.durable == "all" or (
                    self.durable == "full" and ctx.capture == "full"))
            if self.otlp is not None and ctx.sampled:
                # After the response has gone out: the loop runs this on its next turn.
                asyncio.get_running_loop().call_soon(self._export, ctx, finishing)
        except Exception:  # recording must never break a response
            log.exception("recording request %s failed", ctx.request_id)

    def _capture(self, ctx: RequestContext) -> None:
        """Serialise the payloads a `capture: full` trace keeps (truncated, encrypted)."""
        if ctx.capture != "full":
            ctx.request_body = ctx.response_body = None
            return
        if ctx.request_body is None and ctx.request_payload is not None:
            ctx.request_body = self._serialise(ctx.request_payload)
        elif ctx.request_body is not None:
            ctx.request_body = self._serialise(ctx.request_body)
        if ctx.response_body is not None:
            ctx.response_body = self._serialise(ctx.response_body)
        elif ctx.response_payload is not None:
            ctx.response_body = self._serialise(ctx.response_payload)

    def _serialise(self, value: Any) -> str:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        limit = self.max_payload_chars
        if len(text) > limit:
            text = text[:limit] + "…[truncated]"
        return self.cipher.encrypt(text) if self.cipher is not None else text

    def _keep_spans(self, ctx: RequestContext) -> bool:
        """Spans of every failed, retried or fallen-back request; a sample of the others."""
        if ctx.status >= 400 or ctx.error_type is not None or self.sample_spans >= 1.0:
            return True
        attempts = (ctx.attributes or {}).get("attempts")
        if isinstance(attempts, list) and len(attempts) > 1:
            return True
        return sampled(ctx.otel_trace_id, self.sample_spans)

    def _export(self, ctx: RequestContext, end: float) -> None:
        try:
            attributes: dict[str, Any] = {
                "shipyard.route": ctx.route, "shipyard.request_id": ctx.request_id,
                "shipyard.record_id": ctx.trace_id, "shipyard.tenant": ctx.tenant_id,
                "http.response.status_code": ctx.status}
            for key, value in (("shipyard.service", ctx.service),
                               ("gen_ai.request.model", ctx.model_alias),
                               ("gen_ai.response.model", ctx.upstream_model),
                               ("shipyard.provider", ctx.provider),
                               ("gen_ai.usage.input_tokens", ctx.prompt_tokens),
                               ("gen_ai.usage.output_tokens", ctx.completion_tokens),
                               ("shipyard.cost_usd", ctx.cost_usd),
                               ("shipyard.ttft_ms", ctx.ttft_ms),
                               ("shipyard.queue_ms", ctx.queue_ms),
                               ("error.type", ctx.error_type)):
                if value is not None:
                    attributes[key] = value
            name = f"{ctx.route} {ctx.service}" if ctx.service else ctx.route
            self.otlp.export(
                trace_id=ctx.otel_trace_id, remote_parent=ctx.parent_span_id,
                root_span=ctx.root_span, root_name=name, root_attributes=attributes,
                error=ctx.error_type, spans=ctx.spans, t0=ctx.t0,
                t0_ns=int(ctx.started_at.timestamp() * 1e9), end=end)
        except Exception:  # exporting must never break serving
            log.exception("exporting the spans of request %s failed", ctx.request_id)

    def _count_attempts(self, model: str, ctx: RequestContext) -> None:
        """Upstream attempts, retries and fallbacks, from the request's `upstream.attempt`
        spans: recorded for every attempt (the trace's `attempts` attribute only lists them
        when there was more than one)."""
        tried = 0
        served: str | None = None
        for _sid, _parent, name, _start, _end, _error, attributes in ctx.spans:
            if name != "upstream.attempt" or not attributes:
                continue
            tried += 1
            alias = attributes.get("shipyard.model", model)
            outcome = attributes.get("shipyard.outcome", "")
            self.metrics.child(self.metrics.attempts, alias,
                               attributes.get("shipyard.deployment", ""), outcome).inc()
            served = alias if outcome == "ok" else None
        if tried > 1:
            self.metrics.retries.labels(model).inc(tried - 1)
        if served and served != model:
            self.metrics.fallbacks.labels(model, served).inc()
        attempts = (ctx.attributes or {}).get("attempts") or ()
        for attempt in attempts:
            if attempt.get("outcome") == "retry_budget_spent":
                self.metrics.retry_budget_spent.labels(model).inc()
        cache = (ctx.attributes or {}).get("cache")
        if cache:
            self.metrics.child(self.metrics.cache, model or ctx.service or "", cache).inc()

    def readable(self, row: dict[str, Any]) -> dict[str, Any]:
        """A stored trace with its payloads decrypted (when this gateway holds the keys)."""
        for key in ("request_body", "response_body"):
            value = row.get(key)
            if isinstance(value, str):
                row[key] = self.cipher.decrypt(value) if self.cipher else redact_encrypted(value)
        return row

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self.writer is not None:
            self.writer.start()

    def stop(self) -> None:
        """Flush every queued trace (blocking: call it in a thread)."""
        if self.writer is not None:
            self.flush_sheds()
            self.writer.stop()
            log.info("traces flushed: %d written, %d dropped, %d lost",
                     self.writer.written, self.writer.dropped, self.writer.lost)
        if self.otlp is not None:
            self.otlp.shutdown()


def _otlp_exporter(config: Config, metrics: Metrics) -> Any:
    """The OTLP exporter; its module (and the OpenTelemetry SDK, ~15 MiB resident) is imported
    only when `traces.otlp` is configured."""
    if config.traces.otlp is None:
        return None
    from shipyard.observe.otlp import OTLPExporter

    return OTLPExporter(config.traces.otlp,
                        on_failed=lambda n: metrics.spans_export_failed.inc(n))
