"""The dashboard's connectors page: every configured connector (kind, target, live counts
when it runs in this process) and the recent runs from the store (status, counts,
checkpoint, error) — `shipyard connectors status` in a browser.

>>> from shipyard.ui.pages import PAGES
>>> PAGES["/ui/connectors"].template
'connectors.html'
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from shipyard.connectors import RunLog, describe_target
from shipyard.security.roles import PLATFORM_TENANT
from shipyard.ui.pages import Page, PageContext, register

__all__ = ["connectors_page"]


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def connectors_page(ctx: PageContext) -> dict[str, Any]:
    """Configured connectors with their live state, and the newest runs."""
    configured = dict(ctx.config.connectors) if ctx.config is not None else {}
    # Connectors belong to the platform: another tenant's viewer sees states and counts, not
    # error messages (which may quote a message).
    errors = ctx.tenant_id == PLATFORM_TENANT
    live = {row["name"]: row["live"] for row in ctx.connectors.status()} if (
        ctx.connectors is not None) else {}
    name = ctx.params.get("connector") or None
    runs = RunLog(ctx.engine).list(name, limit=100)
    latest: dict[str, Any] = {}
    for run in runs:
        latest.setdefault(run.connector, run)
    rows = []
    for key, cfg in sorted(configured.items()):
        state = live.get(key)
        last = latest.get(key)
        rows.append({"name": key, "kind": cfg.kind, "target": describe_target(cfg),
                     "autostart": cfg.autostart,
                     "state": state["state"] if state else "not running here",
                     "processed": state["processed"] if state else "",
                     "failed": state["failed"] if state else "",
                     "in_flight": state["in_flight"] if state else "",
                     "last_error": state["last_error"] if state and errors else "",
                     "last_run": last.status if last else ""})
    return {"connectors": rows, "filter": name or "",
            "runs": [{"id": r.id, "connector": r.connector, "kind": r.kind,
                      "status": r.status, "started": _when(r.started_at),
                      "ended": _when(r.ended_at), "processed": r.processed,
                      "succeeded": r.succeeded, "failed": r.failed, "retried": r.retried,
                      "checkpoint": orjson.dumps(r.checkpoint).decode() if r.checkpoint
                      else r.detail.get("file", ""), "error": (r.error or "") if errors else ""}
                     for r in runs]}


register(Page("/ui/connectors", "Connectors", "status:read", "connectors.html",
              connectors_page))
