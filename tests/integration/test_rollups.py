"""Rollups written by the trace writer match the raw traces, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shipyard.store import create_store_engine, migrate
from shipyard.store.rollups import (
    breakdown,
    percentile,
    rebuild,
    series,
    summary,
    top_errors,
    window,
)
from shipyard.store.tables import LATENCY_BOUNDS_MS, trace_rollups, traces
from shipyard.store.traces import new_trace_record
from shipyard.store.writer import TraceWriter

NOW = datetime.now(UTC).replace(second=30, microsecond=0)


def _traces(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        status = rng.choice([200] * 8 + [429, 502])
        rows.append(new_trace_record(
            route="chat", status=status, tenant_id=rng.choice(["acme", "globex"]),
            service=rng.choice(["support", "search", None]), model_alias=rng.choice(["a", "b"]),
            started_at=NOW - timedelta(seconds=rng.uniform(0, 3 * 3600)),
            total_ms=rng.lognormvariate(4, 1), prompt_tokens=rng.randint(1, 500),
            completion_tokens=rng.choice([None, rng.randint(1, 300)]),
            cost_usd=rng.choice([None, rng.uniform(0, 0.01)]),
            error_type={429: "RateLimited", 502: "UpstreamError"}.get(status),
            request_id=f"r{i}"))
    return rows


def _from_traces(engine: Any) -> dict[tuple[Any, ...], list[float]]:
    out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0, 0, 0.0])
    with engine.connect() as connection:
        for r in connection.execute(select(traces)).mappings():
            at = r["started_at"] if r["started_at"].tzinfo else r["started_at"].replace(
                tzinfo=UTC)
            key = (r["tenant_id"], int(at.timestamp()) // 60, r["service"] or "",
                   r["model_alias"] or "", r["status"])
            sums = out[key]
            sums[0] += 1
            sums[1] += r["status"] >= 400
            sums[2] += r["total_ms"]
            sums[3] += r["prompt_tokens"] or 0
            sums[4] += r["completion_tokens"] or 0
            sums[5] += r["cost_usd"] or 0.0
    return out


def _from_rollups(engine: Any, span: int = 1) -> dict[tuple[Any, ...], list[float]]:
    out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0, 0, 0.0])
    with engine.connect() as connection:
        for r in connection.execute(select(trace_rollups).where(
                trace_rollups.c.span == span)).mappings():
            key = (r["tenant_id"], r["minute"], r["service"], r["model"], r["status"])
            sums = out[key]
            for i, name in enumerate(("requests", "errors", "latency_sum_ms", "prompt_tokens",
                                      "completion_tokens", "cost_usd")):
                sums[i] += r[name]
            assert sum(r[f"b{i}"] for i in range(len(LATENCY_BOUNDS_MS) + 1)) == r["requests"]
    return out


def _same(a: dict[tuple[Any, ...], list[float]], b: dict[tuple[Any, ...], list[float]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert abs(x - y) <= 1e-6 * max(1.0, abs(x)), (key, a[key], b[key])


def test_rollups_match_raw_traces(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine)
    rows = _traces(3000)
    writer = TraceWriter(engine, batch_size=256)
    writer.start()
    for row in rows:
        writer.submit(row)
    writer.stop()
    # A replayed batch (the spool after a crash) must not count twice.
    writer._insert_checked(rows[:300])
    assert writer.written == 3000

    raw = _from_traces(engine)
    _same(raw, _from_rollups(engine))
    hourly: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0, 0, 0.0])
    for (tenant, minute, *rest), sums in raw.items():
        into = hourly[(tenant, minute - minute % 60, *rest)]
        for i, value in enumerate(sums):
            into[i] += value
    _same(hourly, _from_rollups(engine, span=60))

    # Dashboard queries over the rollups agree with the raw rows.
    since, until = NOW - timedelta(hours=4), NOW + timedelta(minutes=1)
    acme = [r for r in rows if r["tenant_id"] == "acme"]
    total = summary(engine, tenant_id="acme", since=since, until=until)
    assert total.requests == len(acme)
    assert total.errors == sum(r["status"] >= 400 for r in acme)
    assert total.prompt_tokens == sum(r["prompt_tokens"] for r in acme)
    points = series(engine, tenant_id="acme", since=since, until=until, step_minutes=15)
    assert sum(p.requests for p in points) == len(acme)
    assert len(points) == len({p.minute for p in points})
    support = summary(engine, tenant_id="acme", since=since, until=until, service="support")
    assert support.requests == sum(r["service"] == "support" for r in acme)
    errors = {(e["status"], e["error_type"]): e["count"]
              for e in top_errors(engine, tenant_id="acme", since=since, until=until)}
    assert errors[(502, "UpstreamError")] == sum(r["status"] == 502 for r in acme)

    # The one-query window the pages use agrees with the separate queries.
    for step in (15, 60):
        seen = window(engine, tenant_id="acme", since=since, until=until, step_minutes=step)
        alone = series(engine, tenant_id="acme", since=since, until=until,
                       step_minutes=step)
        assert [(p.minute, p.requests, p.errors, p.tokens, p.buckets) for p in seen.points] == [
            (p.minute, p.requests, p.errors, p.tokens, p.buckets) for p in alone]
        assert [p.cost_usd for p in seen.points] == pytest.approx([p.cost_usd for p in alone])
        assert seen.total.buckets == total.buckets and seen.total.requests == total.requests
        assert dict(seen.breakdown).keys() == dict(breakdown(
            engine, tenant_id="acme", since=since, until=until)).keys()
        assert {(e["status"], e["error_type"]): e["count"] for e in seen.errors} == errors

    # Percentiles from the histogram land in the same bucket as the exact ones.
    exact = sorted(r["total_ms"] for r in acme)
    for q in (0.5, 0.95, 0.99):
        true = exact[min(len(exact) - 1, int(q * len(exact)))]
        estimate = total.p(q)
        assert estimate is not None
        i = next(i for i, b in enumerate(LATENCY_BOUNDS_MS) if true <= b)
        low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
        assert low * 0.99 <= estimate <= LATENCY_BOUNDS_MS[i] * 1.01, (q, true, estimate)

    # Rebuilding from the raw traces gives the same rollups.
    before = _from_rollups(engine), _from_rollups(engine, span=60)
    assert rebuild(engine) == 3000
    _same(before[0], _from_rollups(engine))
    _same(before[1], _from_rollups(engine, span=60))
    # A day's window reads hour rows, and agrees.
    day = summary(engine, tenant_id="acme", since=NOW - timedelta(hours=20), until=until)
    assert day.requests == len(acme) and day.buckets == total.buckets
    engine.dispose()


def test_percentile_interpolates_inside_a_bucket() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    assert percentile(buckets, 0.5) is None
    buckets[LATENCY_BOUNDS_MS.index(100)] = 10  # ten requests between 75 and 100 ms
    assert percentile(buckets, 0.5) == 87.5
    buckets[-1] = 90  # slower than the last bound
    assert percentile(buckets, 0.99) == LATENCY_BOUNDS_MS[-1]


def test_a_counted_rollup_only_record_stands_for_that_many_sheds(store_url: str) -> None:
    """The gateway hands sheds to the writer summed (one record a second per service): they
    count in every rollup sum as that many refused requests, and write no trace row."""
    engine = create_store_engine(store_url)
    migrate(engine)
    served = new_trace_record(route="chat", status=200, service="support", started_at=NOW,
                              total_ms=40.0, request_id="served")
    writer = TraceWriter(engine)
    writer.start()
    writer.submit(served)
    writer.submit({"rollup_only": True, "count": 250, "tenant_id": served["tenant_id"],
                   "started_at": NOW, "service": "support", "model_alias": None,
                   "status": 503, "error_type": "CapacityError", "total_ms": 0.0,
                   "prompt_tokens": None, "completion_tokens": None, "cost_usd": None,
                   "outcome": "shed"})
    writer.stop()
    with engine.connect() as connection:
        assert connection.execute(select(traces.c.request_id)).scalars().all() == ["served"]
        minute = connection.execute(select(trace_rollups).where(
            trace_rollups.c.span == 1, trace_rollups.c.status == 503)).mappings().one()
    assert (minute["requests"], minute["errors"], minute["shed"]) == (250, 250, 250)
    assert minute["b0"] == 250  # 0 ms each: the first latency bucket
    total = summary(engine, tenant_id=served["tenant_id"], since=NOW - timedelta(minutes=5),
                    until=NOW + timedelta(minutes=5))
    assert total.requests == 251 and total.errors == 250
    engine.dispose()
