"""`POST /v1/feedback` and `GET /v1/feedback[/summary]`: feedback on the caller's own traces.

A caller gives feedback only on traces of its own tenant: a trace id from another tenant is
answered exactly like one that does not exist (404).

```
curl -X POST $URL/v1/feedback -H "Authorization: Bearer $KEY" \\
     -d '{"trace_id": "9f2c…", "score": 1, "label": "helpful", "by": "user-42"}'
```
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import InvalidRequest, NotFound, ValidationFailed
from shipyard.gateway.admin_routes import acting_tenant
from shipyard.gateway.http import json_response, read_json
from shipyard.gateway.runtime import Gateway
from shipyard.gateway.scopes import ScopedRoute
from shipyard.store.feedback import add_feedback, feedback_series, list_feedback
from shipyard.store.traces import get_trace

__all__ = ["feedback_routes"]

_LIMITS = {"trace_id": 128, "label": 64, "comment": 4000, "by": 128}
_SCORE_MAX = 1e9
_BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}


def _text(body: dict[str, Any], name: str, example: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"Field '{name}' is {value!r}; it must be a non-empty string, "
                               f"e.g. {example}.", param=name)
    if "\x00" in value:
        raise ValidationFailed(f"Field '{name}' contains a NUL character; remove it.",
                               param=name)
    if len(value) > _LIMITS[name]:
        raise ValidationFailed(f"Field '{name}' has {len(value)} characters; the limit is "
                               f"{_LIMITS[name]}.", param=name)
    return value.strip()


def parse_feedback(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a feedback body; 422 naming the field, the value and the fix."""
    unknown = sorted(set(body) - {"trace_id", "score", "label", "comment", "by"})
    if unknown:
        raise ValidationFailed(f"Field '{unknown[0]}' is not a feedback field; send trace_id, "
                               "score, label, comment and by.", param=unknown[0])
    trace_id = _text(body, "trace_id", '"9f2c…" (the x-shipyard-trace-id response header)')
    if trace_id is None:
        raise ValidationFailed("Field 'trace_id' is required: the trace the feedback is about "
                               "(the x-shipyard-trace-id or x-request-id response header).",
                               param="trace_id")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)
                              or not math.isfinite(score) or abs(score) > _SCORE_MAX):
        raise ValidationFailed(f"Field 'score' is {score!r}; it must be a finite number, e.g. 1 "
                               "(thumbs up), 0 (thumbs down) or 4 (of 5 stars).", param="score")
    label = _text(body, "label", '"helpful" or "wrong_answer"')
    if score is None and label is None:
        raise ValidationFailed("Send a 'score' (a number) or a 'label' (a string), or both; "
                               "the feedback has neither.", param="score")
    return {"trace_id": trace_id, "score": None if score is None else float(score),
            "label": label, "comment": _text(body, "comment", '"the answer cited the wrong '
                                                              'policy"'),
            "author": _text(body, "by", '"user-42"')}


class FeedbackRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def _trace(self, trace_id: str, tenant: str) -> dict[str, Any]:
        engine = self.gw.engine
        row = await asyncio.to_thread(get_trace, engine, trace_id, tenant_id=tenant)
        writer = self.gw.recorder.writer
        if row is None and writer is not None:
            # Traces are written off the hot path; feedback sent right after the answer may
            # arrive before its trace (queued, or in a batch being committed). Give the writer
            # a few flushes to catch up before answering 404.
            deadline = time.monotonic() + min(2.0, writer.flush_interval_s * 3 + 0.2)
            while row is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                row = await asyncio.to_thread(get_trace, engine, trace_id, tenant_id=tenant)
        if row is None:
            raise NotFound(f"There is no trace '{trace_id}' in this tenant; send the "
                           "x-shipyard-trace-id (or x-request-id) of one of your own requests.",
                           param="trace_id")
        return row

    async def create(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "feedback:write")
        body, _ = await read_json(request, self.gw.config.server.max_body_bytes,
                                  max_depth=self.gw.config.server.max_json_depth)
        fields = parse_feedback(body)
        trace = await self._trace(fields.pop("trace_id"), principal.tenant_id)
        row = await asyncio.to_thread(add_feedback, self.gw.engine,
                                      tenant_id=principal.tenant_id, trace=trace,
                                      key_id=principal.key_id, **fields)
        return json_response(_public(row), status=201)

    async def list(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "feedback:read")
        tenant = acting_tenant(principal, request)
        since = _since(request)
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise InvalidRequest("Query parameter 'limit' must be an integer from 1 to 1000.",
                                 param="limit") from None
        rows = await asyncio.to_thread(list_feedback, self.gw.engine, tenant_id=tenant,
                                       since=since, service=_service(request), limit=limit)
        return json_response({"object": "list", "data": [_public(r) for r in rows]})

    async def summary(self, request: Request) -> Response:
        principal = await self.gw.authorize(request, "feedback:read")
        tenant = acting_tenant(principal, request)
        bucket = request.query_params.get("bucket", "hour")
        if bucket not in _BUCKETS:
            raise InvalidRequest(f"Query parameter 'bucket' is {bucket!r}; use minute, hour or "
                                 "day.", param="bucket")
        now = datetime.now(UTC)
        since = _since(request) or now - timedelta(days=7)
        rows = await asyncio.to_thread(feedback_series, self.gw.engine, tenant_id=tenant,
                                       since=since, until=now + timedelta(seconds=1),
                                       bucket_s=_BUCKETS[bucket], service=_service(request))
        return json_response({"object": "list", "data": [r.to_dict() for r in rows]})


def _service(request: Request) -> str | None:
    value = request.query_params.get("service")
    if value is not None and "\x00" in value:
        raise InvalidRequest("Parameter 'service' contains a NUL character; remove it.",
                             param="service")
    return value


def _since(request: Request) -> datetime | None:
    value = request.query_params.get("since")
    if value is None:
        return None
    try:
        since = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"Query parameter 'since' is {value!r}; use an ISO time such as "
                             "2026-11-27T10:00:00Z.", param="since") from None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "feedback", "trace_id": row["trace_id"],
            "tenant": row["tenant_id"], "created_at": row["created_at"],
            "service": row["service"], "version": row["version"], "score": row["score"],
            "label": row["label"], "comment": row["comment"], "by": row["author"],
            "key_id": row["key_id"]}


def feedback_routes(gateway: Gateway) -> list[ScopedRoute]:
    routes = FeedbackRoutes(gateway)
    return [
        ScopedRoute("/v1/feedback", routes.create, methods=["POST"], scope="feedback:write"),
        ScopedRoute("/v1/feedback", routes.list, methods=["GET"], scope="feedback:read"),
        ScopedRoute("/v1/feedback/summary", routes.summary, methods=["GET"],
                    scope="feedback:read"),
    ]
