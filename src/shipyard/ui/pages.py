"""The dashboard's pages: a small registry, and the built-in pages written on it.

A page is a path, a title, the scope a viewer's role must grant, a template and a `render`
function that turns a `PageContext` into the template's variables (it runs in a worker
thread and may query the store). Pages with `nav=True` appear in the navigation bar, for the
roles that may open them. Features add their own pages the same way the built-ins do:

>>> def drift(ctx: PageContext) -> dict[str, Any]:  # doctest: +SKIP
...     return {"checks": load_drift_results(ctx.engine, ctx.tenant_id)}
>>> register(Page("/ui/drift", "Drift", "traces:read", "drift.html", drift))  # doctest: +SKIP

Registering a page at a path that is already taken replaces it (that is how
`shipyard.ui.monitor_pages` replaces the "Drift" and "Alerts" placeholders below).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import Engine, or_, select, tuple_

from shipyard.security.pricing import format_usd
from shipyard.security.roles import ROLE_SCOPES
from shipyard.store import rollups
from shipyard.store.feedback import feedback_series, list_feedback
from shipyard.store.tables import OUTCOMES, traces
from shipyard.store.tenants import list_keys
from shipyard.store.traces import get_trace
from shipyard.ui.charts import bar_chart, line_chart, waterfall_chart
from shipyard.ui.spans import trace_spans

__all__ = ["PAGES", "RANGES", "Page", "PageContext", "PageError", "nav", "register"]

# Time windows a page can show, and the chart resolution (minutes per point) for each.
RANGES: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), 1),
    "6h": (timedelta(hours=6), 5),
    "24h": (timedelta(hours=24), 60),
    "7d": (timedelta(days=7), 120),
    "30d": (timedelta(days=30), 360),
}
PAGE_SIZE = 50


class PageError(Exception):
    """A page cannot be shown (404 for a missing trace, 400 for a bad filter)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class PageContext:
    """What a page's `render` gets: the store, who is looking, and the query."""

    engine: Engine
    tenant_id: str
    role: str
    params: Mapping[str, str]
    path_params: Mapping[str, str] = field(default_factory=dict)
    readable: Callable[[dict[str, Any]], dict[str, Any]] = lambda row: row
    config: Any = None  # the gateway's `Config` (drift checks, alert rules, SLOs), if any
    # A service's live engine state in this gateway process (replicas on Ray), if any.
    live: Callable[[str], dict[str, Any] | None] | None = None
    connectors: Any = None  # the process's running connectors (shipyard.connectors), if any
    jobs: Any = None  # the gateway's `shipyard.jobs.Jobs`, if any
    batches: Any = None  # the gateway's `shipyard.jobs.Batches`, if any
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def can(self, scope: str) -> bool:
        return scope in ROLE_SCOPES.get(self.role, frozenset())

    def _time(self, name: str) -> datetime | None:
        value = (self.params.get(name) or "").strip()
        if not value:
            return None
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise PageError(400, f"'{name}' is {value!r}; use an ISO time such as "
                                 "2026-11-27T10:00 (UTC).") from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    @property
    def until(self) -> datetime:
        """End of the window: `?to=` (ISO, UTC by default), else now."""
        return self._time("to") or self.now

    @property
    def since(self) -> datetime:
        """Start of the window: `?from=`, else `?range=` (1h ... 30d) before `until`."""
        start = self._time("from")
        if start is None:
            return self.until - RANGES[self.range][0]
        if start >= self.until:
            raise PageError(400, "'from' must be before 'to'.")
        return start

    @property
    def range(self) -> str:
        if self._time("from") is not None:  # the smallest preset that spans the window
            length = self.until - self.since
            return next((name for name, (size, _) in RANGES.items() if size >= length), "30d")
        value = self.params.get("range", "24h")
        return value if value in RANGES else "24h"

    @property
    def step_minutes(self) -> int:
        return RANGES[self.range][1]


Render = Callable[[PageContext], dict[str, Any]]


@dataclass(frozen=True)
class Page:
    path: str
    title: str
    scope: str
    template: str
    render: Render
    nav: bool = True


PAGES: dict[str, Page] = {}


def register(page: Page) -> Page:
    """Add `page` (or replace the page at its path)."""
    PAGES[page.path] = page
    return page


