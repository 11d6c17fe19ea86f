"""The dashboard's versions pages: every service's versions at a glance, and one service's
page — what serves now, the running rollout and its newest gate check (why it waits, steps,
or rolled back), canary and shadow comparison charts per version, eval results side by
side, retraining jobs and the history of promotions and rollbacks with their reasons.

They read the registry (`shipyard.lifecycle.registry`) and the traces table, and register
themselves on the page registry like the other built-in pages.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select

from shipyard.config.lifecycle import GATE_NAMES
from shipyard.lifecycle import registry
from shipyard.lifecycle.gates import traced_as
from shipyard.lifecycle.retrain import list_jobs
from shipyard.store.tables import traces
from shipyard.ui.charts import bar_chart, line_chart
from shipyard.ui.pages import Page, PageContext, PageError, register

__all__ = ["versions_detail", "versions_page"]

_ROWS = 100_000  # most traces read for the comparison charts


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _services(ctx: PageContext) -> list[str]:
    """Services and model aliases (`model/ALIAS`): every target with versions."""
    configured = set(ctx.config.services) if ctx.config is not None else set()
    if ctx.config is not None:
        configured |= {registry.ALIAS_PREFIX + alias for alias in ctx.config.models}
    return sorted(configured | set(registry.aliases_of(ctx.engine)))


def versions_page(ctx: PageContext) -> dict[str, Any]:
    aliases = registry.aliases_of(ctx.engine)
    running = {r.target: r for r in registry.running_rollouts(ctx.engine)}
    rows = []
    for name in _services(ctx):
        names = aliases.get(name, {})
        rollout = running.get(name)
        rows.append({"name": name, "stable": names.get("stable"),
                     "versions": len(registry.list_versions(ctx.engine, name)),
                     "rollout": None if rollout is None else (
                         f"{rollout.mode} of v{rollout.candidate}"
                         + (f" at {rollout.share:g}%" if rollout.mode == "canary" else ""))})
    return {"services": rows}


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 3)


def _comparison(ctx: PageContext, target: str) -> list[dict[str, Any]]:
    """Requests, error rate and p95 per version and minute; shadow agreement."""
    name, _ = traced_as(target)
    query = (select(traces.c.started_at, traces.c.version, traces.c.route, traces.c.status,
                    traces.c.upstream_ms, traces.c.attributes)
             .where(traces.c.service == name, traces.c.started_at >= ctx.since,
                    traces.c.started_at <= ctx.until, traces.c.version.is_not(None))
             .order_by(traces.c.started_at.desc()).limit(_ROWS))
    step = ctx.step_minutes * 60
    buckets: dict[tuple[int, str], dict[str, Any]] = {}
    agree: dict[int, list[int]] = {}
    with ctx.engine.connect() as connection:
        for at, version, route, status, upstream_ms, attributes in connection.execute(query):
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
            slot = int(at.timestamp()) // step * step
            label = f"v{version}" + (" (shadow)" if route == "shadow" else "")
            b = buckets.setdefault((slot, label), {"n": 0, "errors": 0, "ms": []})
            b["n"] += 1
            b["errors"] += status >= 500
            if upstream_ms is not None and status < 500:
                b["ms"].append(float(upstream_ms))
            if route == "shadow" and attributes:
                shadow = orjson.loads(attributes).get("shadow") or {}
                if shadow.get("agree") is not None:
                    agree.setdefault(slot, [0, 0])
                    agree[slot][0] += bool(shadow["agree"])
                    agree[slot][1] += 1
    if not buckets:
        return []
    slots = sorted({s for s, _ in buckets})
    names = sorted({v for _, v in buckets})
    x = [datetime.fromtimestamp(s, UTC).isoformat() for s in slots]

    def series(value: Any) -> dict[str, list[Any]]:
        return {v: [value(buckets[(s, v)]) if (s, v) in buckets else None for s in slots]
                for v in names}

    charts = [
        bar_chart("Requests per version", x, {k: [n or 0 for n in vals] for k, vals in
                                              series(lambda b: b["n"]).items()},
                  y_title="requests"),
        line_chart("Error rate per version", x,
                   series(lambda b: round(100 * b["errors"] / b["n"], 2)), y_title="%",
                   kind="lines+markers"),
        line_chart("p95 latency per version", x, series(lambda b: _p95(b["ms"])),
                   y_title="ms", kind="lines+markers"),
    ]
    if agree:
        charts.append(line_chart("Shadow agreement with stable", x, {"agree %": [
            round(100 * agree[s][0] / agree[s][1], 1) if s in agree else None
            for s in slots]}, y_title="%", kind="lines+markers"))
    return charts


def versions_detail(ctx: PageContext) -> dict[str, Any]:
    name = ctx.path_params["name"]
    if name not in _services(ctx):
        raise PageError(404, f"There is no service or model alias '{name}'.")
    versions = registry.list_versions(ctx.engine, name)
    aliases = registry.aliases_of(ctx.engine, name).get(name, {})
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    rollouts = registry.rollouts_of(ctx.engine, name, limit=20)
    running = next((r for r in rollouts if r.state == "running"), None)
    evals = registry.list_evals(ctx.engine, name, limit=30)
    metric_names = [m for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "ece",
                                "brier", "exact", "contains", "similarity", "agree", "judge")
                    if any(m in e["metrics"] for e in evals)]
    eval_rows = [{"at": _when(e["created_at"]), "version": e["version"],
                  "baseline": e["baseline"], "dataset": e["dataset"], "rows": e["rows"],
                  "passed": e["passed"],
                  "values": [(_num(e["metrics"].get(m)),
                              _num((e["baseline_metrics"] or {}).get(m))) for m in metric_names]}
                 for e in evals]
    events = [{"at": _when(e["at"]), "event": e["event"], "version": e["version"],
               "actor": e["actor"], "reason": _reason(e["details"])}
              for e in registry.list_events(ctx.engine, name, limit=100)]
    model = name.removeprefix(registry.ALIAS_PREFIX) if name.startswith(
        registry.ALIAS_PREFIX) else None
    policy = None
    if ctx.config is not None and model is not None and model in ctx.config.models:
        policy = ctx.config.models[model].rollout
    elif ctx.config is not None and name in ctx.config.services:
        policy = ctx.config.services[name].rollout
    return {"title": f"Versions of {name}", "service": name, "evaluable": model is None,
            "versions": [{"number": v.number, "aliases": ", ".join(sorted(
                by_version.get(v.number, []))), "kind": v.kind,
                "what": (f"{v.artifact.format} sha256:{v.artifact.sha256[:12]}"
                         if v.artifact else v.function), "source": v.meta.get("source", ""),
                "created": _when(v.created_at), "by": v.created_by} for v in reversed(versions)],
            "stable": aliases.get("stable"), "running": running,
            "check": running.last_check if running else None,
            "rollouts": [{"started": _when(r.started_at), "candidate": r.candidate,
                          "stable": r.stable, "mode": r.mode, "state": r.state,
                          "share": r.share, "reason": r.reason or ""} for r in rollouts],
            "policy": policy, "gate_names": GATE_NAMES,
            "metric_names": metric_names, "evals": eval_rows, "events": events,
            "jobs": [{**j, "created": _when(j["created_at"])}
                     for j in list_jobs(ctx.engine, name, limit=10)],
            "charts": _comparison(ctx, name)}


def _num(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.4f}"


def _reason(details: dict[str, Any]) -> str:
    if details.get("reason"):
        return str(details["reason"])
    if details.get("share") is not None:
        return f"share {details['share']:g}%"
    if details.get("error"):
        return str(details["error"])
    if details.get("job"):
        return f"job {details['job'][:8]} {details.get('step') or details.get('trigger', '')}"
    return ""


register(Page("/ui/versions", "Versions", "traces:read", "versions.html", versions_page))
register(Page("/ui/versions/{name:path}", "Versions", "traces:read", "versions_detail.html",
              versions_detail, nav=False))
