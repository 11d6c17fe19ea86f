"""Rollout gates: the candidate against stable over the same window, from the traces table.

Each gate of `RolloutConfig.gates` (the list is `GATE_NAMES`) either passes, fails (with a
sentence saying by how much) or waits for data: a comparison needs `min_samples` requests of
each version in the window. Errors are server-side failures (5xx) only: a caller's bad input
is not the version's fault. Latency is the function's own time (`upstream_ms`), so a canary
answer and a shadow copy are measured alike.

A model alias (`model/ALIAS`) is judged from the same table: its traces carry the alias as
`service` and the configuration version that answered as `version`, whichever endpoint it
was called on (chat, completions, embeddings, responses, messages, jobs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, desc, func, select

from shipyard.config.lifecycle import GatesConfig, RolloutConfig
from shipyard.lifecycle.registry import ALIAS_PREFIX, Rollout, latest_eval
from shipyard.store.tables import drift_results, feedback, traces

__all__ = ["Check", "VersionStats", "check_gates", "traced_as", "version_stats"]


@dataclass(frozen=True)
class VersionStats:
    version: int
    requests: int
    errors: int
    blocked: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def block_rate(self) -> float:
        return self.blocked / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 5), "blocked": self.blocked,
                "block_rate": round(self.block_rate, 5),
                "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 3)}


@dataclass
class Check:
    """One evaluation of a rollout's gates."""

    stable: VersionStats
    candidate: VersionStats
    enough: bool  # both versions have min_samples in the window
    failures: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"stable": self.stable.to_dict(), "candidate": self.candidate.to_dict(),
                "enough": self.enough, "failures": self.failures, "passes": self.passes,
                "waiting": self.waiting}


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]


# The routes of a version's own answers, of a canary's failed attempts (stable answered
# them) and of shadow copies; a model alias answers on several routes, a service on one.
_ANSWERED = "answered"
_EXTRA = ("canary", "shadow")


def _routes(query: Any, routes: tuple[str, ...]) -> Any:
    if _ANSWERED not in routes:
        return query.where(traces.c.route.in_(routes))
    skipped = [r for r in _EXTRA if r not in routes]
    return query.where(traces.c.route.not_in(skipped)) if skipped else query


def traced_as(target: str) -> tuple[str, str]:
    """(the trace's `service`, the route of a version's own answers) for a registry target."""
    if target.startswith(ALIAS_PREFIX):
        return target[len(ALIAS_PREFIX):], _ANSWERED
    return target, "invoke"


def version_stats(engine: Engine, service: str, version: int, *, routes: tuple[str, ...],
                  since: datetime, until: datetime | None = None) -> VersionStats:
    """Requests, 5xx errors, guard blocks and p95 function latency of one version (a
    canary's failed attempts that stable answered are traces of route `canary`). `routes`
    may hold "answered": every route but `canary` and `shadow` (a model alias's)."""
    query = _routes(select(traces.c.status, traces.c.outcome, traces.c.upstream_ms).where(
        traces.c.service == service, traces.c.version == str(version),
        traces.c.started_at >= since), routes)
    if until is not None:
        query = query.where(traces.c.started_at < until)
    errors = blocked = requests = 0
    latencies: list[float] = []
    with engine.connect() as connection:
        for status, outcome, upstream_ms in connection.execute(query):
            if outcome in ("shed", "limited") or 400 <= status < 500:
                continue  # refused before the version ran, or the caller's mistake
            requests += 1
            if status >= 500:
                errors += 1
            if outcome in ("blocked", "escalated"):
                blocked += 1
            if upstream_ms is not None and status < 500:
                latencies.append(float(upstream_ms))
    return VersionStats(version, requests, errors, blocked, _p95(latencies))


def _feedback(engine: Engine, service: str, version: int,
              since: datetime) -> tuple[int, float | None]:
    query = select(func.count(feedback.c.score), func.avg(feedback.c.score)).where(
        feedback.c.service == service, feedback.c.version == str(version),
        feedback.c.created_at >= since, feedback.c.score.is_not(None))
    with engine.connect() as connection:
        count, mean = connection.execute(query).one()
    return int(count or 0), None if mean is None else float(mean)


def _drifted(engine: Engine, check: str, since: datetime) -> bool | None:
    query = (select(drift_results.c.dataset_drift, drift_results.c.at)
             .where(and_(drift_results.c.check_name == check, drift_results.c.at >= since))
             .order_by(desc(drift_results.c.at)).limit(1))
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else bool(row.dataset_drift)