def nav(role: str) -> list[Page]:
    """The navigation entries `role` may open, in registration order."""
    scopes = ROLE_SCOPES.get(role, frozenset())
    return [p for p in PAGES.values() if p.nav and p.scope in scopes]


# -- traffic pages -------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _traffic(ctx: PageContext, service: str | None, by: str = "service") -> dict[str, Any]:
    """Totals, charts, a breakdown and top errors over the window: one rollup query."""
    seen = rollups.window(ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since,
                          until=ctx.until, step_minutes=ctx.step_minutes, service=service, by=by)
    points, total = seen.points, seen.total
    x = [p.time.isoformat() for p in points]
    charts = [
        bar_chart("Requests", x, {
            "answered": [p.healthy - p.fixed for p in points],
            "fixed": [p.fixed for p in points],
            "blocked": [p.blocked for p in points],
            "escalated": [p.escalated for p in points],
            "errors": [p.errors - p.shed for p in points],
            "shed": [p.shed for p in points]}, y_title="requests"),
        line_chart("Latency", x, {"p50": [p.p(0.5) for p in points],
                                  "p95": [p.p(0.95) for p in points],
                                  "p99": [p.p(0.99) for p in points]}, y_title="ms"),
        line_chart("Error rate", x, {"error rate %": [
            round(100 * p.error_rate, 2) if p.requests else None for p in points]},
            y_title="%"),
        line_chart("Tokens", x, {"prompt": [p.prompt_tokens for p in points],
                                 "completion": [p.completion_tokens for p in points]},
                   y_title="tokens"),
        line_chart("Cost", x, {"USD": [round(p.cost_usd, 6) for p in points]}, y_title="USD"),
    ]
    cards = [("Requests", f"{total.requests:,}"),
             ("Error rate", f"{100 * total.error_rate:.2f}%"),
             ("Blocked", f"{total.blocked:,}"), ("Escalated", f"{total.escalated:,}"),
             ("Shed", f"{total.shed:,}"),
             ("p50", f"{_ms(total.p(0.5))} ms"), ("p95", f"{_ms(total.p(0.95))} ms"),
             ("p99", f"{_ms(total.p(0.99))} ms"), ("Tokens", f"{total.tokens:,}"),
             ("Cost", f"${total.cost_usd:,.4f}")]
    return {"cards": cards, "charts": charts, "errors": seen.errors, "total": total,
            "breakdown": _rows(seen.breakdown)}


def _rows(items: list[tuple[str, rollups.Point]]) -> list[dict[str, Any]]:
    return [{"name": name, "requests": p.requests, "error_rate": f"{100 * p.error_rate:.2f}%",
             "blocked": p.blocked, "escalated": p.escalated, "fixed": p.fixed, "shed": p.shed,
             "p50": _ms(p.p(0.5)), "p95": _ms(p.p(0.95)), "p99": _ms(p.p(0.99)),
             "tokens": p.tokens, "cost": f"${p.cost_usd:,.4f}"} for name, p in items]


def overview(ctx: PageContext) -> dict[str, Any]:
    context = _traffic(ctx, None)
    context["services"] = context.pop("breakdown")
    return context


def services(ctx: PageContext) -> dict[str, Any]:
    return {"services": _rows(rollups.breakdown(
        ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since, until=ctx.until))}


def service(ctx: PageContext) -> dict[str, Any]:
    name = ctx.path_params["name"]
    context = _traffic(ctx, name, by="model")
    context["service"] = name
    context["models"] = context.pop("breakdown")
    context["feedback"] = _feedback_table(ctx, name)
    context["ray"] = _ray_panel(ctx.live(name) if ctx.live is not None else None)
    return context


def _ray_panel(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """A service on Ray Serve: each version's replicas and processes, recent events."""
    if status is None:
        return None
    events = [{**e, "at": datetime.fromtimestamp(e["at"], UTC).strftime("%H:%M:%S")}
              for e in reversed(status.get("events") or [])]
    return {**status, "events": events}


# -- trace explorer -------------------------------------------------------------------------

def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    at, _, trace_id = value.partition("~")
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise PageError(400, f"The page cursor '{value}' is not valid; start from the first "
                             "page.") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)), trace_id


