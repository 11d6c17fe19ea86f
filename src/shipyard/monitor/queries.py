"""Metrics of a time window, computed from the traces table with indexed range queries.

Every query is bounded by `started_at >= since AND started_at < until`, so SQLite and
PostgreSQL answer from the `(started_at)`, `(service, started_at)` or `(tenant_id, started_at)`
indexes instead of scanning the table.

>>> scope = Scope(service="support")  # doctest: +SKIP
>>> metric_value(engine, "error_rate", scope, since, until)  # doctest: +SKIP
0.02
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, case, func, select, text

from shipyard.store.tables import SIDE_ROUTES, traces

__all__ = ["RATIO_METRICS", "Scope", "WindowCounts", "custom_query", "metric_value",
           "window_counts"]

# Metrics that are ratios or percentiles: undefined (no data) below `min_requests`.
RATIO_METRICS = frozenset({"error_rate", "client_error_rate", "latency_p50_ms",
                           "latency_p95_ms", "latency_p99_ms", "ttft_p95_ms",
                           "cache_hit_rate"})
_PERCENTILES = {"latency_p50_ms": (traces.c.total_ms, 0.50),
                "latency_p95_ms": (traces.c.total_ms, 0.95),
                "latency_p99_ms": (traces.c.total_ms, 0.99),
                "ttft_p95_ms": (traces.c.ttft_ms, 0.95)}


@dataclass(frozen=True, kw_only=True)
class Scope:
    """Which traces count: by service (or model alias), model alias and tenant."""

    service: str | None = None
    model: str | None = None
    tenant: str | None = None

    def where(self, since: datetime, until: datetime) -> list[ColumnElement[bool]]:
        clauses = [traces.c.started_at >= since, traces.c.started_at < until,
                   traces.c.route.not_in(SIDE_ROUTES)]
        if self.service is not None:
            clauses.append(traces.c.service == self.service)
        if self.model is not None:
            clauses.append(traces.c.model_alias == self.model)
        if self.tenant is not None:
            clauses.append(traces.c.tenant_id == self.tenant)
        return clauses


@dataclass(frozen=True)
class WindowCounts:
    """Requests and bad requests (5xx, or slower than a latency threshold) in one window."""

    total: int
    bad: int

    @property
    def error_ratio(self) -> float | None:
        return self.bad / self.total if self.total else None


def _bad(latency_ms: float | None) -> ColumnElement[bool]:
    if latency_ms is None:
        return traces.c.status >= 500
    return traces.c.total_ms > latency_ms


def window_counts(engine: Engine, scope: Scope, until: datetime, windows: Sequence[float],
                  *, latency_ms: float | None = None) -> list[WindowCounts]:
    """Total and bad requests for each window ending at `until` — one range scan for all.

    Bad means a 5xx answer (availability) or, with `latency_ms`, a slower one (latency).
    """
    if not windows:
        return []
    starts = [until - timedelta(seconds=w) for w in windows]
    bad = _bad(latency_ms)
    columns: list[Any] = []
    for start in starts:
        inside = traces.c.started_at >= start
        columns.append(func.sum(case((inside, 1), else_=0)))
        columns.append(func.sum(case((and_(inside, bad), 1), else_=0)))
    query = select(*columns).where(*scope.where(min(starts), until))
    with engine.connect() as connection:
        row = connection.execute(query).one()
    return [WindowCounts(int(row[2 * i] or 0), int(row[2 * i + 1] or 0))
            for i in range(len(starts))]


def _percentile(engine: Engine, column: Any, q: float, where: list[ColumnElement[bool]],
                ) -> tuple[float | None, int]:
    where = [*where, column.is_not(None)]
    with engine.connect() as connection:
        n = int(connection.execute(select(func.count()).select_from(traces).where(*where))
                .scalar_one())
        if n == 0:
            return None, 0
        # Nearest-rank percentile: the same answer on SQLite (no percentile_cont) and
        # PostgreSQL, read from the window's rows only.
        rank = min(n, max(1, math.ceil(q * n - 1e-9)))
        value = connection.execute(select(column).where(*where).order_by(column)
                                   .offset(rank - 1).limit(1)).scalar_one()
    return float(value), n


def metric_value(engine: Engine, metric: str, scope: Scope, since: datetime,
                 until: datetime, *, min_requests: int = 1) -> float | None:
    """The value of `metric` over [since, until), or None when there is no data."""
    where = scope.where(since, until)
    seconds = max((until - since).total_seconds(), 1e-9)
    if metric in _PERCENTILES:
        column, q = _PERCENTILES[metric]
        value, n = _percentile(engine, column, q, where)
        return value if n >= max(1, min_requests) else None
    tokens = func.coalesce(traces.c.total_tokens, 0)
    cache = traces.c.attributes.like('%"cache":"%')
    hit = traces.c.attributes.like('%"cache":"hit"%')
    query = select(
        func.count(),
        func.sum(case((traces.c.status >= 500, 1), else_=0)),
        func.sum(case((and_(traces.c.status >= 400, traces.c.status < 500), 1), else_=0)),
        func.sum(tokens),
        func.sum(func.coalesce(traces.c.cost_usd, 0.0)),
        func.sum(case((traces.c.error_type == "CapacityError", 1), else_=0)),
        func.sum(case((cache, 1), else_=0)) if metric == "cache_hit_rate" else text("0"),
        func.sum(case((hit, 1), else_=0)) if metric == "cache_hit_rate" else text("0"),
    ).where(*where)
    with engine.connect() as connection:
        row = connection.execute(query).one()
    total, errors, client_errors, n_tokens, cost, shed, lookups, hits = (
        int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0),
        float(row[4] or 0.0), int(row[5] or 0), int(row[6] or 0), int(row[7] or 0))
    if metric in RATIO_METRICS:
        denominator = lookups if metric == "cache_hit_rate" else total
        if denominator == 0 or total < min_requests:
            return None
        numerator = {"error_rate": errors, "client_error_rate": client_errors,
                     "cache_hit_rate": hits}[metric]
        return numerator / denominator
    values = {"requests": float(total), "request_rate": total / seconds,
              "tokens": float(n_tokens), "tokens_per_minute": n_tokens / seconds * 60,
              "cost_per_hour": cost / seconds * 3600, "shed_requests": float(shed)}
    if metric not in values:
        raise ValueError(f"unknown metric {metric!r}")
    return values[metric]


def custom_query(engine: Engine, sql: str, since: datetime, until: datetime) -> float | None:
    """Run a rule's own SELECT (`:since`/`:until` bound) read-only; its first cell, as a number.

    The transaction is rolled back, never committed. The query comes from the operator's
    config, which is trusted like any other code path it configures.
    """
    statement = text(sql)
    params = {k: v for k, v in {"since": since, "until": until}.items()
              if k in statement.compile().params}
    with engine.connect() as connection:
        try:
            value = connection.execute(statement, params).scalar()
        finally:
            connection.rollback()
    return None if value is None else float(value)
