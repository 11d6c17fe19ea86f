"""The dashboard's readiness page: `shipyard check` verdicts over time, per target, and one
run's findings with their fixes.

Runs are stored by `shipyard check` (`shipyard.store.readiness`); they belong to the platform,
so the page needs scope `status:read` and shows the verdicts saved under the viewer's tenant.

>>> from shipyard.ui.pages import PAGES
>>> PAGES["/ui/readiness"].template
'readiness.html'
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shipyard.store.readiness import get_run, list_runs
from shipyard.ui.charts import line_chart
from shipyard.ui.pages import Page, PageContext, PageError, register

__all__ = ["readiness_detail", "readiness_page"]

_SECTIONS = ("data", "security", "scale", "trust", "lifecycle")


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def readiness_page(ctx: PageContext) -> dict[str, Any]:
    """Overall and per-challenge scores over time, one chart per target; the latest runs."""
    target = ctx.params.get("target") or None
    runs = list_runs(ctx.engine, tenant_id=ctx.tenant_id, target=target, since=ctx.since)
    by_target: dict[str, list[dict[str, Any]]] = {}
    for run in reversed(runs):  # oldest first
        by_target.setdefault(run["target"], []).append(run)
    charts = []
    for name, items in sorted(by_target.items()):
        x = [r["created_at"].isoformat() for r in items]
        series = {"overall": [r["score"] for r in items]}
        for key in _SECTIONS:
            series[key] = [r["scores"].get(key) for r in items]
        charts.append(line_chart(f"Readiness of {name}", x, series, y_title="score (0-100)",
                                 kind="lines+markers"))
    rows = [{**r, "at": _when(r["created_at"]),
             "score_text": "-" if r["score"] is None else f"{r['score']:g}",
             "sections": {k: ("-" if r["scores"].get(k) is None else f"{r['scores'][k]:g}")
                          for k in _SECTIONS},
             "gate": {None: "", True: "passed", False: "missed"}[r["gate_passed"]]}
            for r in runs[:50]]
    return {"runs": rows, "charts": charts, "targets": sorted(by_target), "range": ctx.range,
            "target": target or "", "sections": _SECTIONS}


def readiness_detail(ctx: PageContext) -> dict[str, Any]:
    """One run: its scores and every finding with its fix."""
    run_id = ctx.path_params["run_id"]
    run = get_run(ctx.engine, run_id, tenant_id=ctx.tenant_id)
    if run is None:
        raise PageError(404, f"There is no readiness run '{run_id}'; the runs are listed at "
                             "/ui/readiness.")
    report = run["report"]
    return {"title": f"Readiness of {run['target']}", "run": {**run, "at": _when(
        run["created_at"])}, "report": report, "sections": report.get("sections", []),
        "runbooks": report.get("runbooks", [])}


register(Page("/ui/readiness", "Readiness", "status:read", "readiness.html", readiness_page))
register(Page("/ui/readiness/{run_id}", "Readiness run", "status:read",
              "readiness_run.html", readiness_detail, nav=False))
