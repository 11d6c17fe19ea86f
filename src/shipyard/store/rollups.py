"""Per-minute and per-hour trace rollups: written with every trace batch, read by the dashboard.

The trace writer aggregates each batch in Python (`aggregate`) and upserts the result
(`upsert`) in the same transaction as the traces, so a rollup never counts a trace the store
does not hold. Dashboards read rollups only (`series`, `summary`, `breakdown`, `top_errors`):
windows under 12 hours read minute rows, longer ones hour rows, so a page over a week sums at
most 168 rows per service, model and status, however many millions of traces it holds.
Percentiles come from the latency histogram kept per row (`LATENCY_BOUNDS_MS`), interpolated
inside the bucket.

>>> from shipyard.store.traces import new_trace_record
>>> aggregate([new_trace_record(route="chat", status=200, total_ms=12.0)])[0]["requests"]
1
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shipyard.store.tables import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    SIDE_ROUTES,
    trace_rollups,
    traces,
)

__all__ = [
    "Point",
    "Window",
    "aggregate",
    "breakdown",
    "percentile",
    "rebuild",
    "series",
    "span_for",
    "summary",
    "top_errors",
    "upsert",
    "window",
]

_KEY = ("tenant_id", "span", "minute", "service", "model", "status", "error_type")
MINUTE, HOUR = 1, 60
_BUCKETS = tuple(f"b{i}" for i in range(LATENCY_BUCKETS))
_OUTCOMES = ("blocked", "escalated", "fixed", "shed")
_SUMS = ("requests", "errors", "latency_sum_ms", "prompt_tokens", "completion_tokens",
         "cost_usd", *_OUTCOMES, *_BUCKETS)
_FIRST_BUCKET = 6 + len(_OUTCOMES)


def _minute(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp()) // 60


def aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rollup rows for `rows`: one per (tenant, minute, service, model, status, error type),
    and the same per hour (summed from the minutes, so the hour costs next to nothing)."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    n = len(_SUMS)
    for row in rows:
        if row.get("route") in SIDE_ROUTES:
            continue  # not a caller's request (a shadow copy, a canary's failed attempt)
        status = int(row["status"])
        key = (row["tenant_id"] or "default", MINUTE, _minute(row["started_at"]),
               row["service"] or "", row["model_alias"] or "", status,
               (row["error_type"] or "") if status >= 400 else "")
        sums = groups.get(key)
        if sums is None:
            sums = groups[key] = [0] * n
        # `count`: a rollup-only record standing for that many identical requests (the sheds
        # of one second); its total_ms, tokens and cost are per request.
        many = row.get("count") or 1
        total = float(row["total_ms"] or 0.0)
        sums[0] += many
        sums[1] += many if status >= 400 else 0
        sums[2] += total * many
        sums[3] += (row["prompt_tokens"] or 0) * many
        sums[4] += (row["completion_tokens"] or 0) * many
        sums[5] += (row["cost_usd"] or 0.0) * many
        outcome = row.get("outcome")
        if outcome in _OUTCOMES:
            sums[6 + _OUTCOMES.index(outcome)] += many
        sums[_FIRST_BUCKET + bisect_left(LATENCY_BOUNDS_MS, total)] += many
    hours: dict[tuple[Any, ...], list[Any]] = {}
    for key, sums in groups.items():
        hour = (key[0], HOUR, key[2] - key[2] % 60, *key[3:])
        into = hours.get(hour)
        if into is None:
            hours[hour] = list(sums)
        else:
            for i, value in enumerate(sums):
                into[i] += value
    groups.update(hours)
    return [dict(zip(_KEY + _SUMS, (*key, *sums), strict=True)) for key, sums in groups.items()]


def span_for(since: datetime, until: datetime, step_minutes: int = 60) -> int:
    """Hourly rollups for windows of 12 hours or more (when the step allows), else minutes."""
    long = until - since >= timedelta(hours=12)
    return HOUR if long and step_minutes % 60 == 0 else MINUTE


_UPSERTS: dict[str, Any] = {}


def _upsert_statement(dialect: str) -> Any:
    """Built once per dialect, so SQLAlchemy's compiled-statement cache serves every batch."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        if dialect == "sqlite":
            stmt = sqlite_insert(trace_rollups)
        elif dialect == "postgresql":
            stmt = pg_insert(trace_rollups)
        else:  # pragma: no cover - Shipyard stores are SQLite or PostgreSQL
            raise NotImplementedError(f"rollups need SQLite or PostgreSQL, not {dialect}")
        stmt = _UPSERTS[dialect] = stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={name: trace_rollups.c[name] + stmt.excluded[name] for name in _SUMS})
    return stmt


