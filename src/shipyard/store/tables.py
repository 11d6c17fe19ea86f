"""Store tables (SQLAlchemy Core). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

__all__ = ["audit_head", "audit_log", "metadata", "spans", "traces"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

traces = Table(
    "traces",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    # Tenancy placeholders: filled by the security layer; "default" until then.
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("key_id", String(64), nullable=True),
    Column("route", String(32), nullable=False),
    Column("service", String(128), nullable=True),
    Column("model_alias", String(128), nullable=True),
    Column("provider", String(128), nullable=True),
    Column("upstream_model", String(256), nullable=True),
    Column("stream", Boolean, nullable=False, server_default=false()),
    Column("status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("queue_ms", Float, nullable=True),
    Column("upstream_ms", Float, nullable=True),
    Column("ttft_ms", Float, nullable=True),
    Column("overhead_ms", Float, nullable=True),
    Column("total_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("tokens_estimated", Boolean, nullable=False, server_default=false()),
    Column("finish_reason", String(32), nullable=True),
    Column("capture", String(16), nullable=False),
    Column("request_bytes", Integer, nullable=True),
    Column("response_bytes", Integer, nullable=True),
    Column("attributes", Text, nullable=True),
    Column("request_body", Text, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("cost_usd", Float, nullable=True),
    # The W3C trace id: the caller's (from `traceparent`) or, without one, equal to `id`.
    # Several requests of one distributed trace share it; `id` stays unique per request.
    Column("trace_id", String(32), nullable=True),
    Index(None, "started_at"),
    Index(None, "tenant_id", "started_at"),
    Index(None, "service", "started_at"),
    Index(None, "request_id"),
    # No index on trace_id: the spans table's primary key finds a W3C trace's requests.
)

# The spans of one traced request (the pipeline stages and every upstream attempt), so a
# waterfall can be drawn without a collector. One row per request, written with its trace by
# the batched writer: `spans` is a JSON array of [span id, parent span id, name, start ms (from
# the request's start), duration ms, error, attributes]. One row (not one per span) keeps the
# writer's cost per request low: two index entries instead of a dozen. Read with
# `shipyard.store.traces.get_spans`.
spans = Table(
    "spans",
    metadata,
    Column("record_id", String(32), primary_key=True),  # traces.id of the request
    Column("trace_id", String(32), nullable=False),  # the W3C trace id
    Column("tenant_id", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),  # the request's start
    Column("spans", Text, nullable=False),
    Index(None, "trace_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("details", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index(None, "tenant_id", "seq"),
)

# One row (id 1): the seq and hash of the last audit entry, updated in the same transaction as
# each append. It makes a deleted *last* entry visible (the chain alone cannot show it), and it is
# the row appenders lock to take turns. See shipyard.security.audit.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