def explore(ctx: PageContext) -> dict[str, Any]:
    """Traces newest first, filtered, one keyset page at a time (no OFFSET)."""
    params = ctx.params
    query = select(traces.c.id, traces.c.request_id, traces.c.started_at, traces.c.service,
                   traces.c.model_alias, traces.c.status, traces.c.error_type,
                   traces.c.total_ms, traces.c.total_tokens, traces.c.route,
                   traces.c.outcome).where(
        traces.c.tenant_id == ctx.tenant_id, traces.c.started_at >= ctx.since,
        traces.c.started_at <= ctx.until)
    service_name = params.get("service") or None
    if service_name:
        query = query.where(traces.c.service == service_name)
    status = params.get("status", "")
    if status == "errors":
        query = query.where(traces.c.status >= 400)
    elif status == "ok":
        query = query.where(traces.c.status < 400)
    elif status:
        if not status.isdigit() or not 100 <= int(status) <= 599:
            raise PageError(400, f"Status '{status}' is not valid; choose ok, errors or an "
                                 "HTTP status such as 502.")
        query = query.where(traces.c.status == int(status))
    outcome = params.get("outcome", "")
    if outcome:
        if outcome not in OUTCOMES:
            raise PageError(400, f"Outcome '{outcome}' is not valid; choose one of "
                                 f"{', '.join(OUTCOMES)}.")
        query = query.where(traces.c.outcome == outcome)
    text = (params.get("q") or "").strip()
    if text:
        pattern = f"%{text}%"
        query = query.where(or_(traces.c.id == text, traces.c.request_id == text,
                                traces.c.error_message.like(pattern),
                                traces.c.request_body.like(pattern),
                                traces.c.response_body.like(pattern)))
    cursor = _cursor(params.get("before"))
    if cursor is not None:
        # A row-value comparison: both stores walk the (tenant, started_at, id) index with it.
        query = query.where(tuple_(traces.c.started_at, traces.c.id) < tuple_(*cursor))
    query = query.order_by(traces.c.started_at.desc(), traces.c.id.desc()).limit(PAGE_SIZE + 1)
    with ctx.engine.connect() as connection:
        rows = [dict(r) for r in connection.execute(query).mappings()]
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    for row in rows:
        if row["started_at"].tzinfo is None:
            row["started_at"] = row["started_at"].replace(tzinfo=UTC)
    after = None
    if more and rows:
        last = rows[-1]
        after = f"{last['started_at'].isoformat()}~{last['id']}"
    names = [name for name, _ in rollups.breakdown(ctx.engine, tenant_id=ctx.tenant_id,
                                                    since=ctx.since, until=ctx.until) if name]
    kept = {k: ctx.params.get(k, "") for k in ("service", "status", "outcome", "range", "q",
                                                "from", "to")}
    return {"rows": rows, "next_cursor": after, "services": names,
            "query": urlencode({k: v for k, v in kept.items() if v}),
            "outcomes": OUTCOMES,
            "filters": {"service": service_name or "", "status": status, "q": text,
                        "outcome": outcome,
                        "range": ctx.range, "from": ctx.params.get("from", ""),
                        "to": ctx.params.get("to", "")}}


def _shown(name: str, value: Any) -> Any:
    """A trace field as people read it: milliseconds to two decimals, dollars in full."""
    if isinstance(value, float) and name.endswith("_ms"):
        return f"{value:,.2f} ms"
    if isinstance(value, float | int) and name == "cost_usd":
        return format_usd(value)
    return value


def trace_detail(ctx: PageContext) -> dict[str, Any]:
    trace_id = ctx.path_params["trace_id"]
    row = get_trace(ctx.engine, trace_id, tenant_id=ctx.tenant_id)
    if row is None:
        raise PageError(404, f"There is no trace '{trace_id}' in this tenant.")
    row = ctx.readable(row)
    spans, source = trace_spans(ctx.engine, row)
    fields = [(k, row[k]) for k in ("id", "request_id", "started_at", "route", "service",
                                    "model_alias", "provider", "upstream_model", "status",
                                    "outcome",
                                    "error_type", "error_message", "total_ms", "queue_ms",
                                    "upstream_ms", "ttft_ms", "overhead_ms", "prompt_tokens",
                                    "completion_tokens", "cost_usd", "finish_reason",
                                    "capture", "key_id") if row.get(k) is not None]
    if not ctx.can("keys:manage"):
        fields = [(k, v) for k, v in fields if k != "key_id"]
    fields = [(k, _shown(k, v)) for k, v in fields]
    notes = []
    if ctx.can("feedback:read"):
        notes = list_feedback(ctx.engine, tenant_id=ctx.tenant_id, trace_id=row["id"],
                              limit=20)
    attributes = _attributes(row)
    verdicts = [v for v in attributes.get("guards") or [] if isinstance(v, dict)]
    return {"trace": row, "fields": fields, "spans": spans, "span_source": source,
            "charts": [waterfall_chart(spans)], "feedback": notes, "verdicts": verdicts,
            "sent": attributes.get("sent"), "escalation": attributes.get("escalation")}


