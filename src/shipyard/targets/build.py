"""Build the serving side of each model alias from config: deployments with circuit breakers,
retry budgets, fallback chains and the pipeline stages (admission, cache)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from shipyard.config.schema import Config
from shipyard.guards.answers import GuardHooks
from shipyard.guards.registry import build_guard_lists
from shipyard.guards.stage import GuardStage
from shipyard.observe.metrics import Metrics
from shipyard.pipeline import Stage
from shipyard.providers import Provider
from shipyard.resilience.admission import Admission
from shipyard.resilience.cache import CacheStage
from shipyard.resilience.circuit import STATE_VALUE, CircuitBreaker
from shipyard.resilience.failover import Deployment
from shipyard.resilience.retry import RetryBudget
from shipyard.resilience.stages import AdmissionStage
from shipyard.security.budgets import BudgetGuard, BudgetStage
from shipyard.security.limits_stage import RateLimitStage
from shipyard.security.pricing import PriceTable
from shipyard.security.ratelimit import RateLimiter
from shipyard.state.base import KeyValue
from shipyard.targets.model import ModelTarget

__all__ = ["build_targets"]

log = logging.getLogger("shipyard.resilience")


def _report(metrics: Metrics, name: str) -> Callable[[str, str], None]:
    def on_change(old: str, new: str) -> None:
        metrics.circuit_state.labels(name).set(STATE_VALUE[new])
        metrics.circuit_transitions.labels(name, new).inc()
        log.warning("circuit of %s: %s -> %s", name, old, new)

    return on_change


def build_targets(config: Config, providers: Mapping[str, Provider], metrics: Metrics,
                  *, global_admission: Admission, cache_store: KeyValue,
                  limiter: RateLimiter,
                  guard_hooks: GuardHooks | None = None,
                  budgets: BudgetGuard | None = None,
                  prices: PriceTable | None = None) -> dict[str, ModelTarget]:
    """One `ModelTarget` per alias; deployments (and their breakers) are shared by aliases
    that name the same provider and upstream model."""
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

    targets: dict[str, ModelTarget] = {}
    for alias, model in config.models.items():
        chosen = [deployment(d.provider, d.model or alias, d.weight)
                  for d in model.targets(alias)]
        targets[alias] = ModelTarget(alias, model, chosen, RetryBudget(model.retry))
    for alias, target in targets.items():
        target.fallback_targets = [targets[name] for name in target.config.fallbacks]
        stages: list[Stage] = [RateLimitStage(alias, limiter, config.rate_limits,
                                              target.config.rate_limit)]
        if budgets is not None and budgets.budgets:
            stages.append(BudgetStage(budgets, (prices or PriceTable()).bound(_priced(target)),
                                      default_max_tokens=config.rate_limits.default_max_tokens))
        service_admission = Admission.from_config(f"Model '{alias}'", target.config.admission)
        scoped = [(a, scope) for a, scope in ((global_admission, "global"),
                                               (service_admission, alias))
                  if a.max_in_flight is not None]
        admissions = [a for a, _ in scoped]
        if admissions:
            stages.append(AdmissionStage(admissions, [scope for _, scope in scoped]))
        target.admissions = admissions
        guards = target.config.guards
        if guards.input or guards.output:  # no guards configured: no stage, no cost
            inputs, outputs = build_guard_lists(guards, f"models.{alias}.guards", target=alias,
                                                metrics=metrics)
            stages.append(GuardStage(alias, guards, inputs, outputs,
                                     guard_hooks or GuardHooks()))
        if target.config.cache.enabled:
            stages.append(CacheStage(alias, target.config.cache, cache_store))
        if stages:
            target.use(*stages)
    return targets


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
