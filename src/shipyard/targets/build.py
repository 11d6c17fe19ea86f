"""Build every target from config — model aliases and hosted services — each with the same
chain of stages around its terminal step.

The chain, outermost first (a stage is left out when the target configures nothing for it,
so an unused policy costs nothing):

    rate limits → budget reservation (priced models) → admission → escalation → PII →
    input/output guards → your own stages (global `stages`, then the target's) → cache →
    the target

A model alias's terminal is failover over its deployments (retries, breakers, fallbacks); a
service's is its function. Authentication, key restrictions and budgets run before the
chain (in the gateway, before the body is read); recording runs after it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shipyard.config.schema import Config
from shipyard.config.targets import ModelConfig, StageSpec
from shipyard.config.trust import GuardsConfig, PIIConfig
from shipyard.engines.ray.serving import RayServing
from shipyard.errors import ConfigError
from shipyard.escalation.service import Escalations
from shipyard.escalation.stage import EscalationStage
from shipyard.guards.answers import GuardHooks
from shipyard.guards.registry import build_guard_lists
from shipyard.guards.stage import GuardStage
from shipyard.observe.metrics import Metrics
from shipyard.pipeline import Stage
from shipyard.providers import Provider
from shipyard.providers.loading import import_object
from shipyard.resilience.admission import Admission
from shipyard.resilience.cache import CacheStage
from shipyard.resilience.circuit import STATE_VALUE, CircuitBreaker
from shipyard.resilience.failover import Deployment
from shipyard.resilience.retry import RetryBudget
from shipyard.resilience.semantic import semantic_cache
from shipyard.resilience.stages import AdmissionStage
from shipyard.security.budgets import BudgetGuard, BudgetStage
from shipyard.security.crypto import PayloadCipher
from shipyard.security.limits_stage import RateLimitStage
from shipyard.security.pricing import PriceTable
from shipyard.security.ratelimit import RateLimiter
from shipyard.state.base import KeyValue
from shipyard.targets.model import ModelTarget
from shipyard.targets.service import ServiceTarget

__all__ = ["Shared", "Targets", "build_targets", "build_version", "user_stage"]

log = logging.getLogger("shipyard.targets")


@dataclass(frozen=True, slots=True)
class Shared:
    """What the chains of one gateway share."""

    metrics: Metrics
    kv: KeyValue  # shared state: PII conversation tables
    cache: KeyValue  # shared state: the response cache
    persistent_kv: bool  # the state leaves the process (Redis)
    limiter: RateLimiter
    escalations: Escalations
    guard_hooks: GuardHooks
    cipher: PayloadCipher | None = None
    base_url: str | None = None  # where services' own calls reach this gateway
    budgets: BudgetGuard | None = None  # reservations against spend caps (see security.budgets)
    prices: PriceTable | None = None
    ray: RayServing | None = None  # Ray Serve, when a service has `engine: ray`


@dataclass(slots=True)
class Targets:
    """Every target of a config, by kind and name."""

    models: dict[str, ModelTarget]
    services: dict[str, ServiceTarget]


def _report(metrics: Metrics, name: str) -> Callable[[str, str], None]:
    def on_change(old: str, new: str) -> None:
        metrics.circuit_state.labels(name).set(STATE_VALUE[new])
        metrics.circuit_transitions.labels(name, new).inc()
        log.warning("circuit of %s: %s -> %s", name, old, new)

    return on_change


def build_targets(config: Config, providers: Mapping[str, Provider],
                  shared: Shared) -> Targets:
    """One `ModelTarget` per alias and one `ServiceTarget` per service, chained.
    Deployments (and their breakers) are shared by aliases that name the same provider and
    upstream model."""
    models = _models(config, providers, shared.metrics)
    for target in models.values():
        target.fallback_targets = [models[name] for name in target.config.fallbacks]
    services = {name: ServiceTarget(name, s, base_url=shared.base_url)
                for name, s in config.services.items()}
    for model in models.values():
        _chain(model, f"models.{model.name}", config, shared)
    for service in services.values():
        if service.config.engine == "ray":
            if shared.ray is None:
                raise ConfigError(f"Config key 'services.{service.name}.engine' is 'ray', "
                                  "but this gateway started without any service on Ray; "
                                  "restart it (a reload cannot add the first engine: ray "
                                  "service).")
            runner = shared.ray.runner(service.name, service.config)
            runner.attach(service.router)
            service.runner = runner
        _chain(service, f"services.{service.name}", config, shared)
        _warn_ungrounded(service)
    return Targets(models, services)


def _models(config: Config, providers: Mapping[str, Provider],
            metrics: Metrics) -> dict[str, ModelTarget]:
    deployments: dict[tuple[str, str], Deployment] = {}

    def deployment(provider: str, model: str, weight: float) -> Deployment:
        key = (provider, model)
        if key not in deployments:
            name = f"{provider}/{model}"
            metrics.circuit_state.labels(name).set(0)
            breaker = CircuitBreaker(providers[provider].config.circuit, name=name,
                                     on_change=_report(metrics, name))
            deployments[key] = Deployment(providers[provider], model, weight, breaker)
        found = deployments[key]
        return Deployment(found.provider, found.model, weight, found.breaker) if (
            found.weight != weight) else found

    return {alias: ModelTarget(alias, model,
                               [deployment(d.provider, d.model or alias, d.weight)
                                for d in model.targets(alias)],
                               RetryBudget(model.retry))
            for alias, model in config.models.items()}


def build_version(alias: str, model: ModelConfig, config: Config,
                  providers: Mapping[str, Provider], shared: Shared,
                  models: Mapping[str, ModelTarget], *, cache_name: str) -> ModelTarget:
    """The target of one registered configuration version of a model alias (its own
    deployments, retries, fallbacks, guards, PII, stages and cache) beside the running
    ones: deployments the running targets also have share their circuit breakers, and
    its cache is its own (`cache_name`), so no version answers from another's cache."""
    running = {(d.provider.name, d.model): d for t in models.values() for d in t.deployments}
    deployments = []
    for spec in model.targets(alias):
        upstream = spec.model or alias
        found = running.get((spec.provider, upstream))
        if found is not None:
            deployments.append(Deployment(found.provider, upstream, spec.weight,
                                          found.breaker))
            continue
        provider = providers.get(spec.provider)
        if provider is None:
            raise ConfigError(f"It sends to provider '{spec.provider}', which the config "
                              "no longer has.")
        name = f"{spec.provider}/{upstream}"
        breaker = CircuitBreaker(provider.config.circuit, name=name,
                                 on_change=_report(shared.metrics, name))
        deployments.append(Deployment(provider, upstream, spec.weight, breaker))
    target = ModelTarget(alias, model, deployments, RetryBudget(model.retry))
    missing = [n for n in model.fallbacks if n not in models]
    if missing:
        raise ConfigError(f"It falls back to {', '.join(missing)}, which the config no "
                          "longer has.")
    target.fallback_targets = [models[n] for n in model.fallbacks]
    _chain(target, f"models.{alias}", config, shared, cache_name=cache_name)
    return target