def upsert(connection: Connection, rollups: Sequence[dict[str, Any]]) -> None:
    """Add `rollups` to the stored ones (insert, or sum into an existing row)."""
    if rollups:
        connection.execute(_upsert_statement(connection.dialect.name), list(rollups))


def rebuild(engine: Engine, *, since: datetime | None = None,
            window: timedelta = timedelta(hours=6)) -> int:
    """Recompute rollups from the stored traces (from `since`, else all); returns traces read.

    For traces stored before rollups existed, or after a restore. Minutes from `since` on are
    replaced, so run it with the gateway stopped or over minutes no longer written to. Traces
    are read `window` at a time (through the started_at index), so memory stays bounded.
    """
    columns = [traces.c[c] for c in ("tenant_id", "started_at", "service", "model_alias",
                                     "status", "error_type", "total_ms", "prompt_tokens",
                                     "completion_tokens", "cost_usd", "outcome", "route")]
    read = 0
    with engine.begin() as connection:
        first, last = connection.execute(
            select(func.min(traces.c.started_at), func.max(traces.c.started_at))).one()
        start = None if since is None else datetime.fromtimestamp(_minute(since) * 60, UTC)
        wipe = delete(trace_rollups)
        if start is not None:
            wipe = wipe.where(trace_rollups.c.minute >= _minute(start))
        connection.execute(wipe)
        if first is None:
            return 0
        at = _aware(first) if start is None else max(start, _aware(first))
        end = _aware(last)
        while at <= end:
            upto = at + window
            rows = [dict(r) for r in connection.execute(
                select(*columns).where(traces.c.started_at >= at,
                                       traces.c.started_at < upto)).mappings()]
            read += len(rows)
            upsert(connection, aggregate(rows))
            at = upto
    return read


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The `q` quantile (0-1) of a latency histogram, interpolated inside its bucket (ms)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            high = LATENCY_BOUNDS_MS[i]
            return float(low + (high - low) * (rank - seen) / count)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


@dataclass
class Point:
    """Sums over a span of minutes (one point of a chart, or a whole window)."""

    minute: int = 0
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    blocked: int = 0
    escalated: int = 0
    fixed: int = 0
    shed: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.minute * 60, UTC)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def healthy(self) -> int:
        """Requests answered normally: not an error, not a polite refusal or handover."""
        return max(0, self.requests - self.errors - self.blocked - self.escalated)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def mean_ms(self) -> float | None:
        return self.latency_sum_ms / self.requests if self.requests else None

    def p(self, q: float) -> float | None:
        return percentile(self.buckets, q)


def _sums() -> list[Any]:
    return [func.coalesce(func.sum(trace_rollups.c[name]), 0).label(name) for name in _SUMS]


def _where(tenant_id: str, since: datetime, until: datetime, service: str | None,
           span: int | None = None) -> Any:
    """Rows of the window; hourly rows cover the hours the window touches (so a day's window
    starts at the top of its first hour)."""
    span = span_for(since, until) if span is None else span
    start = _minute(since)
    clauses = [trace_rollups.c.tenant_id == tenant_id, trace_rollups.c.span == span,
               trace_rollups.c.minute >= start - start % span,
               trace_rollups.c.minute < _minute(until) + 1]
    if service is not None:
        clauses.append(trace_rollups.c.service == service)
    return and_(*clauses)


def _point(row: Any, minute: int = 0) -> Point:
    return Point(minute=minute, requests=int(row.requests), errors=int(row.errors),
                 latency_sum_ms=float(row.latency_sum_ms), prompt_tokens=int(row.prompt_tokens),
                 completion_tokens=int(row.completion_tokens), cost_usd=float(row.cost_usd),
                 blocked=int(row.blocked), escalated=int(row.escalated), fixed=int(row.fixed),
                 shed=int(row.shed), buckets=[int(getattr(row, b)) for b in _BUCKETS])


