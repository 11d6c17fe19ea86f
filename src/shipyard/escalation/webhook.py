"""Escalation webhooks: the event body, and the deprecated legacy signature helpers.

Deliveries go through the durable webhook outbox (`shipyard.webhooks`, endpoint
`models.ALIAS.escalation` or `services.NAME.escalation`): signed per Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with exponential backoff
across restarts, dead-lettered after `webhook_retries` + 1 attempts. The body is

    {"type": "escalation.opened" | "escalation.overdue", "timestamp": ..., "event": <the same>,
     "sent_at": ..., "escalation": {...}}

Deprecated, removed in Shipyard 0.3.0: with a secret, deliveries also carry the earlier
headers `x-shipyard-timestamp` and `x-shipyard-signature: sha256=<hex HMAC-SHA256 of
"<timestamp>." + body>`; `sign` and `verify` below check them. Receivers should move to
`shipyard.webhooks.verify`.

>>> sign(b"secret", b'{"event":"escalation.opened"}', 1764270000)[:7]
'sha256='
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "event_data", "sign", "verify"]

SIGNATURE_HEADER = "x-shipyard-signature"
TIMESTAMP_HEADER = "x-shipyard-timestamp"


def event_data(event: str, escalation: dict[str, Any]) -> dict[str, Any]:
    """The fields of an escalation event's body (the outbox adds `type` and `timestamp`)."""
    return {"event": event, "sent_at": datetime.now(UTC), "escalation": escalation}


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The deprecated `x-shipyard-signature` value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, body: bytes, timestamp: str, signature: str, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Check the deprecated headers (constant time), refusing stale timestamps. Deprecated:
    use `shipyard.webhooks.verify`."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((now or time.time()) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, sent), signature)
