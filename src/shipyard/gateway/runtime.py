"""The gateway runtime: config, providers, store and writer, and the begin/finish of requests."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import threading
import time
from types import FrameType, SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.requests import Request

from shipyard.config.schema import Config
from shipyard.config.traces import default_spool_dir
from shipyard.errors import (
    CapacityError,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    ShipyardError,
)
from shipyard.escalation import Escalations, OverdueChecker, caller_of
from shipyard.gateway.auth import Authenticator, Principal
from shipyard.gateway.drain import DrainGrace
from shipyard.gateway.pii import CONVERSATION_HEADER, PIIPolicy, PIISession
from shipyard.guards.answers import Escalation as GuardEscalation
from shipyard.guards.answers import GuardHooks
from shipyard.monitor.alerts import AlertEvaluator
from shipyard.observe.metrics import Metrics
from shipyard.observe.tracing import parse_traceparent, record_span, sampled
from shipyard.pipeline import RequestContext
from shipyard.providers import Provider, build_provider
from shipyard.resilience.admission import Admission
from shipyard.security.audit import AuditLog
from shipyard.security.budgets import BudgetGuard
from shipyard.security.crypto import PayloadCipher, redact_encrypted
from shipyard.security.jwt import JWTVerifier
from shipyard.security.limits_stage import settle_tokens
from shipyard.security.pricing import Price, PriceTable
from shipyard.security.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.state.base import KeyValue
from shipyard.state.memory import MemoryKeyValue
from shipyard.state.redis import RedisKeyValue
from shipyard.store.engine import create_store_engine, migrate, ping
from shipyard.store.journal import Journal
from shipyard.store.retention import RetentionTask
from shipyard.store.spool import Spool
from shipyard.store.writer import TraceWriter
from shipyard.targets.build import build_targets
from shipyard.targets.model import ModelTarget
from shipyard.targets.service import HostedService

__all__ = ["Gateway"]

log = logging.getLogger("shipyard.gateway")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _otlp_exporter(config: Config, metrics: Metrics) -> Any:
    """The OTLP exporter; its module (and the OpenTelemetry SDK, ~15 MiB resident) is imported
    only when `traces.otlp` is configured."""
    if config.traces.otlp is None:
        return None
    from shipyard.observe.otlp import OTLPExporter

    return OTLPExporter(config.traces.otlp,
                        on_failed=lambda n: metrics.spans_export_failed.inc(n))


class Gateway:
    """Everything one gateway process holds; routes reach it through `request.app.state`."""

    def __init__(self, config: Config, *, engine: Engine | None = None,
                 migrate: bool = True) -> None:
        self.config = config
        self._migrate = migrate and config.store.migrate
        for folder in reversed(config.python_path):
            if folder not in sys.path:
                sys.path.insert(0, folder)  # so module:function references import
        self.metrics = Metrics()
        self.engine = engine or create_store_engine(config.store.url)
        verifier = JWTVerifier(config.auth.oidc) if config.auth.oidc is not None else None
        self.auth = Authenticator(config.auth, self.engine, verifier,
                                  on_failure=self._auth_failed, on_lockout=self._locked_out)
        self.providers: dict[str, Provider] = {
            name: build_provider(name, p) for name, p in config.providers.items()
        }
        self.kv: KeyValue = (
            RedisKeyValue(config.state.redis_url, prefix=config.state.key_prefix)
            if config.state.backend == "redis" else MemoryKeyValue()
        )
        server = config.server
        self.admission = Admission("The gateway", max_in_flight=server.max_in_flight,
                                   max_queue=server.max_queue, max_queue_ms=server.max_queue_ms)
        self.limiter: RateLimiter = (
            RedisLimiter(self.kv.client, prefix=config.state.key_prefix)
            if isinstance(self.kv, RedisKeyValue) else MemoryLimiter())
        # Where escalation plugs in: `gateway.guard_hooks.on_escalate = ...`.
        self.guard_hooks = GuardHooks()
        self.models: dict[str, ModelTarget] = build_targets(
            config, self.providers, self.metrics, global_admission=self.admission,
            cache_store=self.kv, limiter=self.limiter, guard_hooks=self.guard_hooks)
        self._background: set[asyncio.Task[None]] = set()
        keys = [k.get_secret_value() for k in config.traces.encryption_keys]
        self.cipher = PayloadCipher(keys) if keys else None
        self.prices = PriceTable({name: Price(p.input_per_1m, p.output_per_1m)
                                  for name, p in config.pricing.items()})
        self.budgets = BudgetGuard(self.engine, list(config.budgets), on_soft=self._budget_alert)
        self.metrics.watch_admission(self._queue_depths)
        self.services: dict[str, HostedService] = {
            name: HostedService(name, s, metrics=self.metrics)
            for name, s in config.services.items()
        }
        self.model_pii = {alias: self._pii_policy(m.pii, f"models.{alias}", alias)
                          for alias, m in config.models.items() if m.pii.mode != "off"}
        self.service_pii = {name: self._pii_policy(s.pii, f"services.{name}", name)
                            for name, s in config.services.items() if s.pii.mode != "off"}
        # shipyard.observe.otlp.OTLPExporter when traces.otlp is set, else None
        self.otlp: Any = _otlp_exporter(config, self.metrics)
        self.export_ratio = config.traces.otlp.sample_ratio if config.traces.otlp else 1.0
        self.store_spans = config.traces.spans
        self.sample_spans = config.traces.sample_spans
        self.sample_payloads = config.traces.sample_payloads
        self.durable = config.traces.durable
        self.retention: RetentionTask | None = None
        self.writer: TraceWriter | None = None
        if config.traces.enabled:
            self.writer = TraceWriter(
                self.engine,
                queue_size=config.traces.queue_size,
                batch_size=config.traces.batch_size,
                flush_interval_s=config.traces.flush_interval_s,
                on_drop=lambda n: self.metrics.trace_drops.inc(n),
                on_write=lambda n: self.metrics.traces_written.inc(n),
                spool=Spool(default_spool_dir(config), max_bytes=config.traces.spool_max_bytes),
                journal=Journal(default_spool_dir(config))
                if config.traces.durable != "off" else None,
            )
            self.metrics.watch_spool(self.writer.spool_status)
            self.metrics.watch_queue(lambda: self.writer.depth if self.writer else 0)
        self.created = int(time.time())
        self.started = False
        self.draining = False
        self._store_ok = (0.0, False)
        self._previous_sigterm: Any = None
        self.drain_grace = DrainGrace(config.server.drain_grace_s)
        self.alerts = AlertEvaluator(config, self.engine,
                                     on_evaluated=self.metrics.alert_evaluations.inc)
        self.audit_log = AuditLog(self.engine)
        self.drift: Any = None  # a shipyard.monitor DriftScheduler once started
        self.escalations = Escalations.from_config(config, self.engine, self.kv, self.metrics)
        self.overdue = OverdueChecker(self.escalations)
        if self.guard_hooks.on_escalate is None:
            self.guard_hooks.on_escalate = self._guard_escalated

    async def _guard_escalated(self, event: GuardEscalation) -> dict[str, Any] | None:
        """A guard's `escalate` verdict opens a ticket in the escalation queue, owned by the
        caller (who may poll it) and tied to the request's conversation. The user is told the
        alias's or service's escalation message when escalation is enabled on it, else the
        guards' own `escalated_message`; the ticket id is in `shipyard.escalation`."""
        is_model = event.target in self.config.models
        request = SimpleNamespace(
            tenant_id=event.tenant_id, key_id=None, request_id=event.request_id,
            trace_id=event.trace_id, service=event.target,
            model_alias=event.target if is_model else None)
        conversation = list(event.messages) or [{"role": "user", "content": event.text}]
        ticket = await self.escalations.open(
            request, reason=f"guard '{event.guard}' ({event.stage}): {event.verdict.reason}",
            trigger="guard", conversation=conversation, score=event.verdict.score,
            conversation_id=event.conversation_id,
            caller=caller_of(event.principal) if event.principal is not None else None)
        found = (self.escalations.for_model(event.target) if is_model
                 else self.escalations.for_service(event.target))
        if found is None:
            return self.escalations.field(ticket)
        return {"message": self.escalations.notice(ticket), **self.escalations.field(ticket)}

    def _pii_policy(self, config: Any, where: str, name: str) -> PIIPolicy:
        counter = self.metrics.pii_findings

        def count(entity: str, found_in: str, n: int) -> None:
            counter.labels(name, entity, found_in).inc(n)

        return PIIPolicy(config, where, kv=self.kv, cipher=self.cipher,
                         persistent_kv=isinstance(self.kv, RedisKeyValue), count=count)

    async def pii_session(self, ctx: RequestContext, policy: PIIPolicy | None,
                          request: Request) -> PIISession | None:
        """The request's PII session when its alias or service protects personal data."""
        if policy is None:
            return None
        return await policy.open(ctx, request.headers.get(CONVERSATION_HEADER))

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._migrate:
            try:
                await asyncio.to_thread(migrate, self.engine)
            except Exception as exc:
                raise ConfigError(
                    f"The store at store.url cannot be migrated ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}); check that the database is reachable."
                ) from exc
        if self.writer is not None:
            self.writer.start()
            if self.config.traces.retention.days or self.config.traces.retention.payload_days \
                    or self.config.traces.retention.tenants:
                self.retention = RetentionTask(
                    self.engine, self.config.traces.retention,
                    on_purge=self.metrics.count_purge)
                self.retention.start()
        if self.budgets.budgets:
            await asyncio.to_thread(self.budgets.reload)
        for provider in self.providers.values():
            await provider.start()
        self.overdue.start()
        await self._start_drift()
        self._watch_sigterm()
        await self.alerts.start()
        self.started = True
        log.info("gateway ready: %d models, %d services", len(self.models), len(self.services))

    def _watch_sigterm(self) -> None:
        """Start draining the moment SIGTERM arrives, then let uvicorn's own handler run.

        uvicorn installs its signal handlers before the app starts, so chaining here works for
        one worker and for each of `--workers N`; it only affects the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.drain()
            if callable(previous):
                self.drain_grace.on_signal(previous, signum, frame)

        self.drain_grace.bind(asyncio.get_running_loop())
        signal.signal(signal.SIGTERM, on_sigterm)
        self._previous_sigterm = previous

    def status(self) -> dict[str, Any]:
        """Live state for `shipyard status`: circuits, admission, cache, trace writer."""
        models: dict[str, Any] = {}
        for alias, target in sorted(self.models.items()):
            deployments = []
            for d in target.deployments:
                requests, failures = d.breaker.counts()
                deployments.append({
                    "deployment": d.name, "circuit": d.breaker.state, "in_flight": d.in_flight,
                    "weight": d.weight, "window_requests": requests,
                    "window_failures": failures,
                    "retry_after_s": round(d.breaker.retry_after_s(), 3),
                    "times_opened": d.breaker.opened_count})
            models[alias] = {
                "deployments": deployments, "fallbacks": target.config.fallbacks,
                "retry_budget_exhausted": target.budget.exhausted,
                "admission": [{"name": a.name, "in_flight": a.in_flight, "queued": a.queued,
                               "max_in_flight": a.max_in_flight, "shed": a.shed,
                               "adaptive": a.adaptive is not None}
                              for a in target.admissions]}
        writer = self.writer
        return {
            "draining": self.draining,
            "budgets": self.budgets.status(),
            "models": models,
            "traces": None if writer is None else {
                "queued": writer.depth, "written": writer.written, "dropped": writer.dropped,
                "lost": writer.lost, **writer.spool_status()},
        }

    def _queue_depths(self) -> dict[str, int]:
        depths = {"global": self.admission.queued}
        for alias, target in self.models.items():
            for admission in target.admissions:
                if admission is not self.admission:
                    depths[alias] = admission.queued
        return depths

    def drain(self) -> None:
        """Stop taking new work (readiness goes false, new requests get 503)."""
        if not self.draining:
            self.draining = True
            log.info("draining: /readyz is now 503 and new requests are refused")

    async def _start_drift(self) -> None:
        """Scheduled drift checks (`drift:` in the config); needs the `monitor` extra."""
        if not (self.config.drift.enabled and self.config.drift.checks):
            return
        try:  # optional extra: imported only when drift checks are configured
            from shipyard.monitor.drift_checks import DriftScheduler
        except ImportError as exc:
            raise ConfigError(f"drift.checks needs numpy and scipy ({exc}); install them with "
                              "pip install 'shipyard[monitor]'.") from exc
        self.drift = DriftScheduler(self.engine, self.config.drift,
                                    decrypt=self.cipher.decrypt if self.cipher else None)
        await self.drift.start()

    async def stop(self) -> None:
        if self.drift is not None:
            await self.drift.stop()
        self.drain()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        await self.overdue.stop()
        await self.alerts.stop()
        await self.kv.close()
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:  # closing must not stop the flush below
                log.exception("closing provider %s failed", provider.name)
        if self.retention is not None:
            await self.retention.stop()
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)
            log.info("traces flushed: %d written, %d dropped, %d lost",
                     self.writer.written, self.writer.dropped, self.writer.lost)
        if self.otlp is not None:
            await asyncio.to_thread(self.otlp.shutdown)
        self.engine.dispose()

    async def store_reachable(self) -> bool:
        """Store health, cached for a second so probes stay cheap."""
        checked, ok = self._store_ok
        now = time.monotonic()
        if now - checked > 1.0:
            ok = await asyncio.to_thread(ping, self.engine)
            self._store_ok = (now, ok)
        return ok

    # -- requests ---------------------------------------------------------------------------
    def begin(self, request: Request, route: str) -> RequestContext:
        """Start a request: its context carries a fresh trace id, the request id, and the
        caller's W3C trace when it sent `traceparent`."""
        trace_id = os.urandom(16).hex()  # 4x cheaper than uuid4().hex, same entropy
        headers = request.headers
        given = headers.get("x-request-id")
        request_id = given if given is not None and _REQUEST_ID.match(given) else "req_" + trace_id
        self.metrics.in_flight.inc()
        parent = headers.get("traceparent")
        ctx = RequestContext(request_id, route, trace_id,
                             parent=parse_traceparent(parent) if parent else None)
        if self.export_ratio < 1.0 and ctx.parent_span_id is None:
            ctx.sampled = sampled(trace_id, self.export_ratio)  # a new trace: our own decision
        return ctx

    async def authorize(self, request: Request, scope: str,
                        ctx: RequestContext | None = None) -> Principal:
        """Authenticate the caller and check `scope`; notes the tenant and key on `ctx`."""
        client = request.client.host if request.client is not None else None
        route = request.scope.get("route")
        path = route.path if route is not None else request.scope["path"]
        if ctx is None:
            return await self.auth.authenticate(request.headers, scope, client=client,
                                                route=path)
        started = time.perf_counter()
        try:
            principal = await self.auth.authenticate(request.headers, scope, client=client,
                                                     route=path)
        except BaseException as exc:
            record_span(ctx, "auth", started, time.perf_counter(), error=type(exc).__name__)
            raise
        record_span(ctx, "auth", started, time.perf_counter())
        ctx.tenant_id = principal.tenant_id
        ctx.key_id = principal.key_id
        return principal

    def _auth_failed(self, reason: str, route: str) -> None:
        self.metrics.auth_failures.labels(reason, route).inc()

    def _locked_out(self, kind: str, subject: str, tenant: str | None) -> None:
        """A burst of failed authentications: counted, logged and audited once per lockout."""
        self.metrics.auth_lockouts.labels(kind).inc()
        lockout = self.config.auth.lockout
        limit = (lockout.max_failures_per_address if kind == "address"
                 else lockout.max_failures_per_key)
        log.warning("authentication lockout: %s %s failed %d times within %gs",
                    kind, subject, limit, lockout.window_s)
        self.audit(tenant_id=tenant or PLATFORM_TENANT, actor=f"{kind}:{subject}",
                   action="auth.lockout", target=subject, outcome="denied",
                   details={"kind": kind, "failures": limit, "window_s": lockout.window_s})

    def audit(self, *, tenant_id: str, actor: str, action: str, target: str,
              outcome: str = "ok", details: dict[str, Any] | None = None) -> None:
        """Append a control-plane action to the audit log, off the event loop."""
        def append() -> None:
            try:
                self.audit_log.append(tenant_id=tenant_id, actor=actor, action=action,
                                      target=target, outcome=outcome, details=details)
            except Exception:  # the action happened; a failed audit write is loud, not fatal
                log.exception("audit log append failed for %s %s", action, target)

        self._spawn(asyncio.to_thread(append))

    def check_budget(self, ctx: RequestContext) -> None:
        """Refuse the request when its tenant's or key's hard budget is spent."""
        if not self.budgets.budgets:
            return
        if self.budgets.claim_reload():
            self._spawn(asyncio.to_thread(self.budgets.reload))
        self.budgets.check(ctx.tenant_id, ctx.key_id)

    def _budget_alert(self, budget: Any, spent: float) -> None:
        scope = "key" if budget.key else "tenant"
        self.metrics.budget_alerts.labels(scope).inc()
        self.audit(tenant_id=budget.tenant or "default", actor="shipyard",
                   action="budget.soft_threshold", target=budget.key or budget.tenant,
                   details={"period": budget.period, "limit_usd": budget.limit_usd,
                            "spent_usd": round(spent, 6)})

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def refuse_if_draining(self) -> None:
        if self.draining:
            self.metrics.shed.labels("drain").inc()
            raise CapacityError(
                "This Shipyard instance is shutting down and takes no new requests; retry "
                "(another replica will answer).",
                headers={"retry-after": "1", "connection": "close"})

    def model(self, alias: str, kind: str, ctx: RequestContext,
              principal: Principal) -> ModelTarget:
        target = self.models.get(alias)
        if target is None:
            known = ", ".join(sorted(self.models)) or "none are configured"
            raise ModelNotFound(
                f"The model '{alias}' does not exist; available models: {known} "
                "(see GET /v1/models).", param="model")
        if target.config.type != kind:
            route = "/v1/embeddings" if target.config.type == "embedding" else (
                "/v1/chat/completions")
            raise InvalidRequest(
                f"The model '{alias}' is {'an' if target.config.type[0] in 'aeiou' else 'a'} "
                f"{target.config.type} model; call {route} with it.",
                param="model", code="wrong_model_type")
        principal.may_use_model(alias)
        ctx.service = alias
        ctx.model_alias = alias
        self.set_capture(ctx, target.config.capture)
        return target

    def set_capture(self, ctx: RequestContext, capture: str) -> None:
        """Note what the trace keeps; `full` capture of bodies is sampled
        (`traces.sample_payloads`, decided from the trace id), everything else is always kept."""
        if capture == "full" and self.sample_payloads < 1.0 and not sampled(
                ctx.otel_trace_id, self.sample_payloads):
            capture = "metadata"
            self.metrics.payloads_skipped.inc()
        ctx.capture = capture

    def fail(self, ctx: RequestContext, exc: ShipyardError) -> None:
        ctx.status = exc.status
        ctx.error_type = type(exc).__name__
        ctx.error_message = exc.message

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        return {
            "x-request-id": ctx.request_id,
            "x-shipyard-trace-id": ctx.trace_id,
            "x-shipyard-overhead-ms": f"{ctx.overhead_ms():.3f}",
        }

    def finish(self, ctx: RequestContext) -> None:
        """Count the request and queue its trace; never raises, never blocks."""
        try:
            queued = finishing = time.perf_counter()  # the root span ends with this call
            self.metrics.in_flight.dec()
            service = ctx.service or ""
            model = ctx.model_alias or ""
            total_s = ctx.elapsed_ms() / 1000.0
            count, latency = self.metrics.request_series(ctx.route, service, model, ctx.status)
            count.inc()
            latency.observe(total_s)
            if ctx.upstream_ms is not None and ctx.provider:
                self.metrics.upstream_latency.labels(ctx.provider).observe(ctx.upstream_ms / 1e3)
            self.metrics.overhead.observe(ctx.overhead_ms() / 1000.0)
            if ctx.ttft_ms is not None:
                self.metrics.ttft.labels(service, model).observe(ctx.ttft_ms / 1000.0)
            if ctx.prompt_tokens:
                self.metrics.tokens.labels(service, model, "prompt").inc(ctx.prompt_tokens)
            if ctx.completion_tokens:
                self.metrics.tokens.labels(service, model, "completion").inc(
                    ctx.completion_tokens)
            if ctx.spans or ctx.attributes:
                self._count_attempts(model, ctx)
            if ctx.rate_limit is not None:
                self._spawn(settle_tokens(ctx))
            if ctx.total_tokens and ctx.cost_usd is None and ctx.status < 400:
                ctx.cost_usd = self.prices.cost(
                    alias=ctx.model_alias, upstream_model=ctx.upstream_model,
                    prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens)
                if ctx.cost_usd:
                    self.metrics.cost.labels(service, model).inc(ctx.cost_usd)
                    self.budgets.add(ctx.tenant_id, ctx.key_id, ctx.cost_usd)
            if ctx.shed_by is not None:
                self.metrics.shed.labels(ctx.shed_by).inc()
            if self.writer is not None:
                if ctx.capture == "none":
                    ctx.request_bytes = ctx.response_bytes = None
                    ctx.finish_reason = None
                    ctx.attributes = None
                record = ctx.to_record()
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
            self.metrics.attempts.labels(alias, attributes.get("shipyard.deployment", ""),
                                         outcome).inc()
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
            self.metrics.cache.labels(model, cache).inc()

    def capture_body(self, ctx: RequestContext, value: Any) -> str | None:
        """Serialise a payload for `capture: full`, truncated to traces.max_payload_chars."""
        if ctx.capture != "full":
            return None
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        limit = self.config.traces.max_payload_chars
        if len(text) > limit:
            text = text[:limit] + "…[truncated]"
        return self.cipher.encrypt(text) if self.cipher is not None else text

    def readable(self, row: dict[str, Any]) -> dict[str, Any]:
        """A stored trace with its payloads decrypted (when this gateway holds the keys)."""
        for key in ("request_body", "response_body"):
            value = row.get(key)
            if isinstance(value, str):
                row[key] = self.cipher.decrypt(value) if self.cipher else redact_encrypted(value)
        return row