def _attributes(row: dict[str, Any]) -> dict[str, Any]:
    raw = row.get("attributes")
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- feedback --------------------------------------------------------------------------------

def _feedback_table(ctx: PageContext, service_name: str | None) -> list[dict[str, Any]]:
    bucket_s = max(3600, ctx.step_minutes * 60)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for b in feedback_series(ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since,
                             until=ctx.until, bucket_s=bucket_s, service=service_name):
        g = groups.setdefault((b.service, b.version), {"service": b.service,
                                                       "version": b.version, "count": 0,
                                                       "scored": 0, "sum": 0.0, "labels": {}})
        g["count"] += b.count
        g["scored"] += b.scored
        g["sum"] += b.score_sum
        for label, n in (b.labels or {}).items():
            g["labels"][label] = g["labels"].get(label, 0) + n
    out = []
    for g in groups.values():
        g["mean"] = "-" if not g["scored"] else f"{g['sum'] / g['scored']:.3f}"
        g["labels"] = ", ".join(f"{k}: {v}" for k, v in sorted(g["labels"].items()))
        out.append(g)
    return sorted(out, key=lambda g: -g["count"])


def feedback_page(ctx: PageContext) -> dict[str, Any]:
    bucket_s = max(3600, ctx.step_minutes * 60)
    buckets = feedback_series(ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since,
                              until=ctx.until, bucket_s=bucket_s)
    slots = sorted({b.start for b in buckets})
    x = [s.isoformat() for s in slots]
    scores: dict[str, list[float | None]] = {}
    counts: dict[str, list[int]] = {}
    for b in buckets:
        name = f"{b.service or '-'} @ {b.version or '-'}"
        scores.setdefault(name, [None] * len(slots))[slots.index(b.start)] = b.mean_score
        counts.setdefault(name, [0] * len(slots))[slots.index(b.start)] = b.count
    charts = [line_chart("Mean score", x, scores, kind="lines+markers"),
              bar_chart("Feedback received", x, counts, y_title="count")]
    recent = (list_feedback(ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since, limit=50)
              if ctx.can("feedback:read") else None)
    return {"charts": charts if buckets else [], "table": _feedback_table(ctx, None),
            "recent": recent}


# -- admin and placeholders -------------------------------------------------------------------

def keys_page(ctx: PageContext) -> dict[str, Any]:
    return {"keys": [k.public() for k in list_keys(ctx.engine, tenant_id=ctx.tenant_id)]}


def placeholder(title: str, message: str, hint: str) -> Render:
    def render(ctx: PageContext) -> dict[str, Any]:
        return {"placeholder_title": title, "message": message, "hint": hint}

    return render


register(Page("/ui", "Overview", "traces:read", "overview.html", overview))
register(Page("/ui/services", "Services", "traces:read", "services.html", services))
register(Page("/ui/services/{name}", "Service", "traces:read", "service.html", service,
              nav=False))
register(Page("/ui/traces", "Traces", "traces:read", "traces.html", explore))
register(Page("/ui/traces/{trace_id}", "Trace", "traces:read", "trace.html", trace_detail,
              nav=False))
register(Page("/ui/feedback", "Feedback", "traces:read", "feedback.html", feedback_page))
register(Page("/ui/drift", "Drift", "traces:read", "placeholder.html", placeholder(
    "Drift", "No drift checks configured yet.",
    "Drift checks compare a reference window with recent traffic; once they are configured, "
    "their results are plotted here over time.")))
register(Page("/ui/alerts", "Alerts", "traces:read", "placeholder.html", placeholder(
    "Alerts", "No alerts configured.",
    "Alert rules and SLOs from shipyard.yaml, and the history of every alert that fired, "
    "will be listed here.")))
register(Page("/ui/keys", "API keys", "keys:manage", "keys.html", keys_page))
