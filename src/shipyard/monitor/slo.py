"""SLOs: error budgets and multi-window, multi-burn-rate alerts (Google SRE workbook, ch. 5).

The burn rate is how fast the error budget is being spent: an error ratio of `1 - objective`
spends it exactly over the SLO period (burn rate 1). A condition fires when *both* its long
and its short window burn faster than its rate: the long window makes it significant, the
short one makes it reset quickly once the problem is fixed.

>>> burn_rate(0.0144, 0.999)
14.4
>>> budget = ErrorBudget(objective=0.999, total=100_000, bad=50)
>>> budget.allowed, budget.remaining
(100.0, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from shipyard.config.alerting import SLOConfig
from shipyard.monitor.queries import Scope, window_counts

__all__ = ["BurnCheck", "ErrorBudget", "SLOStatus", "burn_rate", "error_budget", "evaluate_slo"]


def burn_rate(error_ratio: float, objective: float) -> float:
    """How many times faster than "exactly on budget" errors arrive."""
    return round(error_ratio / (1.0 - objective), 10)


@dataclass(frozen=True)
class BurnCheck:
    """One long/short window pair and whether both burn faster than `threshold`."""

    severity: str
    long_window_s: float
    short_window_s: float
    threshold: float
    long_burn: float | None
    short_burn: float | None
    short_requests: int

    @property
    def firing(self) -> bool:
        return (self.long_burn is not None and self.short_burn is not None
                and self.long_burn > self.threshold and self.short_burn > self.threshold)


@dataclass(frozen=True)
class SLOStatus:
    """The burn checks of one SLO at one instant."""

    slo: str
    checks: list[BurnCheck]

    def firing(self, severity: str) -> BurnCheck | None:
        """The first firing check of `severity` (the fastest burn listed first), if any."""
        for check in self.checks:
            if check.severity == severity and check.firing:
                return check
        return None

    def severities(self) -> list[str]:
        return list(dict.fromkeys(c.severity for c in self.checks))


def _scope(slo: SLOConfig) -> Scope:
    return Scope(service=slo.service, model=slo.model, tenant=slo.tenant)


def evaluate_slo(engine: Engine, slo: SLOConfig, now: datetime, *,
                 time_scale: float = 1.0) -> SLOStatus:
    """Burn rates of every window pair of `slo`, ending at `now` (one query)."""
    windows: list[float] = []
    for pair in slo.burn_rates:
        windows += [pair.long_window * time_scale, pair.short_window * time_scale]
    counts = window_counts(engine, _scope(slo), now, windows,
                           latency_ms=slo.latency_threshold_ms if slo.sli == "latency" else None)
    checks = []
    for i, pair in enumerate(slo.burn_rates):
        long, short = counts[2 * i], counts[2 * i + 1]
        enough = short.total >= max(1, slo.min_requests)
        burns = [None if ratio is None or not enough else burn_rate(ratio, slo.objective)
                 for ratio in (long.error_ratio, short.error_ratio)]
        checks.append(BurnCheck(pair.severity, pair.long_window * time_scale,
                                pair.short_window * time_scale, pair.burn_rate,
                                burns[0], burns[1], short.total))
    return SLOStatus(slo.name, checks)


@dataclass(frozen=True)
class ErrorBudget:
    """The budget of one period: bad requests allowed, spent, and the share left."""

    objective: float
    total: int
    bad: int

    @property
    def allowed(self) -> float:
        return round((1.0 - self.objective) * self.total, 6)

    @property
    def remaining(self) -> float:
        """1.0 untouched, 0.0 spent, negative overspent; 1.0 with no traffic."""
        if self.allowed <= 0:
            return 1.0 if self.bad == 0 else 0.0
        return round(1.0 - self.bad / self.allowed, 6)

    @property
    def sli(self) -> float | None:
        return None if self.total == 0 else 1.0 - self.bad / self.total


def error_budget(engine: Engine, slo: SLOConfig, now: datetime, *,
                 time_scale: float = 1.0) -> ErrorBudget:
    """The error budget of the SLO period ending at `now`."""
    [counts] = window_counts(
        engine, _scope(slo), now, [slo.period * time_scale],
        latency_ms=slo.latency_threshold_ms if slo.sli == "latency" else None)
    return ErrorBudget(slo.objective, counts.total, counts.bad)
