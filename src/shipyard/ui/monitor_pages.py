"""The dashboard's monitoring pages: drift checks, alerts and SLOs, the escalation queue.

Each page reads what the monitors already store (`drift_results`, `alerts` and
`alert_events`, `escalations`) through their own store functions and registers itself on
the page registry, replacing the "Drift" and "Alerts" placeholders of `shipyard.ui.pages`:

>>> from shipyard.ui.pages import PAGES
>>> PAGES["/ui/drift"].template
'drift.html'

The escalation forms (claim, answer, resolve) post to `/ui/escalations/{id}/{action}`,
handled in `shipyard.ui.routes` with the session's CSRF token and scope `escalations:manage`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shipyard.errors import InvalidRequest, NotFound
from shipyard.escalation.store import STATUSES, get_ticket, list_tickets
from shipyard.monitor.history import alert_events_of, get_alert, list_alerts
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.ui.charts import line_chart
from shipyard.ui.pages import Page, PageContext, PageError, register

__all__ = ["alert_detail", "alerts_page", "drift_page", "escalation_detail", "escalations_page"]

_HISTORY_LIMIT = 2000


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


# -- drift -----------------------------------------------------------------------------------

def drift_page(ctx: PageContext) -> dict[str, Any]:
    """The latest verdict of every check, and its drift share over the window."""
    # Imported here: the drift stack loads numpy and scipy, which serving pages never needs.
    try:
        from shipyard.monitor.drift.store import drift_history
    except ImportError as exc:
        raise PageError(501, f"The drift page needs numpy and scipy ({exc}); install them "
                        "with pip install 'shipyard[monitor]' and restart the gateway.") from None

    checks = ctx.config.drift.checks if ctx.config is not None else {}
    configured = sorted(name for name, check in checks.items()
                        if (check.tenant or PLATFORM_TENANT) == ctx.tenant_id)
    history = drift_history(ctx.engine, tenant_id=ctx.tenant_id, since=ctx.since,
                            limit=_HISTORY_LIMIT)
    names = sorted({r["check_name"] for r in history} | set(configured))
    latest: list[dict[str, Any]] = []
    for name in names:
        newest = drift_history(ctx.engine, name, tenant_id=ctx.tenant_id, limit=1,
                               details=True)
        if not newest:
            latest.append({"name": name, "result": None, "columns": []})
            continue
        result = newest[0]
        columns = [{"column": c.get("column"), "method": c.get("method"),
                    "score": _num(c.get("score")), "threshold": _num(c.get("threshold")),
                    "drifted": bool(c.get("drifted")), "note": c.get("note") or "",
                    "rows": f"{c.get('reference_rows', 0)} / {c.get('current_rows', 0)}"}
                   for c in result["report"].get("columns", [])]
        latest.append({"name": name, "result": result, "at": _when(result["at"]),
                       "share": f"{100 * float(result['share'] or 0):.0f}%",
                       "columns": columns})
    charts = []
    if history:
        share: dict[str, tuple[list[str], list[float]]] = {}
        drifted: dict[str, tuple[list[str], list[int]]] = {}
        for row in reversed(history):  # oldest first
            at = row["at"].isoformat()
            share.setdefault(row["check_name"], ([], []))[0].append(at)
            share[row["check_name"]][1].append(round(100 * float(row["share"] or 0), 2))
            drifted.setdefault(row["check_name"], ([], []))[0].append(at)
            drifted[row["check_name"]][1].append(int(row["drifted"] or 0))
        charts = [_multi_line("Drift share", share, "% of tested columns"),
                  _multi_line("Drifted columns", drifted, "columns")]
    return {"checks": latest, "configured": configured, "charts": charts}


def _multi_line(title: str, series: dict[str, tuple[list[str], list[Any]]],
                y_title: str) -> dict[str, Any]:
    """One line per check, each with its own x (checks run at different times)."""
    figure = line_chart(title, [], {}, y_title=y_title, kind="lines+markers")
    figure["data"] = [{"type": "scatter", "mode": "lines+markers", "name": name, "x": x,
                       "y": y} for name, (x, y) in series.items()]
    return figure


# -- alerts ----------------------------------------------------------------------------------

def _alert_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "started": _when(row.get("started_at")), "fired": _when(row.get("fired_at")),
            "resolved": _when(row.get("resolved_at")), "value_text": _num(row.get("value")),
            "threshold_text": _num(row.get("threshold"))}


def _mine(ctx: PageContext, targets: list[Any]) -> list[Any]:
    """The rules or SLOs whose alerts belong to this tenant (untargeted ones: the platform's)."""
    return [t for t in targets if (t.tenant or PLATFORM_TENANT) == ctx.tenant_id]


def _budgets(ctx: PageContext) -> list[dict[str, Any]]:
    """The error budget of each of this tenant's SLOs over its period."""
    slos = _mine(ctx, ctx.config.slos) if ctx.config is not None else []
    if not slos:
        return []
    from shipyard.monitor.slo import error_budget  # the SLO math, only when SLOs exist

    out = []
    for slo in slos:
        budget = error_budget(ctx.engine, slo, ctx.now)
        out.append({"name": slo.name, "objective": f"{100 * slo.objective:g}%",
                    "sli": "-" if budget.sli is None else f"{100 * budget.sli:.3f}%",
                    "total": budget.total, "bad": budget.bad,
                    "remaining": f"{100 * budget.remaining:.1f}%",
                    "spent": budget.remaining < 0.0})
    return out


def alerts_page(ctx: PageContext) -> dict[str, Any]:
    """Open alerts, SLO error budgets, and the alerts that started in the window."""
    open_rows = [_alert_row(r) for r in list_alerts(ctx.engine, state="open",
                                                     tenant_id=ctx.tenant_id)]
    recent = [_alert_row(r) for r in list_alerts(ctx.engine, tenant_id=ctx.tenant_id,
                                                  since=ctx.since, limit=200)]
    budgets = _budgets(ctx)
    rules = _mine(ctx, ctx.config.alerts.rules) if ctx.config is not None else []
    return {"open": open_rows, "recent": recent, "budgets": budgets,
            "configured": bool(rules or budgets or recent or open_rows)}


def alert_detail(ctx: PageContext) -> dict[str, Any]:
    """One alert with its event history and runbook (the link in every notification)."""
    alert_id = ctx.path_params["alert_id"]
    row = get_alert(ctx.engine, alert_id, tenant_id=ctx.tenant_id)
    if row is None:
        raise PageError(404, f"There is no alert '{alert_id}' in this tenant; open alerts are "
                             "listed at /ui/alerts.")
    alert = _alert_row(row)
    events = [{**e, "when": _when(e["at"]), "value_text": _num(e["value"])}
              for e in alert_events_of(ctx.engine, [alert_id])[alert_id]]
    return {"title": f"Alert {alert['key']}", "alert": alert, "events": events,
            "labels": sorted((alert.get("labels") or {}).items())}


# -- escalations -----------------------------------------------------------------------------

def escalations_page(ctx: PageContext) -> dict[str, Any]:
    """The review queue, newest first, filtered by status and overdue."""
    status = ctx.params.get("status") or None
    overdue_param = ctx.params.get("overdue", "")
    overdue = {"yes": True, "no": False}.get(overdue_param)
    try:
        rows = list_tickets(ctx.engine, tenant_id=ctx.tenant_id, status=status, overdue=overdue,
                            limit=200)
    except InvalidRequest as exc:
        raise PageError(400, exc.message) from None
    now = datetime.now(UTC)
    tickets = [{**t.public(conversation=False), "created": _when(t.created_at),
                "due": _when(t.due_at), "is_overdue": t.overdue(now)} for t in rows]
    return {"tickets": tickets, "statuses": list(STATUSES),
            "filters": {"status": status or "", "overdue": overdue_param},
            "can_manage": ctx.can("escalations:manage")}


def _message_text(message: Any) -> tuple[str, str]:
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p)
                               for p in content)
        return str(message.get("role", "")), "" if content is None else str(content)
    return "", str(message)


