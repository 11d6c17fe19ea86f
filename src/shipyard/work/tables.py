"""The durable-work tables (on the store's metadata; migration 0013 creates them).

- `work_items`: the queue. One row per unit of work (a webhook delivery, a job, a batch
  line), from `queued` through `running` (held by a lease) to `succeeded`, `dead` (dead
  letter, with its last error) or `cancelled`.
- `work_attempts`: the log of every attempt of an item (who ran it, when, how it ended, and
  a small JSON `detail` such as a webhook's response code and latency).
- `idempotency_keys`: per tenant and scope, a client's `Idempotency-Key` -> the hash of the
  request that first used it and what it produced (a stored response, or a job id).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from shipyard.store.tables import metadata

__all__ = ["idempotency_keys", "work_attempts", "work_items"]

work_items = Table(
    "work_items",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # queued|running|succeeded|dead|cancelled
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("ref", String(256), nullable=True),  # what it belongs to (batch id, endpoint, ...)
    Column("idempotency_key", String(255), nullable=True),
    Column("payload", Text, nullable=False),  # JSON
    Column("result", Text, nullable=True),  # JSON
    Column("last_error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_s", Float, nullable=True),
    Column("run_after", DateTime(timezone=True), nullable=False),
    Column("lease_token", String(32), nullable=True),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # NULL keys never collide, so only items enqueued with a key are deduplicated.
    UniqueConstraint("tenant_id", "kind", "idempotency_key"),
    Index(None, "kind", "status", "run_after"),  # claiming due items of a kind
    Index(None, "status", "lease_until"),  # reclaiming expired leases
    Index(None, "tenant_id", "kind", "created_at"),  # listing, newest first
    Index(None, "ref"),
    Index(None, "status", "finished_at"),  # retention
)

work_attempts = Table(
    "work_attempts",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("item_id", String(40), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("kind", String(128), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("owner", String(128), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("outcome", String(16), nullable=False),  # succeeded|retry|dead|lost|cancelled|released
    Column("error", Text, nullable=True),
    Column("detail", Text, nullable=True),  # JSON
    Index(None, "item_id", "seq"),
    Index(None, "ended_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("scope", String(256), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # in_progress | completed
    Column("job_id", String(40), nullable=True),
    Column("response_status", Integer, nullable=True),
    Column("response_headers", Text, nullable=True),  # JSON
    Column("response_body", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Index(None, "expires_at"),
)
