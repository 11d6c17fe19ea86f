"""The `traces:` section: what is recorded per request, OTLP export and retention.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator

from shipyard.config.base import Section

if TYPE_CHECKING:
    from shipyard.config.schema import Config

__all__ = [
    "OTLPConfig",
    "RetentionConfig",
    "TenantRetention",
    "TracesConfig",
    "default_spool_dir",
]


class OTLPConfig(Section):
    """Where spans are exported with OTLP/HTTP (protobuf); needs `shipyard[otel]`."""

    endpoint: str = Field(
        description="OTLP/HTTP traces URL of a collector, e.g. "
        "`http://127.0.0.1:4318/v1/traces` (the full path, as OpenTelemetry's "
        "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra headers for the collector (e.g. an API key as `{$env: NAME}`).")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Longest one export may take.")
    service_name: str = Field("shipyard", description="The `service.name` resource attribute.")
    max_queue_size: int = Field(
        20_000, ge=100, description="Spans buffered for export; beyond it spans are dropped "
        "(and logged by OpenTelemetry).")
    schedule_delay_s: float = Field(
        1.0, gt=0, le=60, description="Longest a span waits before its batch is exported.")
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces exported (decided from the trace id; "
        "a caller's `traceparent` sampled flag is followed instead). Spans are stored in the "
        "Shipyard store either way.")


class TenantRetention(Section):
    tenant: str = Field(description="The tenant id these retention periods apply to.")
    days: float | None = Field(
        None, gt=0, description="Delete this tenant's traces (and spans) older than this many "
        "days; None: the global `days`.")
    payload_days: float | None = Field(
        None, gt=0, description="Clear this tenant's captured request and response bodies "
        "older than this many days (the trace itself stays); None: the global "
        "`payload_days`.")


class RetentionConfig(Section):
    """How long traces and their payloads are kept; purged in the background."""

    days: float | None = Field(
        None, gt=0, description="Delete traces (and their spans) older than this many days; "
        "None (the default) keeps them forever.")
    payload_days: float | None = Field(
        None, gt=0, description="Clear captured request and response bodies older than this "
        "many days, keeping the trace's counts, latency, tokens and cost; None keeps them.")
    tenants: list[TenantRetention] = Field(
        default_factory=list, description="Per-tenant periods that replace `days` and "
        "`payload_days` for that tenant.")

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, value: list[TenantRetention]) -> list[TenantRetention]:
        seen: set[str] = set()
        for item in value:
            if item.tenant in seen:
                raise ValueError(f"tenant '{item.tenant}' is listed twice; keep one entry")
            seen.add(item.tenant)
        return value
    interval_s: float = Field(
        3600.0, ge=1, description="How often the gateway purges in the background (each "
        "worker; the purge is idempotent). `shipyard traces purge` runs one purge now.")
    batch_size: int = Field(
        1000, ge=1, le=100_000, description="Rows deleted or cleared per transaction: small "
        "batches keep the store free for the trace writer between them.")


class TracesConfig(Section):
    enabled: bool = Field(True, description="Record a trace for every request.")
    sample_payloads: float = Field(
        1.0, ge=0, le=1, description="Share of requests whose bodies are captured (for models "
        "and services with `capture: full`); decided from the trace id, so every service of "
        "one distributed trace agrees. Counts, latency, tokens and cost are always recorded.")
    spans: bool = Field(
        True, description="Store requests' spans (pipeline stages, upstream attempts) in the "
        "`spans` table, for a waterfall without a collector.")
    sample_spans: float = Field(
        0.1, ge=0, le=1,
        description="Share of successful single-attempt requests whose spans are stored "
        "(decided from the trace id); spans of failed, retried or fallen-back requests are "
        "always stored. Storing spans is the trace writer's most expensive part "
        "(docs/observability.md).")
    otlp: OTLPConfig | None = Field(
        None, description="Export spans to an OpenTelemetry collector over OTLP/HTTP.")
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig(),
                                       description="Retention of traces and payloads.")
    queue_size: int = Field(
        10_000,
        ge=100,
        description="Bounded in-memory queue between requests and the trace writer; overflow "
        "is counted in `shipyard_trace_queue_dropped_total` and logged.",
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="Traces written per transaction.")
    flush_interval_s: float = Field(
        0.2, gt=0, le=60, description="Longest a trace waits in the queue before it is written."
    )
    spool_dir: str | None = Field(
        None,
        description="Where traces wait on disk while the store is down (replayed in order when "
        "it is back). Default: a `spool` folder beside a SQLite store, else `.shipyard/spool`.",
    )
    durable: Literal["off", "full", "all"] = Field(
        "off",
        description="Which traces are on disk before their response is sent, so killing the "
        "process (SIGKILL, OOM) loses none of them: `off` (the default: traces wait in memory "
        "for up to `flush_interval_s`), `full` (requests whose payloads are captured, "
        "`capture: full`), or `all`. Costs one file append per such request "
        "(docs/benchmarks.md); a machine crash can still lose the page cache.",
    )

    @field_validator("durable", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML reads a bare `off` (and `on`) as a boolean.
        if value is False:
            return "off"
        if value is True:
            return "all"
        return value

    spool_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Most bytes of spooled traces; beyond it traces are counted as lost and "
        "logged.",
    )
    encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Fernet keys (as `{$env: NAME}` references) that encrypt captured payloads "
        "at rest; the first encrypts, all decrypt (rotation: put the new key first). Make one "
        "with `shipyard keys encryption-key`; needs `shipyard[encryption]`.",
    )
    max_payload_chars: int = Field(
        32_768,
        ge=0,
        description="With `capture: full`, payloads longer than this are truncated (and marked).",
    )


def default_spool_dir(config: Config) -> str:
    """`traces.spool_dir`, or its default for this store."""
    if config.traces.spool_dir:
        return config.traces.spool_dir
    url = config.store.url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return str(Path(url.removeprefix("sqlite:///")).expanduser().parent / "spool")
    return ".shipyard/spool"