def check_gates(engine: Engine, rollout: Rollout, policy: RolloutConfig,
                now: datetime) -> Check:
    """Evaluate every configured gate of `rollout` at `now`."""
    since = max(now - timedelta(seconds=policy.window_s), rollout.step_started_at)
    service, answered = traced_as(rollout.target)
    candidate_routes = ("shadow",) if rollout.mode == "shadow" else (answered, "canary")
    if rollout.mode == "canary" and rollout.share >= 100:
        # Stable serves nothing at the last step: compare with its last window before it.
        start = rollout.step_started_at
        stable = version_stats(engine, service, rollout.stable, routes=(answered,),
                               since=start - timedelta(seconds=policy.window_s), until=start)
    else:
        stable = version_stats(engine, service, rollout.stable, routes=(answered,),
                               since=since)
    candidate = version_stats(engine, service, rollout.candidate,
                              routes=candidate_routes, since=since)
    gates: GatesConfig = policy.gates
    enough = min(stable.requests, candidate.requests) >= policy.min_samples
    check = Check(stable, candidate, enough)
    if enough:
        _traffic_gates(check, gates)
    else:
        check.waiting.append(
            f"samples: {candidate.requests} candidate and {stable.requests} stable requests "
            f"in the window; each needs {policy.min_samples}")
    if gates.feedback_score is not None:
        n_c, mean_c = _feedback(engine, service, rollout.candidate, since)
        n_s, mean_s = _feedback(engine, service, rollout.stable, since)
        if min(n_c, n_s) < gates.min_feedback or mean_c is None or mean_s is None:
            check.waiting.append(f"feedback_score: {n_c} candidate and {n_s} stable scores; "
                                 f"each needs {gates.min_feedback}")
        elif mean_c < mean_s - gates.feedback_score:
            check.failures.append(f"feedback_score: candidate mean {mean_c:.3f} is more than "
                                  f"{gates.feedback_score:g} below stable's {mean_s:.3f}")
        else:
            check.passes.append(f"feedback_score: {mean_c:.3f} vs {mean_s:.3f}")
    if gates.eval_score is not None:
        found = latest_eval(engine, rollout.target, rollout.candidate)
        value = None if found is None else found["metrics"].get(gates.eval_metric)
        if not isinstance(value, int | float):
            check.failures.append(f"eval_score: version {rollout.candidate} has no stored "
                                  f"'{gates.eval_metric}' (run shipyard eval --store)")
        elif value < gates.eval_score:
            check.failures.append(f"eval_score: {gates.eval_metric} {value:.4f} is below "
                                  f"{gates.eval_score:g}")
        else:
            check.passes.append(f"eval_score: {gates.eval_metric} {value:.4f}")
    if gates.drift is not None:
        drifted = _drifted(engine, gates.drift, rollout.started_at)
        if drifted:
            check.failures.append(f"drift: check '{gates.drift}' found dataset drift since "
                                  "the rollout started")
        else:
            check.passes.append(f"drift: '{gates.drift}' "
                                + ("no result yet" if drifted is None else "no drift"))
    return check


def _traffic_gates(check: Check, gates: GatesConfig) -> None:
    stable, candidate = check.stable, check.candidate
    if gates.error_rate is not None:
        if candidate.error_rate > stable.error_rate + gates.error_rate:
            check.failures.append(
                f"error_rate: candidate {100 * candidate.error_rate:.2f}% vs stable "
                f"{100 * stable.error_rate:.2f}% (allowed +{100 * gates.error_rate:g} points)")
        else:
            check.passes.append(f"error_rate: {100 * candidate.error_rate:.2f}% vs "
                                f"{100 * stable.error_rate:.2f}%")
    if gates.latency_p95_ratio is not None and stable.p95_ms and candidate.p95_ms is not None:
        ratio = candidate.p95_ms / stable.p95_ms
        # Sub-millisecond p95s jitter by multiples; a gate on them would flap.
        if ratio > gates.latency_p95_ratio and candidate.p95_ms - stable.p95_ms > 1.0:
            check.failures.append(
                f"latency_p95_ratio: candidate p95 {candidate.p95_ms:.1f} ms is {ratio:.2f}x "
                f"stable's {stable.p95_ms:.1f} ms (allowed {gates.latency_p95_ratio:g}x)")
        else:
            check.passes.append(f"latency_p95_ratio: {ratio:.2f}x")
    if gates.guard_block_rate is not None:
        if candidate.block_rate > stable.block_rate + gates.guard_block_rate:
            check.failures.append(
                f"guard_block_rate: candidate {100 * candidate.block_rate:.2f}% vs stable "
                f"{100 * stable.block_rate:.2f}% (allowed +{100 * gates.guard_block_rate:g} "
                "points)")
        else:
            check.passes.append(f"guard_block_rate: {100 * candidate.block_rate:.2f}%")
