"""Trace records: build them on the hot path, read them back for the CLI and the API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, Select, case, func, or_, select

from shipyard.store.tables import spans, traces

__all__ = [
    "TraceFilter",
    "count_traces",
    "get_spans",
    "get_trace",
    "get_trace_tree",
    "iter_traces",
    "new_trace_record",
    "usage",
]

_COLUMNS = tuple(c.name for c in traces.columns)


def new_trace_record(**values: Any) -> dict[str, Any]:
    """A complete trace row with defaults; keyword arguments override columns.

    >>> new_trace_record(route="chat", status=200)["status"]
    200
    """
    now = datetime.now(UTC)
    record: dict[str, Any] = dict.fromkeys(_COLUMNS)
    record.update(
        id=uuid.uuid4().hex,
        request_id="",
        started_at=now,
        ended_at=now,
        tenant_id="default",
        route="unknown",
        stream=False,
        status=0,
        total_ms=0.0,
        tokens_estimated=False,
        capture="metadata",
    )
    unknown = set(values) - set(_COLUMNS)
    if unknown:
        raise TypeError(f"unknown trace columns: {sorted(unknown)}")
    record.update(values)
    return record


@dataclass(frozen=True, kw_only=True)
class TraceFilter:
    """Filters for listing traces; every field is optional."""

    tenant_id: str | None = None
    service: str | None = None
    model: str | None = None
    status: int | None = None
    errors_only: bool = False
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.tenant_id is not None:
            query = query.where(traces.c.tenant_id == self.tenant_id)
        if self.service is not None:
            query = query.where(traces.c.service == self.service)
        if self.model is not None:
            query = query.where(traces.c.model_alias == self.model)
        if self.status is not None:
            query = query.where(traces.c.status == self.status)
        if self.errors_only:
            query = query.where(traces.c.status >= 400)
        if self.since is not None:
            query = query.where(traces.c.started_at >= self.since)
        if self.until is not None:
            query = query.where(traces.c.started_at < self.until)
        if self.text:
            pattern = f"%{self.text}%"
            query = query.where(
                or_(
                    traces.c.error_message.like(pattern),
                    traces.c.request_body.like(pattern),
                    traces.c.response_body.like(pattern),
                    traces.c.request_id.like(pattern),
                )
            )
        return query


def _row(mapping: Any) -> dict[str, Any]:
    row = {str(k): v for k, v in mapping.items()}
    for key in ("started_at", "ended_at"):
        value = row.get(key)
        if isinstance(value, datetime) and value.tzinfo is None:
            row[key] = value.replace(tzinfo=UTC)
    return row


def iter_traces(
    engine: Engine,
    filters: TraceFilter | None = None,
    *,
    limit: int | None = 50,
    newest_first: bool = True,
    after: datetime | None = None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Yield traces matching `filters`, newest first by default; streams large exports."""
    query = select(traces)
    if filters is not None:
        query = filters.apply(query)
    if after is not None:
        query = query.where(traces.c.started_at > after)
    order = traces.c.started_at.desc() if newest_first else traces.c.started_at.asc()
    query = query.order_by(order, traces.c.id)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(
            query
        )
        for mapping in result.mappings():
            yield _row(mapping)


