"""The `work:` and `webhooks:` sections: the durable work queue (leases, retention, idempotency
keys) and outbound webhooks (retries, signatures, endpoints that subscribe to events).

>>> WebhooksConfig.model_validate({"endpoints": {"crm": {"url": "https://crm.example/hook",
...     "events": ["job.*"]}}}).endpoints["crm"].events
['job.*']
"""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator

from shipyard.config.alerting import UNRESOLVED_SECRET
from shipyard.config.base import NAME_PATTERN, Section

__all__ = ["WebhookEndpointConfig", "WebhooksConfig", "WorkConfig"]

# Event types are dot-separated words (Standard Webhooks); a subscription may end in `*`.
_EVENT_PATTERN = re.compile(r"^([A-Za-z0-9_]+\.)*([A-Za-z0-9_]+|\*)$|^\*$")


class WorkConfig(Section):
    """The durable work queue in the store: webhook deliveries today, jobs and batches next."""

    lease_s: float = Field(
        30.0, ge=1, le=3600, description="How long a worker holds an item it claimed before "
        "another worker may take it over; the holder renews it every third of this while it "
        "works, so only a worker that died (or froze) loses its items.")
    poll_interval_s: float = Field(
        0.5, gt=0, le=60, description="How often an idle worker looks for due items that other "
        "processes queued (items queued in the same process start at once).")
    retention_days: float = Field(
        14.0, ge=0, description="Finished items (succeeded, dead-lettered, cancelled) and their "
        "attempt logs are deleted this many days after they finished; 0 keeps them forever.")
    idempotency_ttl_s: float = Field(
        86_400.0, ge=60, le=90 * 86_400, description="Retention window of `Idempotency-Key` "
        "records: a repeated key within it returns the first result; expired keys are purged.")


class WebhookEndpointConfig(Section):
    """A receiver that subscribes to event types (job completion, rollouts, ...)."""

    url: SecretStr = Field(description="The URL to POST to (`https://...`); it may hold a "
                           "token, so it is treated as a secret: `{$env: NAME}`.")
    secret: SecretStr | None = Field(
        None, description="Signing secret, `whsec_` + base64 of 24-64 random bytes (make one "
        "with `shipyard webhooks secret`); deliveries carry `webhook-signature: v1,...`.")
    events: list[str] = Field(
        default_factory=lambda: ["*"], description="Event types delivered to this endpoint: "
        "exact (`job.completed`), a prefix pattern (`job.*`) or `*` for all.")
    tenant: str | None = Field(
        None, description="Only events of this tenant (default: every tenant's events).")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra request headers (values may be secrets).")
    timeout_s: float | None = Field(
        None, gt=0, le=120, description="Longest one attempt may take (default: "
        "`webhooks.timeout_s`).")
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="Attempts before the delivery is dead-lettered "
        "(default: `webhooks.max_attempts`).")

    @field_validator("events")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not _EVENT_PATTERN.match(pattern):
                raise ValueError(f"event pattern '{pattern}' must be dot-separated words, "
                                 "optionally ending in .* (e.g. job.completed or job.*)")
        return value

    @model_validator(mode="after")
    def _url(self) -> WebhookEndpointConfig:
        url = self.url.get_secret_value()
        if url != UNRESOLVED_SECRET and not url.startswith(
                ("http://", "https://")):
            raise ValueError("'url' must start with https:// or http://")
        return self


class WebhooksConfig(Section):
    """Outbound webhooks: one durable, signed delivery path for every event."""

    deliver: bool = Field(
        True, description="Deliver queued webhooks from this process. Off: this process only "
        "queues them (another gateway, or `shipyard webhooks flush`, delivers).")
    concurrency: int = Field(8, ge=1, le=256,
                             description="Deliveries in flight at once per process.")
    timeout_s: float = Field(15.0, gt=0, le=120,
                             description="Default for how long one delivery attempt may take.")
    max_attempts: int = Field(
        8, ge=1, le=100, description="Default attempts before a delivery is dead-lettered "
        "(alert channels use their `attempts`, escalations `webhook_retries` + 1).")
    backoff_base_s: float = Field(
        2.0, ge=0, le=3600, description="Retry delay cap after the first failure; it doubles "
        "per attempt and the actual delay is drawn uniformly below it (full jitter).")
    backoff_max_s: float = Field(
        3600.0, ge=0, le=86_400, description="Largest retry delay, however many attempts "
        "failed.")
    legacy_signature: bool = Field(
        True, description="Also send the deprecated `x-shipyard-signature` header (and "
        "`x-shipyard-timestamp` on escalation webhooks) beside the Standard Webhooks headers; "
        "removed in Shipyard 0.3.0.")
    endpoints: dict[str, WebhookEndpointConfig] = Field(
        default_factory=dict, description="Receivers by name, with the event types each "
        "subscribes to.")

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: dict[str, WebhookEndpointConfig]) -> dict[str, WebhookEndpointConfig]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"endpoint name {name!r} may use letters, digits and . _ : - "
                                 "(at most 128 chars)")
        return value
