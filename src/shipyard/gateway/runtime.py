"""The gateway runtime: what one gateway process holds — config, store, providers, shared
state, the targets and their chains — and what routes ask of it before a call (who is
calling, may they, is there budget and capacity)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from shipyard.config.schema import Config
from shipyard.engines.ray.serving import RayServing
from shipyard.errors import (
    CapacityError,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    ShipyardError,
)
from shipyard.escalation import Escalations
from shipyard.escalation.stage import guard_hook
from shipyard.gateway.auth import Authenticator, Principal
from shipyard.gateway.background import Background
from shipyard.gateway.drain import DrainGrace
from shipyard.gateway.http import error_response, internal_error
from shipyard.gateway.lifecycle_hooks import LifecycleHooks
from shipyard.gateway.recorder import Recorder
from shipyard.guards.answers import GuardHooks
from shipyard.jobs import Batches, FileStore, Jobs, files_dir
from shipyard.lifecycle.controller import Controller
from shipyard.observe.metrics import Metrics
from shipyard.observe.tracing import record_span
from shipyard.pipeline import RequestContext
from shipyard.providers import Provider, build_provider
from shipyard.resilience.admission import Admission
from shipyard.resilience.circuit import CircuitBreaker, SharedCircuits
from shipyard.security.audit import AuditLog
from shipyard.security.budget_ledger import Ledger, RedisLedger, StoreLedger
from shipyard.security.budgets import BudgetGuard
from shipyard.security.crypto import PayloadCipher
from shipyard.security.jwt import JWTVerifier
from shipyard.security.pricing import Price, PriceTable
from shipyard.security.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.state.base import KeyValue
from shipyard.state.memory import MemoryKeyValue
from shipyard.state.redis import RedisKeyValue, RedisState
from shipyard.store.engine import create_store_engine, migrate, ping
from shipyard.targets.build import Shared, build_targets
from shipyard.targets.model import ALIAS_VERSION, ModelTarget
from shipyard.targets.service import ServiceTarget
from shipyard.webhooks.delivery import WebhookOutbox
from shipyard.work import IdempotencyStore, Worker, WorkQueue

__all__ = ["Gateway"]

log = logging.getLogger("shipyard.gateway")
# The trace attribute naming the version of a model alias's configuration that answered.


class Gateway:
    """Everything one gateway process holds; routes reach it through `request.app.state`."""

    def __init__(self, config: Config, *, engine: Engine | None = None,
                 migrate: bool = True, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # what `reload()` reads again
        self._migrate = migrate and config.store.migrate
        self.metrics = Metrics()
        self.engine = engine or create_store_engine(config.store.url)
        verifier = JWTVerifier(config.auth.oidc) if config.auth.oidc is not None else None
        self.auth = Authenticator(config.auth, self.engine, verifier,
                                  on_failure=self._auth_failed, on_lockout=self._locked_out)
        self.providers: dict[str, Provider] = {
            name: build_provider(name, p) for name, p in config.providers.items()
        }
        # Shared state: Redis when replicas must agree (see docs/deployment.md).
        state = config.state
        self.redis: RedisState | None = None
        self.kv: KeyValue = MemoryKeyValue()
        cache_store: KeyValue = self.kv
        limiter: RateLimiter = MemoryLimiter()
        ledger: Ledger = StoreLedger(self.engine)
        if state.backend == "redis":
            self.redis = RedisState(state.redis_url, prefix=state.key_prefix,
                                    timeout_s=state.timeout_s,
                                    retry_after_s=state.on_outage.retry_after_s,
                                    rate_limits=state.on_outage.rate_limits)
            self.redis.on_outage = self._state_outage
            self.redis.health.on_change = lambda up: self.metrics.state_up.set(1 if up else 0)
            self.kv = RedisKeyValue(self.redis, feature="conversations")
            cache_store = RedisKeyValue(self.redis, feature="cache")
            limiter = RedisLimiter(self.redis)
            ledger = RedisLedger(self.redis)
        self.metrics.state_up.set(1)
        server = config.server
        self.admission = Admission("The gateway", max_in_flight=server.max_in_flight,
                                   max_queue=server.max_queue, max_queue_ms=server.max_queue_ms)
        keys = [k.get_secret_value() for k in config.traces.encryption_keys]
        self.cipher = PayloadCipher(keys) if keys else None
        self.prices = PriceTable({name: Price(p.input_per_1m, p.output_per_1m)
                                  for name, p in config.pricing.items()})
        self.budgets = BudgetGuard(config.budgets, ledger, engine=self.engine,
                                   on_soft=self._budget_alert)
        # Durable work: the store-backed queue, its worker, idempotency keys, the webhook outbox.
        self.work = WorkQueue(self.engine)
        self.idempotency = IdempotencyStore(self.engine, ttl_s=config.work.idempotency_ttl_s)
        self.worker = Worker.from_config(self.work, config.work, idempotency=self.idempotency)
        self.webhooks = WebhookOutbox.from_config(config, self.work,
                                                  on_result=self.metrics.count_webhook)
        if config.webhooks.deliver:
            self.webhooks.attach(self.worker)
        # Jobs, batches and files (their runners are attached by the app, which has the
        # invoker that sends their requests through the targets' chains).
        self.files = FileStore(self.engine, files_dir(config),
                               max_bytes=config.batches.max_file_bytes,
                               retention_days=config.batches.file_retention_days)
        self.jobs = Jobs(self.work, config.jobs, outbox=self.webhooks,
                         on_finish=self.metrics.count_job)
        self.batches = Batches(self.engine, self.work, self.files, config.batches,
                               outbox=self.webhooks)
        self._job_counts: dict[tuple[str, str], int] = {}
        self._batch_counts: dict[str, int] = {}
        self.metrics.watch_jobs(lambda: self._job_counts, lambda: self._batch_counts)
        self.worker.housekeeping.append((5.0, self._count_jobs))
        self.worker.housekeeping.append((600.0, self.files.purge))
        self.escalations = Escalations.from_config(config, self.engine, self.kv, self.metrics,
                                                   outbox=self.webhooks)
        self.background = Background(config, self.engine, self.metrics,
                                     escalations=self.escalations, cipher=self.cipher,
                                     outbox=self.webhooks)
        self.drain_grace = DrainGrace(config.server.drain_grace_s)
        self.recorder = Recorder(config, self.engine, self.metrics, cipher=self.cipher,
                                 budgets=self.budgets, prices=self.prices,
                                 spawn=self.background.spawn)
        # Where escalation plugs into the guards: `gateway.guard_hooks.on_escalate = ...`.
        self.guard_hooks = GuardHooks(on_escalate=guard_hook(self.escalations, config))
        # Services with `engine: ray` run on Ray Serve (shipyard.engines.ray).
        self.ray = (RayServing(config.ray, python_path=config.python_path,
                               metrics=self.metrics)
                    if any(s.engine == "ray" for s in config.services.values()) else None)
        self.shared = Shared(
            metrics=self.metrics, kv=self.kv, cache=cache_store,
            persistent_kv=self.redis is not None, limiter=limiter,
            escalations=self.escalations, guard_hooks=self.guard_hooks, cipher=self.cipher,
            base_url=_base_url(config), budgets=self.budgets, prices=self.prices,
            ray=self.ray)
        targets = build_targets(config, self.providers, self.shared)
        self.models: dict[str, ModelTarget] = targets.models
        self.services: dict[str, ServiceTarget] = targets.services
        if self.ray is not None:
            self.ray.plans = lambda: {name: s.router.plan for name, s in self.services.items()
                                      if s.runner is not None}
        breakers: dict[str, CircuitBreaker] = {}
        for target in self.models.values():
            for deployment in target.deployments:
                breakers.setdefault(deployment.breaker.name, deployment.breaker)
        self.circuits = (SharedCircuits(self.redis, list(breakers.values()),
                                        interval_s=state.circuit_sync_s)
                         if self.redis is not None else None)
        # Versions and rollouts (shipyard.lifecycle): serve what the registry says, decide.
        self.hooks = LifecycleHooks(self)
        self.hooks.wire_models(self.models, config, self.providers)
        self.hooks.wire_shadows(self.services, self.models)
        self.lifecycle = Controller(config, self.engine, routers=self.hooks.routers,
                                    retrain=self.hooks.retrain, resume=self.hooks.run_job,
                                    on_decision=self.hooks.count_decision)
        self.metrics.watch_admission(self._queue_depths)
        self.audit_log = AuditLog(self.engine)
        # The process's running connectors (shipyard.connectors.Connectors sets itself here:
        # the dashboard's connectors page reads their live counts).
        self.connectors: Any = None
        self.created = int(time.time())
        self.started = False
        self.draining = False
        self._store_ok = (0.0, False)
        self._previous_sigterm: Any = None

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
        self.recorder.start()
        await self.budgets.start()
        if self.circuits is not None:
            self.circuits.start()
        # Together: a local model loads for seconds, and several of them need not queue.
        await asyncio.gather(*(provider.start() for provider in self.providers.values()))
        await self.worker.start()
        # A job that completed just before a crash may not have queued its webhook yet.
        self.background.spawn(self._announce_recent_jobs())
        await self.background.start(traces=self.recorder.writer is not None)
        await self.lifecycle.start()
        self.hooks.stamp_models(self.models)
        if self.ray is not None:
            await self.ray.start()
        self._watch_sigterm()
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
        if self.config_path is not None:  # SIGHUP: load the config again, swap atomically
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: self.background.spawn(
                self.hooks.reload_logged()))
            self._hup = True

    async def stop(self) -> None:
        self.drain()
        if getattr(self, "_hup", False):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.lifecycle.stop()
        if self.ray is not None:
            await self.ray.stop()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        await self.background.stop()
        await self.worker.stop(grace_s=min(10.0, self.config.server.drain_timeout_s))
        await self.webhooks.close()
        if self.circuits is not None:
            await self.circuits.stop()
        await self.budgets.stop()
        await self.kv.close()
        for provider in self.providers.values():
            try:
                await provider.close()
            except Exception:  # closing must not stop the flush below
                log.exception("closing provider %s failed", provider.name)
        await asyncio.to_thread(self.recorder.stop)
        self.engine.dispose()

    def drain(self) -> None:
        """Stop taking new work (readiness goes false, new requests get 503)."""
        if not self.draining:
            self.draining = True
            log.info("draining: /readyz is now 503 and new requests are refused")

    async def store_reachable(self) -> bool:
        """Store health, cached for a second so probes stay cheap."""
        checked, ok = self._store_ok
        now = time.monotonic()
        if now - checked > 1.0:
            ok = await asyncio.to_thread(ping, self.engine)
            self._store_ok = (now, ok)
        return ok

    def status(self) -> dict[str, Any]:
        """Live state for `shipyard status`: circuits, admission, budgets, trace writer."""
        models: dict[str, Any] = {}
        versions = self.lifecycle.status()
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
                "admission": _admissions(target.admissions),
                **versions.get(f"model/{alias}", {})}
        services = {name: {"admission": _admissions(s.admissions), **versions.get(name, {})}
                    for name, s in sorted(self.services.items())}
        if self.ray is not None:
            for name, s in self.services.items():
                if s.config.engine == "ray":
                    services[name]["ray"] = self.ray.status(name)
        writer = self.recorder.writer
        return {
            "draining": self.draining,
            "budgets": self.budgets.status(),
            "models": models,
            "services": services,
            "traces": None if writer is None else {
                "queued": writer.depth, "written": writer.written, "dropped": writer.dropped,
                "lost": writer.lost, **writer.spool_status()},
        }

    async def _announce_recent_jobs(self) -> None:
        since = self.work.clock() - timedelta(days=1)
        try:
            await asyncio.to_thread(self.jobs.announce_recent, since=since)
        except Exception as exc:  # the store may be down at start: deliveries are best effort
            log.warning("announcing recently finished jobs failed (%s)", type(exc).__name__)

    def _count_jobs(self) -> None:
        self._job_counts = self.jobs.counts()
        self._batch_counts = self.batches.counts()

    def _queue_depths(self) -> dict[str, int]:
        depths = {"global": self.admission.queued}
        targets: list[ModelTarget | ServiceTarget] = [*self.models.values(),
                                                      *self.services.values()]
        for target in targets:
            for admission in target.admissions:
                if admission is not self.admission:
                    depths[target.name] = admission.queued
        return depths

    async def reload(self, config: Config | None = None) -> dict[str, Any]:
        """Swap in the config file again without downtime (`shipyard.gateway.lifecycle_hooks`)."""
        return await self.hooks.reload(config)

    # -- before a call ----------------------------------------------------------------------
    def refuse_if_draining(self) -> None:
        if self.draining:
            self.metrics.shed.labels("drain").inc()
            raise CapacityError(
                "This Shipyard instance is shutting down and takes no new requests; retry "
                "(another replica will answer).",
                headers={"retry-after": "1", "connection": "close"})

    async def authorize(self, request: Request, scope: str,
                        ctx: RequestContext | None = None) -> Principal:
        """Authenticate the caller and check `scope`; notes the tenant and key on `ctx`."""
        scope_ = request.scope
        address = scope_.get("client")  # what `request.client` wraps, without the wrapping
        client = address[0] if address is not None else None
        route = scope_.get("route")
        path = route.path if route is not None else scope_["path"]
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

    def check_budget(self, ctx: RequestContext) -> None:
        """Refuse the request when its tenant's or key's hard budget is known to be spent
        (no I/O; the budget stage then reserves the request's cost atomically)."""
        if self.budgets.budgets:
            self.budgets.check(ctx.tenant_id, ctx.key_id)

    def _state_outage(self, feature: str, policy: str) -> None:
        self.metrics.state_outage_answers.labels(feature, policy).inc()

    async def state_status(self) -> dict[str, Any]:
        """The shared state's health for `/readyz`: the backend, whether it answers, and
        what each feature does while it does not."""
        if self.redis is None:
            return {"backend": "memory", "reachable": True}
        reachable = await self.redis.reachable()
        health = self.redis.health
        status: dict[str, Any] = {"backend": "redis", "reachable": reachable}
        if not reachable:
            status["error"] = health.last_error
            if health.down_since is not None:
                status["down_s"] = round(time.monotonic() - health.down_since, 1)
            status["policy"] = dict(self.redis.policy)
        return status

    def model(self, alias: str, kind: str, ctx: RequestContext,
              principal: Principal) -> ModelTarget:
        """The model alias a request names, if it exists, has the right type, and the
        caller may use it; notes it on the context."""
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
        version = target.serving  # the alias's configuration version (lifecycle/aliases.py)
        if version is not None:  # a canary's candidate replaces it (targets/model.py)
            ctx.version = version
            ctx.attributes = {**(ctx.attributes or {}), ALIAS_VERSION: version}
        self.recorder.set_capture(ctx, target.config.capture)
        return target

    def service(self, name: str, ctx: RequestContext, principal: Principal) -> ServiceTarget:
        """The service a request names, if it exists and the caller may call it."""
        target = self.services.get(name)
        if target is None:
            known = ", ".join(sorted(self.services)) or "none are configured"
            raise NotFound(f"The service '{name}' does not exist; available services: "
                           f"{known} (see GET /v1/services).", param="name")
        principal.may_use_service(name)
        ctx.service = name
        ctx.provider = "python"
        self.recorder.set_capture(ctx, target.config.capture)
        return target

    # -- around a call ----------------------------------------------------------------------
    def audit(self, *, tenant_id: str, actor: str, action: str, target: str,
              outcome: str = "ok", details: dict[str, Any] | None = None) -> None:
        """Append a control-plane action to the audit log, off the event loop."""
        def append() -> None:
            try:
                self.audit_log.append(tenant_id=tenant_id, actor=actor, action=action,
                                      target=target, outcome=outcome, details=details)
            except Exception:  # the action happened; a failed audit write is loud, not fatal
                log.exception("audit log append failed for %s %s", action, target)

        self.background.spawn(asyncio.to_thread(append))

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

    def _budget_alert(self, budget: Any, spent: float) -> None:
        scope = "key" if budget.key else "tenant"
        self.metrics.budget_alerts.labels(scope).inc()
        self.audit(tenant_id=budget.tenant or "default", actor="shipyard",
                   action="budget.soft_threshold", target=budget.key or budget.tenant,
                   details={"period": budget.period, "limit_usd": budget.limit_usd,
                            "spent_usd": round(spent, 6)})

    def error(self, ctx: RequestContext, exc: Exception, *, path: str = "") -> Response:
        """The error answer of a request (our own bugs become a logged 500), noted on its
        trace; in Anthropic's shape when `path` is an Anthropic-format route."""
        error = exc if isinstance(exc, ShipyardError) else internal_error(exc, ctx.request_id)
        self.fail(ctx, error)
        return error_response(error, headers=self.headers(ctx), path=path)

    def fail(self, ctx: RequestContext, exc: ShipyardError) -> None:
        ctx.status = exc.status
        ctx.error_type = type(exc).__name__
        ctx.error_message = exc.message

    def headers(self, ctx: RequestContext) -> dict[str, str]:
        headers = {
            "x-request-id": ctx.request_id,
            "x-shipyard-trace-id": ctx.trace_id,
            "x-shipyard-overhead-ms": f"{ctx.overhead_ms():.3f}",
        }
        version = (ctx.attributes or {}).get(ALIAS_VERSION) if ctx.model_alias else None
        if version is not None:
            headers["x-shipyard-version"] = version
        return headers


def _admissions(admissions: list[Admission]) -> list[dict[str, Any]]:
    return [{"name": a.name, "in_flight": a.in_flight, "queued": a.queued,
             "max_in_flight": a.max_in_flight, "shed": a.shed,
             "adaptive": a.adaptive is not None} for a in admissions]


def _base_url(config: Config) -> str:
    """Where a hosted service's own calls reach this gateway (`shipyard.client()`)."""
    server = config.server
    if server.public_url:
        return server.public_url.rstrip("/") + "/v1"
    scheme = "https" if server.tls_certfile else "http"
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    return f"{scheme}://{host}:{server.port}/v1"
