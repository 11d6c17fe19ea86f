"""The dashboard's jobs and batches pages: `shipyard jobs list|show` and `GET /v1/batches` in
a browser.

- `/ui/jobs`: counts by status, one lane per target (queued, running, its concurrency
  limit), the dead letter with each job's last error, and the jobs filtered by status and
  target.
- `/ui/jobs/{job_id}`: one job: timings, every attempt, the error, the answer, the webhook
  deliveries that announced it, and a link to its trace.
- `/ui/batches`: every batch with its progress (completed, failed, total) and links to its
  output and error files.

Cancel and Retry post to routes in `shipyard.ui.routes`, with the session's CSRF token and
scope `inference` (the scope `/v1/jobs/{id}/cancel` and `/v1/batches/{id}/cancel` need).

What a page shows is no more than the API shows: a job's stored request is never shown
(`GET /v1/jobs/{id}` does not return it either); its answer only to a role with `inference`
(the scope that reads it through the API); the request and response as the trace captured
them (`capture:` and PII redaction applied when the trace was written, as on the trace page).

>>> from shipyard.ui.pages import PAGES
>>> PAGES["/ui/jobs"].template
'jobs.html'
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from shipyard.errors import InvalidRequest, NotFound
from shipyard.jobs import Job
from shipyard.jobs.batches import TERMINAL
from shipyard.jobs.jobs import KIND_PREFIX
from shipyard.store.traces import get_trace
from shipyard.ui.pages import Page, PageContext, PageError, register
from shipyard.webhooks.delivery import KIND as WEBHOOK_KIND
from shipyard.webhooks.delivery import Delivery
from shipyard.work import FINISHED, STATUSES

__all__ = ["batches_page", "job_detail", "jobs_page"]

_PREVIEW_CHARS = 4000
_DEAD_SHOWN = 20
_LISTED = 200
# What the page may do to a job in each status (as the API allows it).
_CANCELLABLE = ("queued", "running")
_RETRYABLE = ("dead", "cancelled", "succeeded")


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stamp(value: int | None) -> str:
    return "" if value is None else _when(datetime.fromtimestamp(value, UTC))


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():,.2f} s"


def _preview(value: Any) -> str:
    """JSON (or text) cut to a size a page can hold."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(
        value, option=orjson.OPT_INDENT_2).decode()
    if len(text) > _PREVIEW_CHARS:
        return text[:_PREVIEW_CHARS] + f"\n… ({len(text) - _PREVIEW_CHARS:,} more characters)"
    return text


def _attached(ctx: PageContext) -> PageContext:
    if ctx.jobs is None:
        raise PageError(503, "This dashboard is not attached to a gateway's job queue.")
    return ctx


def _row(job: Job) -> dict[str, Any]:
    item = job.item
    return {"id": job.id, "status": job.status, "target": job.target,
            "target_type": job.target_type, "created": _when(item.created_at),
            "attempts": f"{item.attempts}/{item.max_attempts}",
            "duration": _seconds(item.started_at, item.finished_at),
            "error": item.last_error or "", "cancel_requested": item.cancel_requested,
            "cancellable": job.status in _CANCELLABLE and not item.cancel_requested,
            "retryable": job.status in _RETRYABLE}


def _lanes(ctx: PageContext) -> list[dict[str, Any]]:
    """One lane per target: configured models and services, and any target with jobs."""
    config = ctx.config
    counts = ctx.jobs.queue.counts_by_kind(KIND_PREFIX, tenant_id=ctx.tenant_id)
    lanes: dict[str, dict[str, Any]] = {}

    def lane(target_type: str, name: str) -> dict[str, Any]:
        key = f"{target_type}:{name}"
        if key not in lanes:
            limit = None
            if config is not None:
                limit = config.jobs.for_target(name).concurrency or config.jobs.concurrency
            lanes[key] = {"target": name, "type": target_type, "limit": limit or "",
                          **dict.fromkeys(STATUSES, 0)}
        return lanes[key]

    for (kind, status), n in counts.items():
        _, target_type, name = kind.split(":", 2)
        lane(target_type, name)[status] += n
    if config is not None:
        for name in config.models:
            lane("model", name)
        for name in config.services:
            lane("service", name)
    return sorted(lanes.values(), key=lambda r: (-(r["queued"] + r["running"]), r["target"]))


def jobs_page(ctx: PageContext) -> dict[str, Any]:
    """Counts, lanes, the dead letter and the jobs newest first (filtered)."""
    jobs = _attached(ctx).jobs
    status = ctx.params.get("status") or None
    target = (ctx.params.get("target") or "").strip() or None
    if target is not None and "\x00" in target:  # PostgreSQL text cannot hold one
        raise PageError(400, "The target filter holds a NUL character; name a model alias "
                             "or a service.")
    try:
        listed, more = jobs.list(tenant_id=ctx.tenant_id, status=status, target=target,
                                 limit=_LISTED)
    except InvalidRequest as exc:
        raise PageError(400, exc.message) from None
    dead, _ = jobs.list(tenant_id=ctx.tenant_id, status="dead", limit=_DEAD_SHOWN)
    lanes = _lanes(ctx)
    counts = {s: sum(lane[s] for lane in lanes) for s in STATUSES}
    return {"jobs": [_row(j) for j in listed], "more": more, "statuses": list(STATUSES),
            "counts": counts, "lanes": lanes, "dead": [_row(j) for j in dead],
            "targets": sorted({lane["target"] for lane in lanes}),
            "filters": {"status": status or "", "target": target or ""},
            "can_act": ctx.can("inference"), "notice": ctx.params.get("done", "")}


