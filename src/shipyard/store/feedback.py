"""Feedback on traced requests: store it, list it, aggregate it, export it as a dataset.

Each row links to one trace of the same tenant and copies the trace's service and version
(the upstream model, or a `version` attribute when the trace has one), so aggregates need no
join with `traces`.

>>> record = add_feedback(engine, tenant_id="acme", trace=trace, score=1.0)  # doctest: +SKIP
>>> feedback_series(engine, tenant_id="acme", since=day_ago, until=now)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, and_, select

from shipyard.store.tables import feedback, traces

__all__ = [
    "FeedbackBucket",
    "add_feedback",
    "feedback_series",
    "iter_dataset",
    "list_feedback",
    "trace_version",
]


def trace_version(trace: dict[str, Any]) -> str:
    """The version a trace ran: its `version` column (the lifecycle's version number), its
    `version` attribute, else the upstream model."""
    if trace.get("version"):
        return str(trace["version"])[:256]
    attributes = trace.get("attributes")
    if isinstance(attributes, str) and '"version"' in attributes:
        try:
            version = orjson.loads(attributes).get("version")
        except (orjson.JSONDecodeError, AttributeError):
            version = None
        if isinstance(version, str) and version:
            return version[:256]
    return str(trace.get("upstream_model") or "")[:256]


def _row(mapping: Any) -> dict[str, Any]:
    row = {str(k): v for k, v in mapping.items()}
    value = row.get("created_at")
    if isinstance(value, datetime) and value.tzinfo is None:
        row["created_at"] = value.replace(tzinfo=UTC)
    return row


def add_feedback(engine: Engine, *, tenant_id: str, trace: dict[str, Any],
                 score: float | None = None, label: str | None = None,
                 comment: str | None = None, author: str | None = None,
                 key_id: str | None = None) -> dict[str, Any]:
    """Store feedback on `trace` (a trace row of `tenant_id`); returns the stored row."""
    row = {
        "id": os.urandom(16).hex(),
        "tenant_id": tenant_id,
        "trace_id": trace["id"],
        "created_at": datetime.now(UTC),
        "service": str(trace.get("service") or trace.get("model_alias") or "")[:128],
        "version": trace_version(trace),
        "score": score,
        "label": label,
        "comment": comment,
        "author": author,
        "key_id": key_id,
    }
    with engine.begin() as connection:
        connection.execute(feedback.insert(), row)
    return row


def list_feedback(engine: Engine, *, tenant_id: str, since: datetime | None = None,
                  service: str | None = None, trace_id: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """The tenant's feedback, newest first."""
    query = select(feedback).where(feedback.c.tenant_id == tenant_id)
    if trace_id is not None:
        query = query.where(feedback.c.trace_id == trace_id)
    if since is not None:
        query = query.where(feedback.c.created_at >= since)
    if service is not None:
        query = query.where(feedback.c.service == service)
    query = query.order_by(feedback.c.created_at.desc(), feedback.c.id).limit(limit)
    with engine.connect() as connection:
        return [_row(m) for m in connection.execute(query).mappings()]


@dataclass
class FeedbackBucket:
    """Feedback of one service and version over one time bucket."""

    start: datetime
    service: str
    version: str
    count: int = 0
    scored: int = 0
    score_sum: float = 0.0
    labels: dict[str, int] | None = None

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "service": self.service,
                "version": self.version, "count": self.count, "scored": self.scored,
                "mean_score": self.mean_score, "labels": self.labels or {}}


def feedback_series(engine: Engine, *, tenant_id: str, since: datetime, until: datetime,
                    bucket_s: int = 3600, service: str | None = None) -> list[FeedbackBucket]:
    """Count, mean score and label counts per time bucket, service and version.

    Reads only the window's rows through the (tenant, created_at) index and aggregates them in
    Python, which keeps bucketing identical on SQLite and PostgreSQL.
    """
    query = (select(feedback.c.created_at, feedback.c.service, feedback.c.version,
                    feedback.c.score, feedback.c.label)
             .where(feedback.c.tenant_id == tenant_id, feedback.c.created_at >= since,
                    feedback.c.created_at < until))
    if service is not None:
        query = query.where(feedback.c.service == service)
    buckets: dict[tuple[int, str, str], FeedbackBucket] = {}
    step = max(1, bucket_s)
    with engine.connect() as connection:
        for at, svc, version, score, label in connection.execute(query):
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            slot = int(at.timestamp()) // step * step
            key = (slot, svc, version)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = FeedbackBucket(datetime.fromtimestamp(slot, UTC), svc,
                                                       version, labels={})
            bucket.count += 1
            if score is not None:
                bucket.scored += 1
                bucket.score_sum += float(score)
            if label is not None and bucket.labels is not None:
                bucket.labels[label] = bucket.labels.get(label, 0) + 1
    return [buckets[k] for k in sorted(buckets)]


def iter_dataset(engine: Engine, *, tenant_id: str | None = None, since: datetime | None = None,
                 service: str | None = None, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Feedback joined with its trace's request and response (when captured), oldest first:
    a labelled dataset for evaluation or retraining."""
    query = (select(feedback, traces.c.request_body, traces.c.response_body,
                    traces.c.model_alias, traces.c.status, traces.c.started_at.label("trace_at"))
             .select_from(feedback.outerjoin(traces, and_(
                 traces.c.id == feedback.c.trace_id,
                 traces.c.tenant_id == feedback.c.tenant_id))))
    if tenant_id is not None:
        query = query.where(feedback.c.tenant_id == tenant_id)
    if since is not None:
        query = query.where(feedback.c.created_at >= since)
    if service is not None:
        query = query.where(feedback.c.service == service)
    query = query.order_by(feedback.c.created_at, feedback.c.id)
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=batch).execute(
            query)
        for mapping in result.mappings():
            yield _row(mapping)