def get_trace(
    engine: Engine, trace_id: str, *, tenant_id: str | None = None
) -> dict[str, Any] | None:
    """One trace by its id, or by request id (client-supplied ids are looked up too)."""
    query = select(traces).where(or_(traces.c.id == trace_id, traces.c.request_id == trace_id))
    if tenant_id is not None:
        query = query.where(traces.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        mapping = connection.execute(query.limit(1)).mappings().first()
    return _row(mapping) if mapping is not None else None


def get_spans(engine: Engine, trace_id: str, *,
              tenant_id: str | None = None) -> list[dict[str, Any]]:
    """The spans of one trace, in start order, for a waterfall.

    `trace_id` is the W3C trace id (several requests of one distributed trace share it) or a
    request's own trace record id (`x-shipyard-trace-id`). Each span has `span_id`,
    `parent_id`, `name`, `start_ms` (from its request's start), `duration_ms`, `error`,
    `attributes` (a dict), and its request's `record_id`, `trace_id`, `tenant_id` and
    `started_at`.

    >>> [s["name"] for s in get_spans(engine, trace_id)]  # doctest: +SKIP
    ['chat', 'auth', 'upstream', 'upstream.attempt', 'store.write']
    """
    query = select(spans).where(or_(spans.c.trace_id == trace_id,
                                    spans.c.record_id == trace_id))
    if tenant_id is not None:
        query = query.where(spans.c.tenant_id == tenant_id)
    out: list[dict[str, Any]] = []
    with engine.connect() as connection:
        requests = [_row(m) for m in connection.execute(
            query.order_by(spans.c.started_at)).mappings()]
    for request in requests:
        for sid, parent, name, start_ms, duration_ms, error, attributes in orjson.loads(
                request["spans"]):
            out.append({"trace_id": request["trace_id"], "record_id": request["record_id"],
                        "tenant_id": request["tenant_id"], "started_at": request["started_at"],
                        "span_id": sid, "parent_id": parent, "name": name,
                        "start_ms": start_ms, "duration_ms": duration_ms, "error": error,
                        "attributes": attributes or {}})
    out.sort(key=lambda span: (span["started_at"], span["start_ms"]))
    return out


def get_trace_tree(engine: Engine, record_id: str, *,
                   tenant_id: str | None = None) -> dict[str, Any] | None:
    """A request and every request of its W3C trace (a service's calls back to the gateway,
    the caller's other requests), with all their stored spans: `{"trace_id", "records",
    "spans"}`, records oldest first. Requests whose spans were not kept (see
    `traces.sample_spans`; a trace's requests share the decision) are found by their spans,
    so the tree holds the requests with stored spans, and always the one asked for."""
    root = get_trace(engine, record_id, tenant_id=tenant_id)
    if root is None:
        return None
    trace_id = root.get("trace_id") or root["id"]
    found = get_spans(engine, trace_id, tenant_id=tenant_id)
    ids = {span["record_id"] for span in found} | {root["id"]}
    query = select(traces).where(traces.c.id.in_(sorted(ids)))
    if tenant_id is not None:
        query = query.where(traces.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        records = [_row(m) for m in connection.execute(query).mappings()]
    records.sort(key=lambda r: r["started_at"])
    return {"trace_id": trace_id, "records": records, "spans": found}


_USAGE_COLUMNS = {
    "tenant": traces.c.tenant_id,
    "key": traces.c.key_id,
    "service": traces.c.service,
    "model": traces.c.model_alias,
}


def usage(engine: Engine, *, by: str, since: datetime, until: datetime | None = None,
          tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Requests, tokens and spend grouped by tenant, key, service or model over a period."""
    if by not in _USAGE_COLUMNS:
        raise ValueError(f"usage can be grouped by {', '.join(_USAGE_COLUMNS)}, not {by!r}")
    group = _USAGE_COLUMNS[by]
    query = (select(group.label("group"), func.count().label("requests"),
                    func.sum(func.coalesce(traces.c.prompt_tokens, 0)).label("prompt_tokens"),
                    func.sum(func.coalesce(traces.c.completion_tokens, 0))
                    .label("completion_tokens"),
                    func.sum(func.coalesce(traces.c.cost_usd, 0.0)).label("cost_usd"),
                    func.sum(case((traces.c.status >= 400, 1), else_=0)).label("errors"))
             .where(traces.c.started_at >= since).group_by(group)
             .order_by(func.sum(func.coalesce(traces.c.cost_usd, 0.0)).desc()))
    if until is not None:
        query = query.where(traces.c.started_at < until)
    if tenant_id is not None:
        query = query.where(traces.c.tenant_id == tenant_id)
    with engine.connect() as connection:
        return [{str(k): v for k, v in row.items()}
                for row in connection.execute(query).mappings()]


def count_traces(engine: Engine, filters: TraceFilter | None = None) -> int:
    query = select(func.count()).select_from(traces)
    if filters is not None:
        query = filters.apply(query)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
