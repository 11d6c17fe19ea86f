"""Outbound webhooks: Standard Webhooks signatures and the durable delivery outbox.

Receivers verify a delivery with `shipyard.webhooks.verify` (stdlib only, constant-time,
rejects stale timestamps):

>>> from shipyard.webhooks import verify
>>> event = verify(secret, body, headers)  # doctest: +SKIP

See docs/integration.md for a complete receiver.
"""

from __future__ import annotations

from shipyard.webhooks.signing import (
    ID_HEADER,
    SECRET_PREFIX,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    generate_secret,
    secret_bytes,
    sign,
    signature_header,
    verify,
)

__all__ = [
    "ID_HEADER",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookVerificationError",
    "generate_secret",
    "secret_bytes",
    "sign",
    "signature_header",
    "verify",
]