def job_detail(ctx: PageContext) -> dict[str, Any]:
    """One job: its timings, attempts, error, answer, webhook deliveries and trace."""
    jobs = _attached(ctx).jobs
    job_id = ctx.path_params["job_id"]
    try:
        if "\x00" in job_id:  # PostgreSQL text cannot hold one: no job has it
            raise NotFound("no such job")
        job = jobs.get(job_id, tenant_id=ctx.tenant_id)
    except NotFound:
        raise PageError(404, f"There is no job '{job_id}' in this tenant; the jobs are listed "
                             "at /ui/jobs.") from None
    public, item = job.public(), job.item
    attempts = [{"attempt": a.attempt, "outcome": a.outcome, "started": _when(a.started_at),
                 "ended": _when(a.ended_at), "took": _seconds(a.started_at, a.ended_at),
                 "code": a.detail.get("status_code", ""), "trace": a.detail.get("trace_id"),
                 "error": a.error or ""} for a in jobs.queue.attempts(job.id)]
    deliveries = [{"id": d.id, "endpoint": d.endpoint, "event": d.event_type,
                   "status": d.status, "attempts": f"{d.attempts}/{d.max_attempts}"}
                  for d in map(Delivery.of, jobs.queue.list_items(
                      tenant_id=ctx.tenant_id, kind=WEBHOOK_KIND, key_prefix=f"{job.id}:",
                      limit=20))]
    trace_id = public["trace_id"]
    trace = get_trace(ctx.engine, trace_id, tenant_id=ctx.tenant_id) if trace_id else None
    captured = ctx.readable(trace) if trace is not None else None
    can_read = ctx.can("inference")
    fields = [("Target", f"{job.target_type} {job.target}"), ("Endpoint", public["endpoint"]),
              ("Created (UTC)", _when(item.created_at)),
              ("Started (UTC)", _when(item.started_at)),
              ("Finished (UTC)", _when(item.finished_at)),
              ("Queued for", _seconds(item.created_at, item.started_at)),
              ("Ran for", _seconds(item.started_at, item.finished_at)),
              ("Attempts", f"{item.attempts}/{item.max_attempts}"),
              ("Timeout", f"{item.timeout_s:g} s" if item.timeout_s else ""),
              ("Next attempt (UTC)", _stamp(public["next_attempt_at"])),
              ("Status code", public["status_code"] or ""),
              ("Cancel requested", "yes" if item.cancel_requested else "")]
    if public["metadata"]:
        fields.append(("Metadata", orjson.dumps(public["metadata"]).decode()))
    return {"title": f"Job {job.id}", "job": _row(job),
            "fields": [(k, v) for k, v in fields if v not in ("", None)],
            "error": public["error"], "attempt_log": attempts, "deliveries": deliveries,
            "trace_id": trace_id if trace is not None else None,
            "result": _preview(public["result"]) if can_read else None,
            "can_read": can_read, "finished": item.status in FINISHED,
            "captured": None if captured is None else {
                "request": _preview(captured.get("request_body")),
                "response": _preview(captured.get("response_body")),
                "capture": captured.get("capture") or ""},
            "can_act": can_read, "can_webhooks": ctx.can("webhooks:read"),
            "notice": ctx.params.get("done", "")}


def batches_page(ctx: PageContext) -> dict[str, Any]:
    """Batches newest first, with their progress and files."""
    batches = ctx.batches
    if batches is None:
        raise PageError(503, "This dashboard is not attached to a gateway's batches.")
    found, more = batches.list_batches(tenant_id=ctx.tenant_id, limit=100)
    rows = []
    counts: dict[str, int] = {}
    for batch in found:
        b = batch.public()
        total, done, failed = (b["request_counts"][k] for k in ("total", "completed", "failed"))
        counts[b["status"]] = counts.get(b["status"], 0) + 1
        errors = (b["errors"] or {}).get("data") or []
        rows.append({"id": b["id"], "status": b["status"], "endpoint": b["endpoint"],
                     "created": _stamp(b["created_at"]), "window": b["completion_window"],
                     "total": total, "completed": done, "failed": failed,
                     "percent": round(100 * (done + failed) / total) if total else 0,
                     "input_file_id": b["input_file_id"],
                     "output_file_id": b["output_file_id"],
                     "error_file_id": b["error_file_id"],
                     "errors": "; ".join(str(e.get("message", "")) for e in errors[:3]),
                     "cancellable": b["status"] not in TERMINAL and b["status"] != "cancelling"})
    return {"batches": rows, "more": more, "counts": counts, "can_act": ctx.can("inference"),
            "notice": ctx.params.get("done", "")}


register(Page("/ui/jobs", "Jobs", "traces:read", "jobs.html", jobs_page))
register(Page("/ui/jobs/{job_id}", "Job", "traces:read", "job.html", job_detail, nav=False))
register(Page("/ui/batches", "Batches", "traces:read", "batches.html", batches_page))