def _chain(target: ModelTarget | ServiceTarget, where: str, config: Config,
           shared: Shared, *, cache_name: str | None = None) -> None:
    """Install the standard chain (see the module docstring) on `target`; a model alias's
    rate limits, budget and admission are its outer part (`ModelTarget.use_split`)."""
    own = target.config
    name = target.name
    stages: list[Stage] = [RateLimitStage(name, shared.limiter, config.rate_limits,
                                          own.rate_limit, kind=target.kind)]
    if (isinstance(target, ModelTarget) and shared.budgets is not None
            and shared.budgets.budgets):
        price = (shared.prices or PriceTable()).bound(_priced(target))
        stages.append(BudgetStage(shared.budgets, price,
                                  default_max_tokens=config.rate_limits.default_max_tokens))
    label = "Model" if target.kind == "model" else "Service"
    local = (target.admission if isinstance(target, ServiceTarget)
             else Admission.from_config(f"{label} '{name}'", own.admission))
    # The gateway-wide admission is taken before the request is read (gateway.app.FastPath).
    scoped = [(local, name)] if local.max_in_flight is not None else []
    target.admissions = [a for a, _ in scoped]
    if scoped:
        stages.append(AdmissionStage(target.admissions, [scope for _, scope in scoped]))
    outer = len(stages)
    policy = (shared.escalations.for_model(name) if target.kind == "model"
              else shared.escalations.for_service(name))
    if policy is not None:
        stages.append(EscalationStage(shared.escalations, policy))
    if own.pii.mode != "off":
        stages.append(_pii_stage(own.pii, where, name, shared))
    guards: GuardsConfig = own.guards
    if guards.input or guards.output:
        inputs, outputs = build_guard_lists(guards, f"{where}.guards", target=name,
                                            metrics=shared.metrics)
        stages.append(GuardStage(name, guards, inputs, outputs, shared.guard_hooks))
    stages += [user_stage(spec, f"stages[{i}]") for i, spec in enumerate(config.stages)]
    stages += [user_stage(spec, f"{where}.stages[{i}]") for i, spec in enumerate(own.stages)]
    if own.cache.enabled:
        semantic = None
        if own.cache.semantic is not None:
            if not isinstance(target, ModelTarget) or target.config.type != "chat":
                raise ConfigError(
                    f"Config key '{where}.cache.semantic' is set, but the semantic cache "
                    "matches chat prompts only; remove it here (the exact cache stays).")
            semantic = semantic_cache(cache_name or name, own.cache.semantic,
                                      ttl_s=own.cache.ttl_s,
                                      store=shared.cache, where=f"{where}.cache.semantic")
        stages.append(CacheStage(name, own.cache, shared.cache, semantic=semantic,
                                 namespace=cache_name))
    if isinstance(target, ModelTarget):
        target.use_split(stages[:outer], stages[outer:])
    else:
        target.use(*stages)


