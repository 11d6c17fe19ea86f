"""The `shipyard.yaml` schema: every setting declared once, with its type, default and help.

The models below are the settings table. `iter_settings()` walks them, the configuration
reference in `docs/configuration.md` is generated from it, and a test fails when a setting is
not documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from shipyard.config.alerting import AlertsConfig, SLOConfig, check_alert_references

__all__ = [
    "AuthConfig",
    "CaptureMode",
    "Config",
    "DriftCheckConfig",
    "DriftConfig",
    "EscalationConfig",
    "GuardSpec",
    "GuardsConfig",
    "ModelConfig",
    "OIDCConfig",
    "OTLPConfig",
    "PIIConfig",
    "ProviderConfig",
    "RetentionConfig",
    "ServerConfig",
    "ServiceConfig",
    "Setting",
    "StoreConfig",
    "TenantRetention",
    "TracesConfig",
    "iter_settings",
]

CaptureMode = Literal["none", "metadata", "full"]
PIITarget = Literal["request", "response", "traces"]
_PII_TARGETS: tuple[PIITarget, ...] = ("request", "response", "traces")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
ROLES = ("admin", "operator", "developer", "client", "viewer")  # highest privilege first
Role = Literal["admin", "operator", "developer", "client", "viewer"]
JWT_ALGORITHMS = ("RS256", "ES256")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorsConfig(_Section):
    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (e.g. https://app.example.com). "
        "Empty (the default): no cross-origin access at all.")
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"],
                                     description="Methods allowed cross-origin.")
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-request-id"],
        description="Request headers allowed cross-origin.")
    allow_credentials: bool = Field(False, description="Allow cookies and HTTP auth.")
    max_age_s: int = Field(600, ge=0, description="How long browsers cache a preflight.")


class ServerConfig(_Section):
    """How `shipyard serve` listens."""

    host: str = Field("127.0.0.1", description="Interface `shipyard serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port `shipyard serve` listens on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes for `shipyard serve`.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body accepted, in bytes; larger bodies get 413.",
    )
    metrics_public: bool = Field(
        False,
        description="Serve `/metrics` without an API key (for a scraper on a private network).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the gateway and its access log."
    )
    access_log: bool = Field(False, description="Write one uvicorn access-log line per request.")
    public_url: str | None = Field(
        None,
        description="Base URL people reach this gateway at (e.g. `https://ai.example.com`); "
        "alert notifications link to `{public_url}/ui/alerts/{id}`. Default: "
        "`http://HOST:PORT` from `host` and `port`.")
    max_in_flight: int | None = Field(
        None, ge=1, description="Most requests processed at once in this process (none: no limit)."
    )
    max_queue: int = Field(
        0, ge=0, description="Requests that may wait for a global slot; beyond it, 503 at once."
    )
    max_queue_ms: float = Field(
        1000.0, ge=0, description="Longest a request waits for a global slot before a 503."
    )
    cors: CorsConfig = Field(default_factory=lambda: CorsConfig())
    tls_certfile: str | None = Field(
        None, description="PEM certificate (chain) to serve HTTPS; with `tls_keyfile`.")
    tls_keyfile: str | None = Field(None, description="PEM private key of `tls_certfile`.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both 'tls_certfile' and 'tls_keyfile' to serve HTTPS, or "
                             "neither")
        for name in ("tls_certfile", "tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"'{name}' is '{path}', which is not a readable file")
        return self
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests (streams too) may finish before "
        "the process exits.",
    )


class StoreConfig(_Section):
    url: str = Field(
        "sqlite:///.shipyard/shipyard.db",
        description=(
            "SQLAlchemy URL of the store: SQLite (WAL) by default, or "
            "`postgresql+psycopg://user@host:5432/db` (install `shipyard[postgres]`)."
        ),
    )
    migrate: bool = Field(
        True, description="Run Alembic migrations to the latest revision at startup."
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "must be a SQLAlchemy URL starting with 'sqlite:///' or 'postgresql+psycopg://'"
            )
        return value


class OTLPConfig(_Section):
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


class TenantRetention(_Section):
    tenant: str = Field(description="The tenant id these retention periods apply to.")
    days: float | None = Field(
        None, gt=0, description="Delete this tenant's traces (and spans) older than this many "
        "days; None: the global `days`.")
    payload_days: float | None = Field(
        None, gt=0, description="Clear this tenant's captured request and response bodies "
        "older than this many days (the trace itself stays); None: the global "
        "`payload_days`.")


class RetentionConfig(_Section):
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


class TracesConfig(_Section):
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


class OIDCConfig(_Section):
    issuer: str = Field(
        description="Expected `iss` claim, exactly as the identity provider writes it (e.g. "
        "`https://idp.example.com/realms/acme`; mind a trailing slash)."
    )
    audience: str | list[str] = Field(
        description="Accepted `aud` value(s): a token must name at least one (the API's "
        "identifier or client id at the identity provider)."
    )
    jwks_file: str | None = Field(
        None,
        description="Path of a JWKS (JSON Web Key Set) file with the signing keys; relative "
        "to the working directory. Set this or `jwks_url`.",
    )
    jwks_url: str | None = Field(
        None,
        description="URL of the identity provider's JWKS (`jwks_uri` in its "
        "`/.well-known/openid-configuration`). Set this or `jwks_file`.",
    )
    jwks_cache_s: float = Field(
        600.0, gt=0, description="How long fetched signing keys are used before a refresh."
    )
    jwks_min_refresh_s: float = Field(
        30.0,
        ge=0,
        description="Least time between two JWKS refreshes caused by unknown `kid`s, so a "
        "flood of bad tokens cannot hammer the identity provider.",
    )
    jwks_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest one JWKS fetch from `jwks_url` may take."
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(JWT_ALGORITHMS),
        description="Signature algorithms accepted: `RS256` and/or `ES256` (never `none` or "
        "HMAC).",
    )
    tenant_claim: str = Field(
        "tenant",
        description="Claim holding the tenant id; a dotted path (`org.id`) reaches into "
        "nested claims.",
    )
    role_claim: str = Field(
        "role",
        description="Claim holding the role (admin, operator, developer, client, viewer); "
        "a dotted path such as `realm_access.roles` may hold a list, and the "
        "highest-privilege known role in it wins.",
    )
    default_role: Role | None = Field(
        None, description="Role of a token without a role claim (none: such tokens are refused)."
    )
    leeway_s: float = Field(
        60.0, ge=0, le=600, description="Clock skew allowed on `exp`, `nbf` and `iat`, in seconds."
    )

    @field_validator("issuer", "tenant_claim", "role_claim")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("audience")
    @classmethod
    def _some_audience(cls, value: str | list[str]) -> str | list[str]:
        values = [value] if isinstance(value, str) else value
        if not values or not all(v.strip() for v in values):
            raise ValueError("must name at least one non-empty audience, e.g. audience: shipyard")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in JWT_ALGORITHMS]
        if bad or not value:
            raise ValueError(
                f"may only list {' and '.join(JWT_ALGORITHMS)}, got {value!r}; 'none' and "
                "HMAC (HS256) are refused because a shared secret would let any holder mint "
                "tokens"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> OIDCConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError(
                "set exactly one of 'jwks_file' (a local JWKS file) or 'jwks_url' (the "
                "identity provider's jwks_uri)"
            )
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"jwks_url '{self.jwks_url}' must start with https:// or http://")
        return self

    def audiences(self) -> list[str]:
        """`audience` as a list."""
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class AuthConfig(_Section):
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Static API keys accepted as `Authorization: Bearer <key>`. Reference "
        "them as `{$env: NAME}` or `{$file: path}`; never inline a secret.",
    )
    disabled: bool = Field(
        False,
        description="Serve without authentication. Only for a laptop: every route is open.",
    )
    oidc: OIDCConfig | None = Field(
        None,
        description="Also accept bearer JWTs from an OpenID Connect identity provider "
        "(see docs/oidc.md).",
    )

    @model_validator(mode="after")
    def _keys_or_disabled(self) -> AuthConfig:
        if not self.api_keys and not self.disabled and self.oidc is None:
            raise ValueError(
                "no API keys are configured; add 'auth.api_keys: [{$env: SHIPYARD_API_KEY}]', "
                "configure 'auth.oidc' (see docs/oidc.md) "
                "or set 'auth.disabled: true' for a local-only setup"
            )
        for key in self.api_keys:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must be at least 8 characters long")
        return self


class CircuitConfig(_Section):
    enabled: bool = Field(True, description="Stop sending to a deployment that keeps failing.")
    window_s: float = Field(
        30.0, gt=0, description="Rolling window the failure rate is measured over."
    )
    min_requests: int = Field(
        20, ge=1, description="Fewest requests in the window before the circuit may open."
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Failure share in the window that opens the circuit."
    )
    open_s: float = Field(
        15.0, gt=0, description="How long an open circuit rejects calls before probing."
    )
    half_open_probes: int = Field(
        3, ge=1, description="Successful probe calls in a row that close the circuit again."
    )
    consecutive_failures: int = Field(
        10, ge=1, description="Failures in a row that open the circuit at once, without "
        "waiting for the window's failure rate (a healthy past no longer delays the opening)."
    )


class RetryConfig(_Section):
    attempts: int = Field(
        3, ge=1, le=10, description="Attempts per model alias, the first one included."
    )
    backoff_base_s: float = Field(
        0.1, ge=0, description="First backoff; doubles per retry, with full jitter."
    )
    backoff_max_s: float = Field(5.0, ge=0, description="Longest backoff between attempts.")
    budget_ratio: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Retries allowed as a share of requests over the budget window "
        "(0.2 = at most 20% extra attempts), so retries cannot become a retry storm.",
    )
    budget_window_s: float = Field(10.0, gt=0, description="Window of the retry budget.")
    budget_min_per_s: float = Field(
        1.0, ge=0, description="Retries per second always allowed, so quiet services can retry."
    )


class AdmissionConfig(_Section):
    max_in_flight: int | None = Field(
        None, ge=1, description="Most requests processed at once (none: no limit)."
    )
    max_queue: int = Field(
        0, ge=0, description="Requests that may wait for a slot; beyond it, 503 at once."
    )
    max_queue_ms: float = Field(
        1000.0, ge=0, description="Longest a request waits in the queue before a 503."
    )
    adaptive: bool = Field(
        False,
        description="Find the upstream's capacity by itself: the in-flight limit grows by one "
        "per limit's worth of good answers and shrinks by 10% when latency passes "
        "`latency_tolerance` x the no-load latency or the upstream signals overload (AIMD). "
        "`max_in_flight` is the ceiling.",
    )
    min_in_flight: int = Field(1, ge=1, description="Floor of the adaptive limit.")
    latency_tolerance: float = Field(
        2.0, gt=1, description="Adaptive: latency above this multiple of the no-load latency "
        "counts as the upstream queueing."
    )

    @model_validator(mode="after")
    def _adaptive_needs_ceiling(self) -> AdmissionConfig:
        if self.adaptive and self.max_in_flight is None:
            raise ValueError("'adaptive: true' needs 'max_in_flight' as its ceiling")
        if self.max_in_flight is not None and self.min_in_flight > self.max_in_flight:
            raise ValueError(
                f"'min_in_flight' ({self.min_in_flight}) is above 'max_in_flight' "
                f"({self.max_in_flight})")
        return self


class RateLimitConfig(_Section):
    rpm: int | None = Field(None, ge=1, description="Requests per minute (a burst of this many, "
                            "then an even refill).")
    tpm: int | None = Field(
        None, ge=1, description="Tokens per minute: estimated before the call (prompt + "
        "max_tokens), reconciled with the real usage after it.")
    concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")


class RateLimitsConfig(_Section):
    key: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Default limits of every API key (a key's own rpm/tpm/max_concurrent win).")
    tenant: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Limits of each tenant, all its keys together.")
    default_max_tokens: int = Field(
        512, ge=1, description="Answer tokens assumed for the tpm estimate when a request "
        "sets no max_tokens.")


class PriceConfig(_Section):
    input_per_1m: float = Field(ge=0, description="USD per million prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens.")


class BudgetConfig(_Section):
    tenant: str | None = Field(None, description="The tenant this budget caps (or `key`).")
    key: str | None = Field(None, description="The API key id this budget caps (or `tenant`).")
    period: Literal["day", "month"] = Field("month", description="`day` or `month` (UTC).")
    limit_usd: float = Field(gt=0, description="Hard limit: requests are refused beyond it.")
    soft_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of the limit that raises an alert event (logged, "
        "counted in `shipyard_budget_alerts_total` and audited).")

    @model_validator(mode="after")
    def _one_scope(self) -> BudgetConfig:
        if (self.tenant is None) == (self.key is None):
            raise ValueError("a budget names exactly one of 'tenant' or 'key'")
        return self


class LimitsConfig(_Section):
    max_messages: int | None = Field(
        None, ge=1, description="Most chat messages in one request (400 beyond)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on the `max_tokens` a request may ask for (400 beyond; the cap is "
        "also sent upstream when the request does not set one).",
    )


class CacheConfig(_Section):
    enabled: bool = Field(False, description="Serve repeated identical requests from a cache.")
    ttl_s: float = Field(300.0, gt=0, description="How long an answer stays cached.")
    max_entries: int = Field(10_000, ge=1, description="Most answers kept (in-process backend).")
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Most bytes kept (in-process backend)."
    )
    nonzero_temperature: bool = Field(
        False,
        description="Also cache requests with temperature > 0 (or unset, which means 1); off by "
        "default because such answers are meant to vary.",
    )


class UIConfig(_Section):
    """The dashboard at /ui (needs `pip install 'shipyard[ui]'`)."""

    enabled: bool = Field(True, description="Serve the dashboard at /ui.")
    session_secret: SecretStr | None = Field(
        None,
        description="Secret that signs dashboard session cookies; reference it as "
        "`{$env: NAME}`. Set it when several machines serve the dashboard; without it a random "
        "secret is kept in `ui_session.key` beside the trace spool.",
    )
    session_ttl_s: float = Field(
        28_800.0, gt=0, le=30 * 86400,
        description="How long a dashboard login lasts, in seconds (default 8 hours).",
    )


class StateConfig(_Section):
    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="Where shared state (the response cache) lives: `memory` (one process) or "
        "`redis` (shared by replicas; install `shipyard[redis]`).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL when `backend: redis`."
    )
    key_prefix: str = Field("shipyard:", description="Prefix of every Redis key Shipyard writes.")


class DeploymentConfig(_Section):
    provider: str = Field(description="Name of an entry under `providers`.")
    model: str | None = Field(None, description="Model name sent upstream (default: the alias).")
    weight: float = Field(1.0, gt=0, description="Share of traffic, relative to the others.")


class ProviderConfig(_Section):
    kind: Literal["openai", "python", "sim"] = Field(
        description="`openai` (any OpenAI-compatible HTTP upstream), `python` (a "
        "`module:function`) or `sim` (the built-in simulated model, in process)."
    )
    base_url: str | None = Field(
        None,
        description="openai: base URL of the upstream API, ending in `/v1`, e.g. "
        "`http://127.0.0.1:9100/v1`.",
    )
    api_key: SecretStr | None = Field(
        None, description="openai: upstream API key, as `{$env: NAME}` or `{$file: path}`."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="openai: extra headers sent with every upstream call (values may be secret "
        "references, e.g. Azure's `api-key: {$env: AZURE_OPENAI_KEY}`).",
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description="openai: query parameters added to every upstream URL, e.g. Azure's "
        "`api-version: 2024-10-21`.",
    )
    function: str | None = Field(
        None, description="python: the callable as `package.module:function` (sync or async)."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Total time one upstream call may take, in seconds."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Time to open a connection to the upstream, in seconds."
    )
    first_byte_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Time to the answer's first byte (for non-streaming calls, the whole "
        "generation), per attempt.",
    )
    idle_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence between two streamed chunks, per attempt."
    )
    circuit: CircuitConfig = Field(
        default_factory=lambda: CircuitConfig(),
        description="Circuit breaker of each deployment on this provider.",
    )
    max_connections: int = Field(
        256, ge=1, description="openai: size of the keep-alive connection pool to the upstream."
    )
    stream_usage: bool = Field(
        True,
        description="openai: ask the upstream for usage in streams "
        "(`stream_options.include_usage`) so token counts are exact; the extra usage event is "
        "removed when the client did not ask for it. Turn off for upstreams that reject it.",
    )
    latency_ms: float = Field(
        0.0, ge=0, description="sim: fixed latency before the first token, in milliseconds."
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> ProviderConfig:
        if self.kind == "openai":
            if not self.base_url:
                raise ValueError(
                    "kind 'openai' needs 'base_url', e.g. base_url: http://127.0.0.1:9100/v1"
                )
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(
                    f"base_url '{self.base_url}' must start with http:// or https://"
                )
        if self.kind == "python" and not (self.function and _FUNCTION.match(self.function)):
            raise ValueError(
                "kind 'python' needs 'function' as 'package.module:function', "
                f"got {self.function!r}"
            )
        return self


class PIIConfig(_Section):
    mode: Literal["off", "detect", "redact", "pseudonymize", "block"] = Field(
        "off",
        description="`off`; `detect` (count PII on traces and metrics, change nothing); `redact` "
        "(the upstream sees typed placeholders such as `<EMAIL_1>`); `pseudonymize` (as redact, "
        "and placeholders in the answer are turned back into the caller's values); `block` "
        "(refuse requests that contain PII with a 400).")
    entities: list[str] | None = Field(
        None, description="Entity types to look for (default: every built-in recognizer).")
    apply_to: list[PIITarget] = Field(
        default_factory=lambda: list(_PII_TARGETS),
        description="`request`: clean what the upstream sees; `response`: replace PII the model "
        "produced itself with `<ENTITY>`; `traces`: store only cleaned payloads.")
    allow: list[str] = Field(
        default_factory=list, description="Values never treated as PII (case-insensitive).")
    deny: list[str] = Field(
        default_factory=list, description="Terms always treated as PII (entity `DENY_LIST`).")
    min_score: float = Field(
        0.5, ge=0, le=1, description="Findings scoring below this are ignored.")
    scope: Literal["request", "conversation"] = Field(
        "request",
        description="Placeholders are consistent within one request, or within a conversation "
        "named by the `x-shipyard-conversation` header (the table is kept encrypted in the state "
        "backend, per tenant).")
    conversation_ttl_s: float = Field(
        86_400.0, gt=0, description="How long a conversation's placeholder table is kept.")
    restore: bool = Field(
        True, description="In `pseudonymize` mode, give the caller back its own values.")
    stream_window_chars: int = Field(
        64, ge=16, le=4096,
        description="Streamed answers are checked for PII with this much text held back, so an "
        "entity split across chunks is seen whole.")


DEFAULT_ESCALATION_MESSAGE = (
    "Thank you for your patience. I have passed this conversation to a member of our team, "
    "who will follow up here as soon as possible. Your reference is {id}.")


class EscalationConfig(_Section):
    """When and how a conversation is handed to a person (see docs/escalation.md)."""

    enabled: bool = Field(
        False, description="Turn escalation to a human on for this alias or service.")
    user_request: bool = Field(
        True, description="Escalate when the user asks for a person (\"talk to a human\", "
        "\"I want a real person\", in English, French, German, Spanish, Italian, Dutch and "
        "Portuguese).")
    phrases: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions (case-insensitive) that count as asking for a "
        "person, e.g. `\\bcall me back\\b`.")
    min_confidence: float | None = Field(
        None, ge=0, le=1,
        description="Escalate when the answer's confidence is below this (none: never). The "
        "score is read from the `x-shipyard-confidence` header of the upstream's answer or "
        "the `confidence_field` of its JSON output.")
    confidence_field: str = Field(
        "confidence",
        description="Dotted path of the confidence score in a service's output or a chat "
        "answer's JSON body (e.g. `confidence` or `meta.score`).")
    max_failures: int | None = Field(
        3, ge=1, le=1000,
        description="Escalate after this many failed, blocked or errored requests in one "
        "conversation (`x-shipyard-conversation` header) within `failure_window_s` "
        "(none: never).")
    failure_window_s: float = Field(
        300.0, gt=0, description="Window in which `max_failures` are counted, in seconds.")
    clean_pii: bool = Field(
        True, description="Store the ticket's conversation with personal data replaced by "
        "typed placeholders such as `<EMAIL_1>`.")
    message: str = Field(
        DEFAULT_ESCALATION_MESSAGE,
        description="What the user is told when a person takes over; `{id}` is replaced by "
        "the ticket id.")
    sla_s: float = Field(
        14_400.0, gt=0, description="Time within which a reviewer should answer a ticket; "
        "past it the ticket is overdue and the webhook gets one `escalation.overdue` event.")
    deliver_answer: bool = Field(
        True, description="Return the reviewer's answer as the assistant message of the next "
        "request in the same conversation (the client can also poll "
        "`GET /v1/escalations/ID`).")
    webhook_url: str | None = Field(
        None, description="URL that gets a JSON POST when a ticket opens or becomes overdue.")
    webhook_secret: SecretStr | None = Field(
        None, description="Signs webhook bodies with HMAC-SHA256 (header "
        "`x-shipyard-signature`); reference it as `{$env: NAME}`.")
    webhook_retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed webhook delivery, with exponential "
        "backoff.")
    webhook_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest one webhook delivery attempt may take.")

    @field_validator("phrases")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for phrase in value:
            try:
                re.compile(phrase)
            except re.error as exc:
                raise ValueError(
                    f"phrase {phrase!r} is not a valid regular expression ({exc}); escape "
                    "special characters such as ( ) [ ] with a backslash") from None
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty; it is what the user reads")
        try:
            value.format(id="esc_x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"may only use the placeholder {{id}} (got a problem with {exc}); write "
                "literal braces as {{ and }}") from None
        return value

    @field_validator("confidence_field")
    @classmethod
    def _not_blank_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _webhook(self) -> EscalationConfig:
        if self.webhook_url is not None and not self.webhook_url.startswith(
                ("http://", "https://")):
            raise ValueError(f"webhook_url '{self.webhook_url}' must start with https:// or "
                             "http://")
        if self.webhook_secret is not None and self.webhook_url is None:
            raise ValueError("webhook_secret is set but webhook_url is not; set webhook_url "
                             "(the receiver) or remove webhook_secret")
        return self


GUARD_NAMES = (
    "banned", "grounding", "injection", "invisible", "json_schema", "length", "pii", "refusal",
    "secrets", "system_prompt_leak", "topics", "toxicity",
)


class GuardSpec(_Section):
    """One guard in an input or output list: a built-in name or `module:function_or_Class`.

    Options of the guard sit beside `guard` (`{guard: topics, deny: [weapons]}`) or under
    `options`; a bare string is a guard with its defaults.
    """

    guard: str = Field(description="A built-in guard (`injection`, `pii`, `topics`, `length`, "
                       "`invisible`, `secrets`, `json_schema`, `system_prompt_leak`, "
                       "`grounding`, `refusal`, `banned`, `toxicity`) or your own as "
                       "`package.module:function` or `package.module:GuardClass`.")
    name: str | None = Field(None, description="Name on traces and metrics (default: `guard`).")
    timeout_ms: float | None = Field(
        None, gt=0, description="Longest this guard may take (default: the guard's own, "
        "e.g. 2000 for `injection` with `embeddings`, else the list's `timeout_ms`).")
    on_error: Literal["open", "closed"] | None = Field(
        None, description="When the guard raises or times out: `open` allows the request, "
        "`closed` blocks it (default: the list's `on_error`).")
    on_trip: Literal["default", "block", "fix", "escalate", "flag"] = Field(
        "default", description="What a tripped verdict does: `default` (what the guard said), "
        "`block`, `fix`, `escalate`, or `flag` (record only: shadow mode).")
    retries: int = Field(
        2, ge=0, le=10, description="`json_schema`: times the model is re-asked with the "
        "validation error before the request fails.")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Options of the guard itself.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"guard": value}
        if isinstance(value, dict):
            own = set(cls.model_fields)
            extra = {k: v for k, v in value.items() if k not in own}
            if extra:
                kept = {k: v for k, v in value.items() if k in own}
                kept["options"] = {**dict(value.get("options") or {}), **extra}
                return kept
        return value

    @field_validator("guard")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in GUARD_NAMES and not _FUNCTION.match(value):
            raise ValueError(
                f"guard {value!r} is neither a built-in guard ({', '.join(GUARD_NAMES)}) nor "
                "a reference like 'package.module:function'")
        return value


class GuardsConfig(_Section):
    """Input and output guards of one model alias or service."""

    input: list[GuardSpec] = Field(
        default_factory=list, description="Guards run on each request before the model sees "
        "it, in order.")
    output: list[GuardSpec] = Field(
        default_factory=list, description="Guards run on each answer before the caller sees "
        "it, in order (streams: on a sentence window).")
    timeout_ms: float = Field(
        200.0, gt=0, description="Default longest time one guard may take.")
    on_error: Literal["open", "closed"] = Field(
        "open", description="Default failure policy: `open` allows when a guard fails or "
        "times out, `closed` blocks.")
    blocked_message: str = Field(
        "Sorry, I can't help with that request. If you think this is a mistake, please "
        "rephrase it or contact support.",
        min_length=1, description="The polite answer a caller gets when a guard blocks.")
    escalated_message: str = Field(
        "Thanks for your patience. I've passed this conversation to a person on our team, who "
        "will follow up with you.",
        min_length=1, description="The answer a caller gets when a guard escalates.")
    stream_window: int = Field(
        2, ge=1, le=20, description="Streaming: output guards judge the last N sentences "
        "each time a sentence completes.")

    @model_validator(mode="after")
    def _unique_names(self) -> GuardsConfig:
        for stage, specs in (("input", self.input), ("output", self.output)):
            seen: set[str] = set()
            for i, spec in enumerate(specs):
                name = spec.name or spec.guard
                if name in seen:
                    raise ValueError(
                        f"guards.{stage}[{i}] is a second guard named {name!r}; give one of "
                        "them a distinct 'name'")
                seen.add(name)
        return self


class ModelConfig(_Section):
    provider: str | None = Field(
        None, description="Name of an entry under `providers` (or list `deployments`)."
    )
    model: str | None = Field(
        None, description="Model name sent upstream; defaults to the alias itself."
    )
    deployments: list[DeploymentConfig] = Field(
        default_factory=list,
        description="Several deployments of this model, balanced by least in-flight requests "
        "and weight; a failing one is ejected by its circuit breaker.",
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Aliases tried in order when this one fails in a retryable way, its "
        "circuits are open or the deadline is near. The answer names the alias that served it.",
    )
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig())
    deadline_s: float = Field(
        600.0,
        gt=0,
        description="Longest a request may take, retries and fallbacks included; a client's "
        "own shorter timeout (the OpenAI SDK's `x-stainless-timeout`) wins.",
    )
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    cache: CacheConfig = Field(default_factory=lambda: CacheConfig())
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(),
        description="Limits of this model alias, all callers together.")
    type: Literal["chat", "embedding"] = Field(
        "chat", description="`chat` (chat and legacy completions) or `embedding`."
    )
    capture: CaptureMode = Field(
        "metadata",
        description="What traces keep of payloads: `none` (no payload facts), `metadata` "
        "(sizes, counts, finish reason) or `full` (request and response bodies).",
    )
    owned_by: str = Field("shipyard", description="`owned_by` shown in `GET /v1/models`.")
    pii: PIIConfig = Field(
        default_factory=lambda: PIIConfig(), description="Personal data protection.")
    escalation: EscalationConfig = Field(
        default_factory=lambda: EscalationConfig(), description="Escalation to a human.")
    guards: GuardsConfig = Field(
        default_factory=lambda: GuardsConfig(),
        description="Input and output guards (see docs/guards.md).")

    @model_validator(mode="after")
    def _one_target(self) -> ModelConfig:
        if self.provider is None and not self.deployments:
            raise ValueError("needs 'provider' (one deployment) or a list of 'deployments'")
        if self.provider is not None and self.deployments:
            raise ValueError("set either 'provider' or 'deployments', not both")
        return self

    def targets(self, alias: str) -> list[DeploymentConfig]:
        """The deployments of this alias (one when `provider` is set)."""
        if self.deployments:
            return list(self.deployments)
        return [DeploymentConfig(provider=self.provider or "", model=self.model or alias)]


class ServiceConfig(_Section):
    kind: Literal["python"] = Field(
        "python", description="`python`: serve a Python callable at /v1/services/NAME/invoke."
    )
    function: str = Field(description="The callable as `package.module:function`.")
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema the request body must match (or use `input_model`)."
    )
    input_model: str | None = Field(
        None, description="A pydantic model as `package.module:Model` that validates the input."
    )
    capture: CaptureMode = Field("metadata", description="Payload capture policy for traces.")
    timeout_s: float = Field(60.0, gt=0, description="Longest one call may run, in seconds.")
    description: str = Field("", description="Shown in the service listing.")
    admission: AdmissionConfig = Field(default_factory=lambda: AdmissionConfig())
    pii: PIIConfig = Field(
        default_factory=lambda: PIIConfig(), description="Personal data protection.")
    escalation: EscalationConfig = Field(
        default_factory=lambda: EscalationConfig(), description="Escalation to a human.")
    guards: GuardsConfig = Field(
        default_factory=lambda: GuardsConfig(),
        description="Input and output guards (see docs/guards.md).")

    @field_validator("function", "input_model")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and not _FUNCTION.match(value):
            raise ValueError(f"must look like 'package.module:name', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_schema(self) -> ServiceConfig:
        if self.input_schema is not None and self.input_model is not None:
            raise ValueError("set either 'input_schema' or 'input_model', not both")
        return self


def _names_ok(kind: str, names: Iterator[str]) -> None:
    for name in names:
        if not _NAME.match(name):
            raise ValueError(
                f"{kind} name {name!r} may use letters, digits and . _ : - (at most 128 chars)"
            )


class DriftCheckConfig(_Section):
    """One scheduled drift check over gateway traces (see docs/drift.md)."""

    service: str | None = Field(
        None, description="Only traces of this service or model alias (default: all traffic).")
    tenant: str | None = Field(None, description="Only traces of this tenant (default: all).")
    columns: list[str] = Field(
        min_length=1,
        default_factory=lambda: ["prompt_length", "language", "output_length", "refusal",
                                 "finish_reason", "status", "latency_ms", "prompt_tokens",
                                 "completion_tokens"],
        description="Feature columns to test: built-in trace features and `input.FIELD` for "
        "a python service's declared inputs (see docs/drift.md).")
    current_window_s: float = Field(
        86_400.0, gt=0, description="The current window: the last this many seconds.")
    reference_window_s: float = Field(
        7 * 86_400.0, gt=0,
        description="Length of the rolling reference window, which ends where the current "
        "window starts. Ignored when `reference_start` is set.")
    reference_refresh_s: float = Field(
        86_400.0, ge=0,
        description="A rolling reference profile is rebuilt only when older than this (0: on "
        "every run); in between, runs reuse the stored profile instead of rereading traces.")
    reference_start: datetime | None = Field(
        None, description="Fixed reference window start (ISO time); profiled once and kept.")
    reference_end: datetime | None = Field(
        None, description="Fixed reference window end (default: reference_start plus "
        "reference_window_s).")
    method: dict[str, str] = Field(
        default_factory=dict,
        description="Test per column instead of the Evidently default, e.g. {latency_ms: psi} "
        "(ks, wasserstein, chisquare, z, jensenshannon, psi).")
    threshold: dict[str, float] = Field(
        default_factory=dict, description="Threshold per column instead of the test's default.")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when at least this share of columns drift.")
    min_rows: int = Field(
        30, ge=1, description="Skip a run (and record nothing) when a window has fewer traces.")
    max_rows: int = Field(
        1_000_000, ge=100, description="Most traces read per window (the newest).")

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: dict[str, str]) -> dict[str, str]:
        known = ("ks", "wasserstein", "chisquare", "z", "jensenshannon", "psi")
        for column, method in value.items():
            if method not in known:
                raise ValueError(f"method for column '{column}' is '{method}'; use one of "
                                 f"{', '.join(known)}")
        return value


class DriftConfig(_Section):
    enabled: bool = Field(True, description="Run the checks below on a schedule while serving.")
    interval_s: float = Field(
        3600.0, ge=10, description="Seconds between two runs of every drift check.")
    checks: dict[str, DriftCheckConfig] = Field(
        default_factory=dict, description="Scheduled drift checks, by name.")


class Config(_Section):
    """A validated `shipyard.yaml`; build it with `load_config` or `parse_config`.

    >>> Config().server.port
    8000
    """

    version: Literal[1] = Field(1, description="Version of the configuration format.")
    python_path: list[str] = Field(
        default_factory=list,
        description="Folders added to the import path before `module:function` references "
        "are imported; relative paths are relative to the config file.",
    )
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    store: StoreConfig = Field(default_factory=lambda: StoreConfig())
    traces: TracesConfig = Field(default_factory=lambda: TracesConfig())
    state: StateConfig = Field(default_factory=lambda: StateConfig())
    ui: UIConfig = Field(default_factory=lambda: UIConfig())
    rate_limits: RateLimitsConfig = Field(default_factory=lambda: RateLimitsConfig())
    pricing: dict[str, PriceConfig] = Field(
        default_factory=dict,
        description="Prices by model alias or upstream model name, adding to or overriding the "
        "shipped table (`shipyard.security.pricing`).")
    budgets: list[BudgetConfig] = Field(
        default_factory=list, description="Spend caps per tenant or key and period.")
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig(disabled=True))
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="Upstreams by name."
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict, description="Model aliases clients call, by alias."
    )
    services: dict[str, ServiceConfig] = Field(
        default_factory=dict, description="Hosted Python services, by name."
    )
    alerts: AlertsConfig = Field(default_factory=lambda: AlertsConfig(),
                                 description="Alert rules and notification channels "
                                 "(see docs/alerts.md).")
    slos: list[SLOConfig] = Field(default_factory=list, description="Service level objectives "
                                  "with error budgets and burn-rate alerts (see docs/alerts.md).")
    drift: DriftConfig = Field(default_factory=lambda: DriftConfig())

    @model_validator(mode="after")
    def _references(self) -> Config:
        check_alert_references(self.alerts, self.slos)
        _names_ok("provider", iter(self.providers))
        _names_ok("model", iter(self.models))
        _names_ok("service", iter(self.services))
        known = ", ".join(sorted(self.providers)) or "none are defined"
        for alias, model in self.models.items():
            for i, target in enumerate(model.targets(alias)):
                if target.provider not in self.providers:
                    where = (f"models.{alias}.deployments[{i}].provider" if model.deployments
                             else f"models.{alias}.provider")
                    raise ValueError(
                        f"{where} is '{target.provider}', which is not a provider "
                        f"(known: {known}); add it under 'providers' or fix the name"
                    )
            for fallback in model.fallbacks:
                if fallback == alias or fallback not in self.models:
                    raise ValueError(
                        f"models.{alias}.fallbacks names '{fallback}', which is not another "
                        f"model alias (known: {', '.join(sorted(self.models))})"
                    )
                if self.models[fallback].type != model.type:
                    raise ValueError(
                        f"models.{alias}.fallbacks names '{fallback}', a "
                        f"{self.models[fallback].type} model; fallbacks must be {model.type} models"
                    )
        return self


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    path: str
    type: str
    default: str
    help: str


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is not None:
        text = str(annotation)
    else:
        text = getattr(annotation, "__name__", None) or str(annotation)
    for prefix in ("typing.", "pydantic.types.", "shipyard.config.schema.",
                   "shipyard.config.alerting."):
        text = text.replace(prefix, "")
    return text


def iter_settings(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[Setting]:
    """Yield every setting of `shipyard.yaml`, depth first, as (path, type, default, help)."""
    nested: dict[str, tuple[str, type[BaseModel]]] = {
        "providers": ("providers.NAME", ProviderConfig),
        "models": ("models.ALIAS", ModelConfig),
        "services": ("services.NAME", ServiceConfig),
    }
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        if model is Config and name in nested:
            sub_prefix, sub_model = nested[name]
            yield from iter_settings(sub_model, sub_prefix + ".")
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from iter_settings(annotation, path + ".")
            continue
        args = getattr(annotation, "__args__", ())
        optional = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(args) == 2 and type(None) in args and optional:  # an optional section
            yield Setting(path, f"{optional[0].__name__} | None", "None", field.description or "")
            yield from iter_settings(optional[0], path + ".")
            continue
        item = args[-1] if get_origin(annotation) is dict and args else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            yield Setting(path, "dict", "{}", field.description or "")
            yield from iter_settings(item, path + ".NAME.")
            continue
        if (get_origin(annotation) is list and args and isinstance(args[0], type)
                and issubclass(args[0], BaseModel)):
            yield Setting(path, "list", "[]", field.description or "")
            yield from iter_settings(args[0], path + "[].")
            continue
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        elif field.is_required():
            default = "(required)"
        else:
            default = repr(field.default)
        yield Setting(path, _type_name(annotation), default, field.description or "")