def series(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
           step_minutes: int, service: str | None = None) -> list[Point]:
    """Points every `step_minutes` from `since` to `until` (minutes without traffic included)."""
    step = max(1, step_minutes)
    span = span_for(since, until, step)
    slot = (trace_rollups.c.minute // step).label("slot")
    query = (select(slot, *_sums()).where(_where(tenant_id, since, until, service, span))
             .group_by(slot).order_by(slot))
    with engine.connect() as connection:
        found = {int(row.slot): row for row in connection.execute(query)}
    first, last = _minute(since) // step, _minute(until) // step
    return [_point(found[s], s * step) if s in found else Point(minute=s * step)
            for s in range(first, last + 1)]


def summary(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
            service: str | None = None) -> Point:
    """Totals (and the latency histogram) over a window."""
    query = select(*_sums()).where(_where(tenant_id, since, until, service))
    with engine.connect() as connection:
        return _point(connection.execute(query).one())


def breakdown(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
              by: str = "service", service: str | None = None) -> list[tuple[str, Point]]:
    """Totals per service or per model over a window, busiest first."""
    if by not in ("service", "model"):
        raise ValueError(f"breakdown is by 'service' or 'model', not {by!r}")
    group = trace_rollups.c[by]
    query = (select(group.label("name"), *_sums())
             .where(_where(tenant_id, since, until, service)).group_by(group))
    with engine.connect() as connection:
        rows = [(str(row.name), _point(row)) for row in connection.execute(query)]
    return sorted(rows, key=lambda item: -item[1].requests)


def top_errors(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
               service: str | None = None, limit: int = 10,
               span: int | None = None) -> list[dict[str, Any]]:
    """The most frequent (status, error type) pairs over a window."""
    count = func.sum(trace_rollups.c.requests).label("n")
    query = (select(trace_rollups.c.status, trace_rollups.c.error_type, count)
             .where(_where(tenant_id, since, until, service, span),
                    trace_rollups.c.status >= 400)
             .group_by(trace_rollups.c.status, trace_rollups.c.error_type)
             .order_by(count.desc()).limit(limit))
    with engine.connect() as connection:
        return [{"status": int(r.status), "error_type": r.error_type or "-",
                 "count": int(r.n)} for r in connection.execute(query)]


@dataclass
class Window:
    """Everything a traffic page shows about one window, from one rollup query."""

    points: list[Point]
    total: Point
    breakdown: list[tuple[str, Point]]
    errors: list[dict[str, Any]]


def _add(point: Point, values: Sequence[Any]) -> None:
    point.requests += values[0]
    point.errors += values[1]
    point.latency_sum_ms += values[2]
    point.prompt_tokens += values[3]
    point.completion_tokens += values[4]
    point.cost_usd += values[5]
    point.blocked += values[6]
    point.escalated += values[7]
    point.fixed += values[8]
    point.shed += values[9]
    point.buckets = [a + b for a, b in zip(point.buckets, values[_FIRST_BUCKET:], strict=True)]


def window(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
           step_minutes: int, service: str | None = None, by: str = "service",
           errors_limit: int = 10) -> Window:
    """`series`, `summary`, `breakdown` and `top_errors` of one window in two queries: rows
    grouped by (point, `by`) folded together in Python, and the top errors."""
    if by not in ("service", "model"):
        raise ValueError(f"window breakdown is by 'service' or 'model', not {by!r}")
    step = max(1, step_minutes)
    span = span_for(since, until, step)
    slot = (trace_rollups.c.minute // step).label("slot")
    group = trace_rollups.c[by]
    query = (select(slot, group.label("name"), *_sums())
             .where(_where(tenant_id, since, until, service, span)).group_by(slot, group))
    first, last = _minute(since) // step, _minute(until) // step
    points = {s: Point(minute=s * step) for s in range(first, last + 1)}
    total = Point()
    names: dict[str, Point] = {}
    with engine.connect() as connection:
        for at, name, *values in connection.execute(query):
            # Rows of the hour before a day's window (hourly rows) count in its first point.
            _add(points.get(at) or points[first], values)
            _add(total, values)
            _add(names.setdefault(str(name), Point()), values)
    return Window(points=[points[s] for s in sorted(points)], total=total,
                  breakdown=sorted(names.items(), key=lambda item: -item[1].requests),
                  errors=top_errors(engine, tenant_id=tenant_id, since=since, until=until,
                                    service=service, limit=errors_limit, span=span))