def _priced(target: ModelTarget, seen: set[str] | None = None) -> list[str]:
    """Every name a request to `target` may be priced by: the alias, its upstream models, and
    those of its fallbacks (recursively)."""
    seen = seen if seen is not None else set()
    if target.alias in seen:
        return []
    seen.add(target.alias)
    names = [target.alias, *(d.model for d in target.deployments)]
    for fallback in target.fallback_targets:
        names += _priced(fallback, seen)
    return names


def _pii_stage(config: PIIConfig, where: str, name: str, shared: Shared) -> Stage:
    # The privacy engine (phone number rules and all) is loaded only when a target turns
    # personal data protection on.
    from shipyard.privacy.policy import PIIPolicy
    from shipyard.privacy.stage import PIIStage

    counter = shared.metrics.pii_findings

    def count(entity: str, found_in: str, n: int) -> None:
        counter.labels(name, entity, found_in).inc(n)

    return PIIStage(PIIPolicy(config, where, kv=shared.kv, cipher=shared.cipher,
                              persistent_kv=shared.persistent_kv, count=count))


def user_stage(spec: StageSpec, key: str) -> Stage:
    """Your own stage from `stages:` config: the class at `spec.stage`, built with its
    options; a problem names the config key and what to do."""
    found: Any = import_object(spec.stage, key=f"{key}.stage")
    if not (isinstance(found, type) and issubclass(found, Stage)):
        raise ConfigError(f"Config key '{key}.stage' is '{spec.stage}', which is not a "
                          "subclass of shipyard.Stage; point it at your Stage class.")
    try:
        stage: Stage = found(**spec.options)
        return stage
    except TypeError as exc:
        accepted = _options(found)
        raise ConfigError(f"Config key '{key}.options' does not fit '{spec.stage}' ({exc}); "
                          f"its options are: {', '.join(accepted) or 'none'}.") from None


def _options(cls: type) -> Sequence[str]:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind in (
        inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _warn_ungrounded(service: ServiceTarget) -> None:
    """A grounding guard needs context: the input's `context` field or a `shipyard.Result`.
    Say so once at start-up when neither is declared (each request's trace says `skipped`)."""
    if not any(spec.guard == "grounding" for spec in service.config.guards.output):
        return
    schema = service.input_schema() or {}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    declared = isinstance(properties, dict) and any(
        key in properties for key in ("context", "documents", "sources"))
    if not declared and not service.returns_context():
        log.warning(
            "service %s has a grounding guard, but its input declares no 'context' field and "
            "its function is not annotated to return shipyard.Result; answers are checked only "
            "when a request brings context (the trace says 'skipped: no context' otherwise). "
            "Return shipyard.Result(output=..., context=passages) from the function.",
            service.name)
