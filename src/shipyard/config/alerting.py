"""The `alerts:` and `slos:` sections of `shipyard.yaml`: rules, SLOs and notification channels.

Durations are written as `30s`, `5m`, `6h`, `30d` (or a number of seconds) and stored in
seconds. `alerts.time_scale` multiplies every alert and SLO duration, so a test (or a demo) can
run the SRE workbook's hour-long windows in seconds.

>>> AlertsConfig.model_validate({"rules": [{"name": "errors", "metric": "error_rate",
...     "threshold": 0.05, "window": "5m"}]}).rules[0].window
300.0
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "METRICS",
    "AlertChannelConfig",
    "AlertRuleConfig",
    "AlertsConfig",
    "BurnRateWindow",
    "SLOConfig",
    "check_alert_references",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# What the loader puts in place of a secret it was told not to resolve (commands that only
# read the store); such a URL is checked when the secret is there.
UNRESOLVED_SECRET = "unresolved-secret-placeholder"

# Metric name -> what it measures (docs/alerts.md lists the same table).
METRICS: dict[str, str] = {
    "error_rate": "share of requests answered 5xx (0-1)",
    "client_error_rate": "share of requests answered 4xx (0-1)",
    "request_rate": "requests per second",
    "requests": "requests in the window",
    "latency_p50_ms": "median total latency, ms",
    "latency_p95_ms": "95th percentile total latency, ms",
    "latency_p99_ms": "99th percentile total latency, ms",
    "ttft_p95_ms": "95th percentile time to first token, ms (streams)",
    "cost_per_hour": "spend in USD per hour",
    "tokens": "tokens (prompt + completion) in the window",
    "tokens_per_minute": "tokens per minute",
    "cache_hit_rate": "share of cache lookups that hit (0-1)",
    "shed_requests": "requests refused for capacity (503 overloaded) in the window",
}
Metric = Literal[
    "error_rate", "client_error_rate", "request_rate", "requests", "latency_p50_ms",
    "latency_p95_ms", "latency_p99_ms", "ttft_p95_ms", "cost_per_hour", "tokens",
    "tokens_per_minute", "cache_hit_rate", "shed_requests",
]
Severity = Literal["page", "ticket", "info"]


def parse_duration(value: Any) -> float:
    """`"5m"` -> 300.0; a bare number is seconds.

    >>> parse_duration("1h"), parse_duration(90), parse_duration("250ms")
    (3600.0, 90.0, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError(f"is {value!r}; write a duration such as 30s, 5m, 1h or 30d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"'{value}' is not a duration; write one such as 30s, 5m, 1h or 30d")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError(f"is {value!r}; a duration cannot be negative")
    return seconds


def _durations(*names: str) -> Any:
    """A before-validator that reads `names` as durations (`5m`) into seconds."""
    def check(value: Any) -> Any:
        return None if value is None else parse_duration(value)
    return field_validator(*names, mode="before")(staticmethod(check))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _name_ok(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"'{value}' may use letters, digits and . _ : - (at most 64 chars)")
    return value


class AlertChannelConfig(_Section):
    """Where notifications go: a JSON webhook, a Slack-compatible webhook or email (SMTP)."""

    name: str = Field(description="Channel name that rules and SLOs refer to.")
    kind: Literal["webhook", "slack", "email"] = Field(
        description="`webhook` (JSON POST, optionally HMAC-signed), `slack` (Slack-compatible "
        "incoming webhook) or `email` (SMTP).")
    url: SecretStr | None = Field(
        None, description="webhook/slack: the URL to POST to; a Slack URL is a secret, so "
        "reference it as `{$env: NAME}`.")
    secret: SecretStr | None = Field(
        None, description="webhook: signing secret; deliveries carry Standard Webhooks' "
        "`webhook-signature` (and, deprecated until 0.3.0, `X-Shipyard-Signature: "
        "sha256=<hex>` of the body).")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="webhook: extra headers (values may be secrets).")
    smtp_host: str | None = Field(None, description="email: SMTP server host.")
    smtp_port: int = Field(587, ge=1, le=65535, description="email: SMTP server port.")
    starttls: bool = Field(True, description="email: upgrade the connection with STARTTLS.")
    ssl: bool = Field(False, description="email: connect with implicit TLS (port 465).")
    username: str | None = Field(None, description="email: SMTP login user.")
    password: SecretStr | None = Field(None, description="email: SMTP password (`{$env: NAME}`).")
    sender: str | None = Field(None, description="email: the From address.")
    to: list[str] = Field(default_factory=list, description="email: recipient addresses.")
    ca_file: str | None = Field(
        None, description="email: PEM CA bundle that signs the SMTP server's certificate "
        "(default: the system's trusted CAs).")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Longest one delivery may take.")
    attempts: int = Field(5, ge=1, le=20, description="Delivery attempts before giving up.")
    backoff_s: float = Field(
        1.0, ge=0, le=300, description="First retry delay; doubles per attempt (with jitter).")

    _name = field_validator("name")(_name_ok)

    @model_validator(mode="after")
    def _kind_fields(self) -> AlertChannelConfig:
        if self.kind in ("webhook", "slack"):
            url = self.url.get_secret_value() if self.url is not None else ""
            if url != UNRESOLVED_SECRET and not url.startswith(("http://", "https://")):
                raise ValueError(f"channel '{self.name}' of kind '{self.kind}' needs 'url' "
                                 "starting with http:// or https:// (e.g. url: {$env: "
                                 "SLACK_WEBHOOK_URL})")
        if self.kind == "email":
            if not self.smtp_host or not self.sender or not self.to:
                raise ValueError(f"channel '{self.name}' of kind 'email' needs 'smtp_host', "
                                 "'sender' and at least one address in 'to'")
            if self.ssl and self.starttls:
                raise ValueError(f"channel '{self.name}': set 'ssl: true' (implicit TLS, port "
                                 "465) or 'starttls: true' (port 587), not both")
            if self.password is not None and not self.username:
                raise ValueError(f"channel '{self.name}' sets 'password' without 'username'")
        return self


class _Target(_Section):
    name: str = Field(description="Name; unique among rules and SLOs.")
    service: str | None = Field(None, description="Only requests to this service or model "
                                "alias (the trace's `service`).")
    model: str | None = Field(None, description="Only requests for this model alias.")
    tenant: str | None = Field(None, description="Only this tenant's requests.")
    runbook: str = Field("", description="What to do when it fires (a hint or a URL); sent "
                         "with every notification.")
    labels: dict[str, str] = Field(default_factory=dict,
                                   description="Free-form labels sent with notifications.")
    channels: list[str] | None = Field(
        None, description="Channel names to notify (none: every channel).")


class AlertRuleConfig(_Target):
    """A threshold on a metric (or a SQL query) over the traces of a time window."""

    metric: Metric | None = Field(
        None, description="What to measure: " + ", ".join(f"`{m}`" for m in METRICS) + ".")
    query: str | None = Field(
        None, description="Instead of `metric`: a read-only SQL SELECT over the store "
        "returning one number; `:since` and `:until` are bound to the window.")
    window: float = Field(300.0, gt=0, description="Window the metric is measured over "
                             "(e.g. `5m`).")
    comparison: Literal[">", ">=", "<", "<=", "==", "!="] = Field(
        ">", description="How the value is compared with `threshold`.")
    threshold: float = Field(description="The value the metric is compared with.")
    for_duration: float = Field(
        0.0, ge=0, description="How long the condition must hold before the alert fires "
        "(pending until then).")
    resolve_after: float | None = Field(
        None, ge=0, description="How long the condition must stay false before the alert "
        "resolves (default `alerts.resolve_after`).")
    min_requests: int = Field(1, ge=0, description="Fewest requests in the window for a "
                              "ratio or latency metric to count (fewer: no data, no alert).")
    severity: Severity = Field("ticket", description="`page`, `ticket` or `info`.")
    summary: str = Field("", description="One line shown in notifications.")

    _name = field_validator("name")(_name_ok)
    _seconds = _durations("window", "for_duration", "resolve_after")

    @model_validator(mode="after")
    def _metric_or_query(self) -> AlertRuleConfig:
        if (self.metric is None) == (self.query is None):
            raise ValueError(f"rule '{self.name}' needs exactly one of 'metric' (e.g. "
                             "metric: error_rate) or 'query' (a SQL SELECT)")
        if self.query is not None and not self.query.lstrip().lower().startswith(
                ("select", "with")):
            raise ValueError(f"rule '{self.name}': 'query' must be a SELECT returning one "
                             "number, e.g. SELECT count(*) FROM traces WHERE started_at >= "
                             ":since")
        return self


class BurnRateWindow(_Section):
    """One multi-window burn-rate condition: both windows must burn faster than `burn_rate`."""

    severity: Severity = Field(description="`page` or `ticket` (or `info`).")
    long_window: float = Field(gt=0, description="The long window (e.g. `1h`).")
    short_window: float = Field(gt=0, description="The short window (e.g. `5m`), usually "
                                   "1/12 of the long one.")
    burn_rate: float = Field(gt=0, description="Burn rate both windows must exceed (14.4 = "
                             "2% of a 30-day budget in one hour).")

    _seconds = _durations("long_window", "short_window")

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnRateWindow:
        if self.short_window >= self.long_window:
            raise ValueError(f"short_window ({self.short_window:g}s) must be shorter than "
                             f"long_window ({self.long_window:g}s)")
        return self


# The SRE workbook's recommendation for a 30-day 99.9% SLO (chapter "Alerting on SLOs").
DEFAULT_BURN_RATES = (
    BurnRateWindow(severity="page", long_window=3600, short_window=300, burn_rate=14.4),
    BurnRateWindow(severity="page", long_window=6 * 3600, short_window=1800, burn_rate=6),
    BurnRateWindow(severity="ticket", long_window=86400, short_window=7200, burn_rate=3),
    BurnRateWindow(severity="ticket", long_window=3 * 86400, short_window=6 * 3600,
                   burn_rate=1),
)


class SLOConfig(_Target):
    """A service level objective with an error budget and burn-rate alerts."""

    sli: Literal["availability", "latency"] = Field(
        description="`availability` (share of requests not answered 5xx) or `latency` "
        "(share of requests faster than `latency_threshold_ms`).")
    objective: float = Field(description="Target share of good requests, e.g. 0.999.")
    period: float = Field(30 * 86400.0, gt=0, description="Budget period (e.g. `30d`).")
    latency_threshold_ms: float | None = Field(
        None, gt=0, description="latency: a request slower than this is bad.")
    burn_rates: list[BurnRateWindow] = Field(
        default_factory=lambda: list(DEFAULT_BURN_RATES),
        description="Multi-window burn-rate alerts (default: the SRE workbook's 1h/5m at "
        "14.4x and 6h/30m at 6x page, 1d/2h at 3x and 3d/6h at 1x ticket).")
    min_requests: int = Field(1, ge=0, description="Fewest requests in a short window for "
                              "its burn rate to count.")
    resolve_after: float | None = Field(
        None, ge=0, description="How long burn rates must stay low before the alert "
        "resolves (default `alerts.resolve_after`).")

    _name = field_validator("name")(_name_ok)
    _seconds = _durations("period", "resolve_after")

    @field_validator("objective")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0 < value < 1:
            hint = f" (write {value / 100:g} for {value:g}%)" if 1 < value < 100 else ""
            raise ValueError(f"must be a ratio between 0 and 1, e.g. 0.999{hint}")
        return value

    @model_validator(mode="after")
    def _latency_threshold(self) -> SLOConfig:
        if self.sli == "latency" and self.latency_threshold_ms is None:
            raise ValueError(f"SLO '{self.name}' has sli 'latency' and needs "
                             "'latency_threshold_ms', e.g. latency_threshold_ms: 2000")
        return self


class AlertsConfig(_Section):
    enabled: bool = Field(True, description="Evaluate rules and SLOs in the gateway (one "
                          "evaluator per store, elected with a lease row).")
    interval_s: float = Field(30.0, gt=0, le=3600, description="How often rules are evaluated.")
    time_scale: float = Field(
        1.0, gt=0, le=1, description="Multiplies every alert and SLO duration (windows, "
        "for_duration, resolve_after, periods); e.g. 0.001 runs a 1h window in 3.6 s for tests.")
    resolve_after: float = Field(
        300.0, ge=0, description="Default time a condition must stay false before a firing "
        "alert resolves, so a flapping signal does not spam (hysteresis).")
    _seconds = _durations("resolve_after")
    lease_s: float = Field(
        60.0, gt=0, description="How long the evaluator's lease lasts; another worker or "
        "replica takes over when it is not renewed in time.")
    channels: list[AlertChannelConfig] = Field(default_factory=list,
                                               description="Notification channels.")
    rules: list[AlertRuleConfig] = Field(default_factory=list, description="Alert rules.")

    @model_validator(mode="after")
    def _lease_outlives_interval(self) -> AlertsConfig:
        if self.lease_s <= self.interval_s:
            raise ValueError(f"lease_s ({self.lease_s:g}) must be longer than interval_s "
                             f"({self.interval_s:g}) so the evaluator renews its lease before "
                             f"it expires; e.g. lease_s: {2 * self.interval_s:g}")
        return self


def check_alert_references(alerts: AlertsConfig, slos: list[SLOConfig]) -> None:
    """Names are unique and every `channels:` entry names a channel (raises ValueError)."""
    channels = [c.name for c in alerts.channels]
    if len(set(channels)) != len(channels):
        raise ValueError(f"alerts.channels has duplicate names ({', '.join(channels)}); "
                         "give each channel its own name")
    seen: set[str] = set()
    for where, items in (("alerts.rules", alerts.rules), ("slos", slos)):
        for i, item in enumerate(items):
            if item.name in seen:
                raise ValueError(f"{where}[{i}].name is '{item.name}', which another rule or "
                                 "SLO already uses; names must be unique")
            seen.add(item.name)
            for name in item.channels or ():
                if name not in channels:
                    known = ", ".join(channels) or "none are defined"
                    raise ValueError(f"{where}[{i}].channels names '{name}', which is not a "
                                     f"channel (known: {known}); add it under alerts.channels")
