"""Store tables (SQLAlchemy Core). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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
    UniqueConstraint,
    false,
    text,
)

__all__ = [
    "LATENCY_BOUNDS_MS",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "alert_events",
    "alert_lease",
    "alerts",
    "audit_head",
    "audit_log",
    "budget_accounts",
    "budget_reservations",
    "drift_profiles",
    "drift_results",
    "eval_runs",
    "feedback",
    "lifecycle_events",
    "metadata",
    "readiness_runs",
    "responses",
    "retrain_jobs",
    "rollouts",
    "spans",
    "target_aliases",
    "target_versions",
    "trace_rollups",
    "traces",
]

__all__ = ["SIDE_ROUTES", "audit_head", "audit_log", "datasets", "metadata", "traces"]

# Traces that are not a caller's request: a shadow copy sent to a candidate version, and a
# canary's failed attempt that stable then answered (shipyard.lifecycle). Dashboards' rollups,
# alert rules and SLOs leave them out; the rollout gates read them.
SIDE_ROUTES = ("shadow", "canary")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
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
    # What became of the request beyond its status (`shipyard.gateway.recorder.outcome_of`):
    # ok, cached, fixed, blocked, escalated, shed, limited, error.
    Column("outcome", String(16), nullable=True),
    # The version of the target that answered (`shipyard.lifecycle`): a service's version
    # number, or a model alias's configuration version number (`upstream_model` names the
    # upstream model); "shadow" and "canary" traces name the candidate.
    Column("version", String(64), nullable=True),
    Index(None, "started_at"),
    Index(None, "tenant_id", "started_at"),
    Index(None, "service", "started_at"),
    Index(None, "request_id"),
    # No index on trace_id: the spans table's primary key finds a W3C trace's requests.
    # Newest-first keyset pages of the trace explorer, whole tenant or one service.
    Index(None, "tenant_id", "started_at", "id"),
    Index(None, "tenant_id", "service", "started_at", "id"),
    # The rollout controller's gates: one version of one service over a recent window.
    Index(None, "service", "version", "started_at"),
)

# What can become of a request beyond its HTTP status (the `outcome` column; see
# `shipyard.gateway.recorder.outcome_of`).
OUTCOMES = ("ok", "cached", "fixed", "blocked", "escalated", "shed", "limited", "error")

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

# Upper bounds (ms) of the latency histogram buckets kept per rollup row; a last, open bucket
# holds everything slower. Roughly x1.5 apart: percentiles read from them are within ~20%.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000,
    3000, 5000, 7500, 10_000, 15_000, 20_000, 30_000, 60_000, 120_000,
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1

# Aggregates of `traces` per minute (`span` 1) and per hour (`span` 60), kept by the trace
# writer in the same transaction as the traces themselves, so dashboards never scan raw traces.
# Empty strings stand for "none" in the key columns (primary-key columns cannot be NULL).
# `minute` is Unix time // 60 (for hourly rows, the hour's first minute).
trace_rollups = Table(
    "trace_rollups",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("span", Integer, primary_key=True, autoincrement=False),
    Column("minute", Integer, primary_key=True, autoincrement=False),
    Column("service", String(128), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("status", Integer, primary_key=True, autoincrement=False),
    Column("error_type", String(64), primary_key=True),
    Column("requests", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("latency_sum_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    # Requests answered politely instead of normally (HTTP 200) and requests shed (503).
    Column("blocked", Integer, nullable=False, server_default="0"),
    Column("escalated", Integer, nullable=False, server_default="0"),
    Column("fixed", Integer, nullable=False, server_default="0"),
    Column("shed", Integer, nullable=False, server_default="0"),
    *(Column(f"b{i}", Integer, nullable=False, server_default="0")
      for i in range(LATENCY_BUCKETS)),
    Index(None, "tenant_id", "span", "service", "minute"),
)

# Feedback on traced requests: a score and/or a label, with who gave it. `service` and
# `version` are copied from the trace so aggregates need no join.
feedback = Table(
    "feedback",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("service", String(128), nullable=False, server_default=""),
    Column("version", String(256), nullable=False, server_default=""),
    Column("score", Float, nullable=True),
    Column("label", String(64), nullable=True),
    Column("comment", Text, nullable=True),
    Column("author", String(128), nullable=True),
    Column("key_id", String(64), nullable=True),
    Index(None, "tenant_id", "created_at"),
    Index(None, "tenant_id", "service", "created_at"),
    Index(None, "trace_id"),
)

# Stored Responses API answers (`POST /v1/responses` with `store: true`): the answer as sent
# and the chat conversation a later `previous_response_id` continues, per tenant.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(128), nullable=False),
    Column("previous_id", String(64), nullable=True),
    Column("trace_id", String(32), nullable=True),
    Column("conversation", Text, nullable=False),  # JSON: chat messages, this turn included
    Column("response", Text, nullable=False),  # JSON: the response object
    Index(None, "tenant_id", "created_at"),
)

# Alerts (shipyard.monitor.alerts): one row per incident of a rule or SLO, from pending to
# resolved; `alert_events` is its history; `alert_lease` elects the one evaluator per store.
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key", String(128), nullable=False),  # rule name, or "SLO:severity"
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("source", String(16), nullable=False),  # rule | slo
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # pending | firing | resolved
    Column("value", Float, nullable=True),
    Column("threshold", Float, nullable=True),
    Column("summary", Text, nullable=False),
    Column("runbook", Text, nullable=False),
    Column("labels", Text, nullable=True),
    Column("url", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=True),
    Column("clear_since", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "state", "key"),
    Index(None, "started_at"),
    # At most one open incident per key, even if two evaluators ever raced to open one.
    Index("ux_alerts_open_key", "key", unique=True,
          sqlite_where=text("state IN ('pending', 'firing')"),
          postgresql_where=text("state IN ('pending', 'firing')")),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False),  # pending, firing, resolved, notified, ...
    Column("value", Float, nullable=True),
    Column("details", Text, nullable=True),
    Index(None, "alert_id", "seq"),
    Index(None, "at"),
)

alert_lease = Table(
    "alert_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Drift (shipyard.monitor): reference profiles (per-column sketches, JSON) and check results.
drift_profiles = Table(
    "drift_profiles",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("service", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=True),
    Column("window_end", DateTime(timezone=True), nullable=True),
    Column("rows", Integer, nullable=False),
    Column("data", Text, nullable=False),
    Index(None, "name", "created_at"),
)

drift_results = Table(
    "drift_results",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("check_name", String(128), nullable=False),
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("service", String(128), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("profile_id", String(32), nullable=True),
    Column("current_start", DateTime(timezone=True), nullable=True),
    Column("current_end", DateTime(timezone=True), nullable=True),
    Column("current_rows", Integer, nullable=False),
    Column("dataset_drift", Boolean, nullable=False),
    Column("share", Float, nullable=False),
    Column("drifted", Integer, nullable=False),
    Column("tested", Integer, nullable=False),
    Column("details", Text, nullable=False),
    Index(None, "check_name", "at"),
    Index(None, "tenant_id", "at"),
)

# One row per dataset version written by `shipyard data run` (see shipyard.data.registry).
datasets = Table(
    "datasets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("parent_id", String(32), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("rows_in", Integer, nullable=False),
    Column("rows_out", Integer, nullable=False),
    Column("rows_quarantined", Integer, nullable=False),
    Column("duplicates_removed", Integer, nullable=False),
    Column("manifest", Text, nullable=False),
    UniqueConstraint("tenant_id", "name", "version"),
    Index(None, "name", "created_at"),
)

# The budget ledger (shipyard.security.budget_ledger) when Redis does not hold it: spend and
# reservations per budget and period, in nano-USD so sums are exact; one row per account
# ("tenant:acme:day:2026-05-01"), reservations expire so a crashed replica frees its holds.
budget_accounts = Table(
    "budget_accounts",
    metadata,
    Column("account", String(255), primary_key=True),
    Column("spent_nusd", BigInteger, nullable=False),
    Column("reserved_nusd", BigInteger, nullable=False),
    Column("warned", Boolean, nullable=False, server_default=false()),
    Column("period_end", DateTime(timezone=True), nullable=False),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account", String(255), primary_key=True),
    Column("amount_nusd", BigInteger, nullable=False),
    Column("expires_at", Float, nullable=False),  # epoch seconds
    Index(None, "expires_at"),
)

# Versions and aliases of targets (shipyard.lifecycle.registry). A version is immutable: its
# code reference or content-addressed artifact, its config and who registered it from what.
# Aliases (`stable`, `canary`, any name) point at versions; moving one is the deploy.
target_versions = Table(
    "target_versions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("target", String(128), nullable=False),
    Column("number", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # function | model
    Column("function", Text, nullable=True),
    Column("artifact_sha256", String(64), nullable=True),
    Column("artifact_path", Text, nullable=True),
    Column("artifact_format", String(16), nullable=True),  # joblib | pickle | onnx
    Column("call", String(16), nullable=True),
    Column("spec_hash", String(64), nullable=False),
    Column("config", Text, nullable=True),
    Column("meta", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    UniqueConstraint("target", "number"),
    Index(None, "target", "spec_hash"),
)

target_aliases = Table(
    "target_aliases",
    metadata,
    Column("target", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(128), nullable=False),
)

# One row per rollout of a candidate (canary or shadow), from start to promotion or rollback.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("target", String(128), nullable=False),
    Column("candidate", Integer, nullable=False),
    Column("stable", Integer, nullable=False),
    Column("mode", String(16), nullable=False),  # canary | shadow
    Column("state", String(16), nullable=False),  # running | promoted | rolled_back | stopped
    Column("step", Integer, nullable=False),
    Column("share", Float, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("step_started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=True),
    Column("last_check", Text, nullable=True),  # the newest gate evaluation (JSON)
    Index(None, "target", "state"),
)

# What happened to a target's versions, in order: registered, promoted, rolled back, a step,
# a gate's verdict, an eval; each with its explanation (JSON).
lifecycle_events = Table(
    "lifecycle_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("target", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False),
    Column("version", Integer, nullable=True),
    Column("actor", String(128), nullable=False),
    Column("details", Text, nullable=True),
    Index(None, "target", "seq"),
)

# `shipyard eval` results, per target version (the baseline run on the same dataset beside).
eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("target", String(128), nullable=False),
    Column("version", Integer, nullable=True),
    Column("baseline", Integer, nullable=True),
    Column("dataset", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("baseline_metrics", Text, nullable=True),
    Column("passed", Boolean, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "target", "created_at"),
)

# Retraining jobs (shipyard.lifecycle.retrain): each step's result is kept as it completes,
# so a job whose process died resumes from the step it was in.
retrain_jobs = Table(
    "retrain_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("target", String(128), nullable=False),
    Column("trigger", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # running | done | failed
    Column("step", String(16), nullable=False),
    Column("steps", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("holder", String(128), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "target", "created_at"),
    Index(None, "state"),
)

# Readiness verdicts (`shipyard check`): one row per run, per target, for the dashboard's
# readiness-over-time page; `report` is the whole JSON report.
readiness_runs = Table(
    "readiness_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False, server_default="default"),
    Column("target", String(256), nullable=False),  # what was checked, e.g. "model demo"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("mode", String(16), nullable=False),  # quick | full
    Column("score", Float, nullable=True),  # overall, 0-100
    Column("status", String(8), nullable=False),  # pass | warn | fail
    Column("gate_passed", Boolean, nullable=True),  # None: no gate was given
    Column("scores", Text, nullable=False),  # JSON: section key -> score
    Column("report", Text, nullable=False),  # JSON: the whole report
    Index(None, "tenant_id", "target", "created_at"),
)
