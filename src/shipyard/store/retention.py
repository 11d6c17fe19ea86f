"""Retention: delete old traces (with their spans) and clear old payloads, in small batches.

Two periods, each global with per-tenant overrides (`traces.retention`):
- `payload_days`: captured request and response bodies older than this are cleared (set to
  NULL, `capture` becomes `expired`); the trace's counts, latency, tokens and cost stay.
- `days`: traces older than this are deleted, with their spans.

Each batch is one short transaction of at most `batch_size` rows, found through the
`started_at` index, so the trace writer (and other readers) get the store between batches;
it works the same on SQLite and PostgreSQL. The gateway runs it in the background every
`interval_s`; `shipyard traces purge [--dry-run]` runs it once.

>>> result = purge(engine, RetentionConfig(days=30, payload_days=7))  # doctest: +SKIP
>>> result.traces, result.payloads  # doctest: +SKIP
(1200, 5400)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, or_, select, true, update

from shipyard.config.traces import RetentionConfig
from shipyard.store.tables import spans, traces

__all__ = ["PurgeResult", "RetentionTask", "purge"]

log = logging.getLogger("shipyard.traces")


@dataclass
class PurgeResult:
    """What one purge removed (or, with `dry_run`, would remove)."""

    traces: int = 0
    spans: int = 0  # span records (one per request) deleted with their traces
    payloads: int = 0
    dry_run: bool = False
    scopes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: PurgeResult) -> None:
        self.traces += other.traces
        self.spans += other.spans
        self.payloads += other.payloads


@dataclass(frozen=True)
class _Scope:
    name: str  # "default" or "tenant NAME"
    where: ColumnElement[bool]
    days: float | None
    payload_days: float | None


def _scopes(policy: RetentionConfig) -> list[_Scope]:
    named = [t.tenant for t in policy.tenants]
    default_where = traces.c.tenant_id.not_in(named) if named else true()
    scopes = [_Scope("default", default_where, policy.days, policy.payload_days)]
    for override in policy.tenants:
        scopes.append(_Scope(
            f"tenant {override.tenant}", traces.c.tenant_id == override.tenant,
            override.days if override.days is not None else policy.days,
            override.payload_days if override.payload_days is not None else policy.payload_days))
    return scopes


def purge(engine: Engine, policy: RetentionConfig, *, now: datetime | None = None,
          dry_run: bool = False, batch_size: int | None = None,
          watermarks: dict[str, datetime] | None = None,
          stop: Callable[[], bool] | None = None, pause_s: float = 0.005) -> PurgeResult:
    """Apply `policy` once: clear payloads past `payload_days`, delete traces past `days`.

    `watermarks` (kept by the background task between runs) remembers how far payload
    clearing got, so a run never rescans rows it already cleared. `stop` is asked between
    batches; `pause_s` is the breather left to writers between two batches.
    """
    now = now or datetime.now(UTC)
    size = batch_size or policy.batch_size
    marks = watermarks if watermarks is not None else {}
    result = PurgeResult(dry_run=dry_run)
    for scope in _scopes(policy):
        done = PurgeResult()
        if scope.payload_days is not None:
            cutoff = now - timedelta(days=scope.payload_days)
            where = and_(scope.where, traces.c.started_at < cutoff, traces.c.capture == "full",
                         or_(traces.c.request_body.is_not(None),
                             traces.c.response_body.is_not(None)))
            if dry_run:
                done.payloads = _count(engine, where)
            else:
                done.payloads = _clear_payloads(engine, where, scope.name, size, marks, stop,
                                                pause_s)
        if scope.days is not None:
            cutoff = now - timedelta(days=scope.days)
            where = and_(scope.where, traces.c.started_at < cutoff)
            if dry_run:
                done.traces = _count(engine, where)
                done.spans = _count_spans(engine, where)
            else:
                done.traces, done.spans = _delete_traces(engine, where, size, stop, pause_s)
        result.add(done)
        result.scopes.append({"scope": scope.name, "days": scope.days,
                              "payload_days": scope.payload_days, "traces": done.traces,
                              "spans": done.spans, "payloads": done.payloads})
    return result


def _count(engine: Engine, where: ColumnElement[bool]) -> int:
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count()).select_from(traces).where(where)).scalar_one())


def _count_spans(engine: Engine, where: ColumnElement[bool]) -> int:
    ids = select(traces.c.id).where(where)
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count()).select_from(spans).where(spans.c.record_id.in_(ids))
        ).scalar_one())


def _delete_traces(engine: Engine, where: ColumnElement[bool], size: int,
                   stop: Callable[[], bool] | None, pause_s: float) -> tuple[int, int]:
    deleted = spans_deleted = 0
    after: datetime | None = None
    while stop is None or not stop():
        query = select(traces.c.id, traces.c.started_at).where(where)
        if after is not None:  # rows before it that are left did not match: skip them
            query = query.where(traces.c.started_at >= after)
        with engine.begin() as connection:
            batch = connection.execute(query.order_by(traces.c.started_at).limit(size)).all()
            if not batch:
                break
            ids = [row[0] for row in batch]
            spans_deleted += connection.execute(
                delete(spans).where(spans.c.record_id.in_(ids))).rowcount or 0
            deleted += connection.execute(delete(traces).where(traces.c.id.in_(ids))).rowcount or 0
        after = batch[-1][1]
        if len(batch) < size:
            break
        time.sleep(pause_s)
    return deleted, spans_deleted


def _clear_payloads(engine: Engine, where: ColumnElement[bool], scope: str, size: int,
                    marks: dict[str, datetime], stop: Callable[[], bool] | None,
                    pause_s: float) -> int:
    cleared = 0
    while stop is None or not stop():
        query = select(traces.c.id, traces.c.started_at).where(where)
        after = marks.get(scope)
        if after is not None:
            query = query.where(traces.c.started_at >= after)
        with engine.begin() as connection:
            batch = connection.execute(query.order_by(traces.c.started_at).limit(size)).all()
            if not batch:
                break
            cleared += connection.execute(
                update(traces).where(traces.c.id.in_([row[0] for row in batch]))
                .values(request_body=None, response_body=None, capture="expired")
            ).rowcount or 0
        marks[scope] = batch[-1][1]
        if len(batch) < size:
            break
        time.sleep(pause_s)
    return cleared


class RetentionTask:
    """Runs `purge` every `interval_s` in a thread, off the event loop, until stopped."""

    def __init__(self, engine: Engine, policy: RetentionConfig, *,
                 on_purge: Callable[[int, int], None] | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.on_purge = on_purge
        self.watermarks: dict[str, datetime] = {}
        self.runs = 0
        self.last: PurgeResult | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        # A little jitter, so several workers started together do not purge in lockstep.
        await asyncio.sleep(random.uniform(1.0, 5.0))
        while not self._stopping:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as exc:  # the store may be down: try again next time
                log.warning("trace retention purge failed (%s); retrying in %.0fs",
                            type(exc).__name__, self.policy.interval_s)
            await asyncio.sleep(self.policy.interval_s)

    def run_once(self) -> PurgeResult:
        result = purge(self.engine, self.policy, watermarks=self.watermarks,
                       stop=lambda: self._stopping)
        self.runs += 1
        self.last = result
        if self.on_purge is not None:
            self.on_purge(result.traces, result.payloads)
        if result.traces or result.payloads:
            log.info("retention: %d traces deleted (%d span records), %d payloads cleared",
                     result.traces, result.spans, result.payloads)
        return result

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
