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
from datetime import datetime, timedelta

from sqlalchemy import Engine

from shipyard.config.alerting import SLOConfig
from shipyard.monitor.queries import Scope, WindowCounts, window_counts

__all__ = [
    "BurnCheck",
    "ErrorBudget",
    "SLOCounter",
    "SLOStatus",
    "burn_rate",
    "error_budget",
    "evaluate_slo",
]


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


def _windows(slo: SLOConfig, time_scale: float) -> list[float]:
    windows: list[float] = []
    for pair in slo.burn_rates:
        windows += [pair.long_window * time_scale, pair.short_window * time_scale]
    return windows


def _latency(slo: SLOConfig) -> float | None:
    return slo.latency_threshold_ms if slo.sli == "latency" else None


def evaluate_slo(engine: Engine, slo: SLOConfig, now: datetime, *,
                 time_scale: float = 1.0) -> SLOStatus:
    """Burn rates of every window pair of `slo`, ending at `now` (one query)."""
    windows = _windows(slo, time_scale)
    counts = window_counts(engine, _scope(slo), now, windows, latency_ms=_latency(slo))
    return _status(slo, counts, time_scale)


def _status(slo: SLOConfig, counts: list[WindowCounts], time_scale: float) -> SLOStatus:
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
class _Bucket:
    start: datetime
    end: datetime
    total: int
    bad: int


class SLOCounter:
    """`evaluate_slo` for an evaluator that runs every few seconds: windows up to the longest
    short window (the *horizon*, 6h with the workbook's table) are counted exactly each time;
    for longer windows (1d, 3d) the part older than the horizon is kept in buckets, so each
    evaluation reads only the horizon's traces plus the slice that just left it.

    The first evaluation fills the buckets with one exact query per long window (as rings
    between them); where a window's edge falls inside a bucket, the bucket counts in
    proportion to the overlap. The estimate is exact when traffic is even within a bucket,
    and buckets are at most one evaluation interval wide once the first ones age out.

    >>> counter = SLOCounter(engine, slo)  # doctest: +SKIP
    >>> counter.status(now).firing("page")  # doctest: +SKIP
    """

    def __init__(self, engine: Engine, slo: SLOConfig, *, time_scale: float = 1.0) -> None:
        self.engine, self.slo, self.time_scale = engine, slo, time_scale
        self.windows = _windows(slo, time_scale)
        self.horizon = max(p.short_window * time_scale for p in slo.burn_rates)
        self.long = sorted({w for w in self.windows if w > self.horizon})
        self.buckets: list[_Bucket] = []
        self.settled_until: datetime | None = None

    def status(self, now: datetime) -> SLOStatus:
        scope, latency = _scope(self.slo), _latency(self.slo)
        exact = sorted({w for w in self.windows if w <= self.horizon} | {self.horizon})
        counted = dict(zip(exact, window_counts(self.engine, scope, now, exact,
                                                latency_ms=latency), strict=True))
        if self.long:
            edge = now - timedelta(seconds=self.horizon)
            self._settle(edge, scope, latency)
            recent = counted[self.horizon]
            for w in self.long:
                total, bad = self._older(now - timedelta(seconds=w), edge)
                counted[w] = WindowCounts(recent.total + round(total), recent.bad + round(bad))
        return _status(self.slo, [counted[w] for w in self.windows], self.time_scale)

    def _settle(self, edge: datetime, scope: Scope, latency: float | None) -> None:
        if self.settled_until is None:  # first run: rings between the long windows
            spans = [w - self.horizon for w in self.long]
            counts = window_counts(self.engine, scope, edge, spans, latency_ms=latency)
            previous, inner = 0.0, WindowCounts(0, 0)
            for span, c in zip(spans, counts, strict=True):
                self.buckets.insert(0, _Bucket(
                    edge - timedelta(seconds=span), edge - timedelta(seconds=previous),
                    c.total - inner.total, c.bad - inner.bad))
                previous, inner = span, c
        elif edge > self.settled_until:
            span = (edge - self.settled_until).total_seconds()
            [c] = window_counts(self.engine, scope, edge, [span], latency_ms=latency)
            self.buckets.append(_Bucket(self.settled_until, edge, c.total, c.bad))
        self.settled_until = max(edge, self.settled_until or edge)
        oldest = edge - timedelta(seconds=self.long[-1])
        self.buckets = [b for b in self.buckets if b.end > oldest]

    def _older(self, start: datetime, edge: datetime) -> tuple[float, float]:
        total = bad = 0.0
        for b in self.buckets:
            lo, hi = max(b.start, start), min(b.end, edge)
            width = (b.end - b.start).total_seconds()
            if hi <= lo or width <= 0:
                continue
            share = (hi - lo).total_seconds() / width
            total += b.total * share
            bad += b.bad * share
        return total, bad


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