def escalation_detail(ctx: PageContext) -> dict[str, Any]:
    """One ticket: its conversation, where it stands, and the forms to act on it."""
    ticket_id = ctx.path_params["ticket_id"]
    try:
        ticket = get_ticket(ctx.engine, ticket_id, tenant_id=ctx.tenant_id)
    except NotFound:
        raise PageError(404, f"There is no escalation '{ticket_id}' in this tenant; the "
                             "queue is at /ui/escalations.") from None
    info = ticket.public()
    times = [(label, _when(info[key])) for label, key in (
        ("Created", "created_at"), ("Due", "due_at"), ("Claimed", "claimed_at"),
        ("Answered", "answered_at"), ("Resolved", "resolved_at"),
        ("Delivered", "delivered_at")) if info[key] is not None]
    return {"title": f"Escalation {ticket.id}", "ticket": info, "times": times,
            "messages": [_message_text(m) for m in ticket.conversation],
            "can_manage": ctx.can("escalations:manage"), "notice": ctx.params.get("done", "")}


register(Page("/ui/drift", "Drift", "traces:read", "drift.html", drift_page))
register(Page("/ui/alerts", "Alerts", "traces:read", "alerts.html", alerts_page))
register(Page("/ui/alerts/{alert_id}", "Alert", "traces:read", "alert.html", alert_detail,
              nav=False))
register(Page("/ui/escalations", "Escalations", "escalations:read", "escalations.html",
              escalations_page))
register(Page("/ui/escalations/{ticket_id}", "Escalation", "escalations:read",
              "escalation.html", escalation_detail, nav=False))
