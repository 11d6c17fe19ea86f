"""The dashboard's webhook pages: the delivery log (filters, last response, the dead letter)
and one delivery's attempt log, with a Redeliver button.

The button posts to `/ui/webhooks/{id}/redeliver`, handled in `shipyard.ui.routes` with the
session's CSRF token and scope `webhooks:manage`. Pages show endpoint names, status codes,
latencies and errors: never an endpoint's URL, its secret, or the body (which may hold
personal data; the admin API's detail view has it for those allowed to see it).

>>> from shipyard.ui.pages import PAGES
>>> PAGES["/ui/webhooks"].template
'webhooks.html'
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shipyard.errors import InvalidRequest, NotFound
from shipyard.ui.pages import Page, PageContext, PageError, register
from shipyard.webhooks.delivery import Delivery, WebhookOutbox
from shipyard.work import FINISHED, STATUSES, WorkQueue

__all__ = ["delivery_detail", "webhooks_page"]


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _row(d: Delivery) -> dict[str, Any]:
    return {"id": d.id, "endpoint": d.endpoint, "event_type": d.event_type,
            "status": d.status, "attempts": f"{d.attempts}/{d.max_attempts}",
            "created": _when(d.created_at), "next": _when(d.next_attempt_at),
            "code": "" if d.last_status_code is None else str(d.last_status_code),
            "latency": "" if d.last_latency_ms is None else f"{d.last_latency_ms:,.0f} ms",
            "error": d.last_error or "", "finished": d.status in FINISHED}


def webhooks_page(ctx: PageContext) -> dict[str, Any]:
    """Deliveries newest first, filtered by status and endpoint, with counts per status."""
    status = ctx.params.get("status") or None
    endpoint = ctx.params.get("endpoint") or None
    outbox = WebhookOutbox(WorkQueue(ctx.engine))
    try:
        rows = outbox.deliveries(tenant_id=ctx.tenant_id, status=status, endpoint=endpoint,
                                 limit=200)
    except InvalidRequest as exc:
        raise PageError(400, exc.message) from None
    counts = outbox.queue.counts(tenant_id=ctx.tenant_id, kind="webhook")
    endpoints = sorted(ctx.config.webhooks.endpoints) if ctx.config is not None else []
    return {"deliveries": [_row(d) for d in rows], "statuses": list(STATUSES),
            "counts": counts, "filters": {"status": status or "", "endpoint": endpoint or ""},
            "known_endpoints": endpoints, "can_manage": ctx.can("webhooks:manage"),
            "notice": ctx.params.get("done", "")}


def delivery_detail(ctx: PageContext) -> dict[str, Any]:
    """One delivery and every attempt: when, how it ended, status code, latency, error."""
    delivery_id = ctx.path_params["delivery_id"]
    outbox = WebhookOutbox(WorkQueue(ctx.engine))
    try:
        delivery, attempts = outbox.delivery(delivery_id, tenant_id=ctx.tenant_id)
    except NotFound:
        raise PageError(404, f"There is no webhook delivery '{delivery_id}' in this tenant; "
                             "the delivery log is at /ui/webhooks.") from None
    log = [{"attempt": a.attempt, "outcome": a.outcome, "ended": _when(a.ended_at),
            "code": a.detail.get("status_code", ""),
            "latency": "" if a.detail.get("latency_ms") is None
            else f"{a.detail['latency_ms']:,.0f} ms",
            "error": a.error or ""} for a in attempts]
    return {"title": f"Webhook delivery {delivery.id}", "delivery": _row(delivery),
            "attempt_log": log, "can_manage": ctx.can("webhooks:manage"),
            "notice": ctx.params.get("done", "")}


register(Page("/ui/webhooks", "Webhooks", "webhooks:read", "webhooks.html", webhooks_page))
register(Page("/ui/webhooks/{delivery_id}", "Webhook delivery", "webhooks:read",
              "webhook.html", delivery_detail, nav=False))
