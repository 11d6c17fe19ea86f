"""The spans of one trace, for the dashboard's waterfall.

Span sources are tried in order; the first that returns a list wins. The built-in
`derived_spans` rebuilds an approximate waterfall from what every trace records (queue,
upstream and Shipyard time, and the `attempts` list kept in `attributes` when a request was
retried or fell back). `stored_spans` (tried first) reads the spans the tracer kept in the
store's `spans` table. Another source (OpenTelemetry backend, ...) plugs in ahead of both
with `register_span_source`:

>>> def stored_spans(engine, trace):  # doctest: +SKIP
...     rows = load_spans(engine, trace["id"])   # None when this trace has no stored spans
...     return [Span(r.name, r.start_ms, r.duration_ms, depth=r.depth) for r in rows] or None
>>> register_span_source(stored_spans)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

__all__ = ["Span", "SpanSource", "derived_spans", "register_span_source", "stored_spans",
           "trace_spans"]


@dataclass(frozen=True)
class Span:
    """One bar of the waterfall: times in ms from the start of the request."""

    name: str
    start_ms: float
    duration_ms: float
    depth: int = 1
    status: str = "ok"  # "ok" or "error"
    detail: str = ""


SpanSource = Callable[[Engine, dict[str, Any]], list[Span] | None]


def _attributes(trace: dict[str, Any]) -> dict[str, Any]:
    raw = trace.get("attributes")
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def derived_spans(engine: Engine, trace: dict[str, Any]) -> list[Span]:
    """An approximate waterfall from the trace record alone (always available)."""
    total = float(trace.get("total_ms") or 0.0)
    queue = float(trace.get("queue_ms") or 0.0)
    upstream = trace.get("upstream_ms")
    failed = int(trace.get("status") or 0) >= 400
    spans = [Span("request", 0.0, total, depth=0, status="error" if failed else "ok",
                  detail=f"HTTP {trace.get('status')} · {trace.get('route')}")]
    if queue:
        spans.append(Span("admission queue", 0.0, queue, detail="waiting for a slot"))
    at = queue
    attempts = _attributes(trace).get("attempts")
    if isinstance(attempts, list) and attempts:
        for i, attempt in enumerate(attempts):
            if not isinstance(attempt, dict):
                continue
            ms = float(attempt.get("ms") or 0.0)
            outcome = str(attempt.get("outcome", ""))
            target = attempt.get("deployment") or "-"
            spans.append(Span(f"attempt {i + 1}: {attempt.get('alias', '')} → {target}", at, ms,
                              status="ok" if outcome == "ok" else "error", detail=outcome))
            at += ms
    elif upstream is not None:
        detail = f"{trace.get('provider') or ''} {trace.get('upstream_model') or ''}".strip()
        ttft = trace.get("ttft_ms")
        if ttft is not None:
            detail += f" · first token after {float(ttft):.1f} ms"
        spans.append(Span("upstream call", at, float(upstream),
                          status="error" if failed and str(trace.get("error_type") or "")
                          .startswith("Upstream") else "ok", detail=detail))
        at += float(upstream)
    rest = max(0.0, total - at)
    if rest:
        spans.append(Span("shipyard (auth, guards, response)", at, rest,
                          detail="time in Shipyard outside the queue and the upstream"))
    return spans


def stored_spans(engine: Engine, trace: dict[str, Any]) -> list[Span] | None:
    """The spans the tracer stored for this request and the other requests of its W3C trace
    (a hosted service's calls back to the gateway show as children of its `service` span),
    or None when none were stored for it.

    Times are from this request's start; depth follows the parent links across requests; a
    span whose parent is not stored sits at the top.
    """
    from shipyard.store.traces import get_spans  # the store, only when a trace is shown

    record = str(trace.get("id") or "")
    rows = get_spans(engine, str(trace.get("trace_id") or record),
                     tenant_id=trace.get("tenant_id"))
    if not any(r["record_id"] == record for r in rows):
        return None
    parents = {r["span_id"]: r.get("parent_id") for r in rows}
    base = trace.get("started_at")

    def depth(span_id: str) -> int:
        level, parent, seen = 0, parents.get(span_id), {span_id}
        while parent is not None and parent in parents and parent not in seen:
            seen.add(parent)
            level, parent = level + 1, parents[parent]
        return level

    def offset(row: dict[str, Any]) -> float:
        started = row.get("started_at")
        if row["record_id"] == record or base is None or started is None:
            return 0.0
        return float((started - base).total_seconds() * 1000.0)

    out = []
    for r in rows:
        attributes = r.get("attributes") or {}
        detail = ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))[:300]
        if r["record_id"] != record:
            detail = f"request {r['record_id'][:12]}: " + detail
        error = r.get("error")
        out.append(Span(str(r["name"]), float(r["start_ms"]) + offset(r),
                        float(r["duration_ms"]), depth=depth(r["span_id"]),
                        status="error" if error else "ok",
                        detail=f"{error}: {detail}" if error else detail))
    return out


_SOURCES: list[SpanSource] = [stored_spans]


def register_span_source(source: SpanSource) -> None:
    """Try `source` before the ones registered earlier (and before `derived_spans`)."""
    _SOURCES.insert(0, source)


def trace_spans(engine: Engine, trace: dict[str, Any]) -> tuple[list[Span], str]:
    """The spans of `trace` and where they came from ("stored" or "derived")."""
    for source in _SOURCES:
        spans = source(engine, trace)
        if spans is not None:
            return spans, "stored"
    return derived_spans(engine, trace), "derived"
