"""Standard Webhooks signatures: sign on our side, verify on the receiver's (stdlib only).

Every delivery carries three headers (https://www.standardwebhooks.com):

    webhook-id: msg_2b0f...            the same on every retry: receivers dedupe on it
    webhook-timestamp: 1764270000      Unix seconds of this attempt: receivers reject stale ones
    webhook-signature: v1,<base64>     HMAC-SHA256 of "{id}.{timestamp}.{body}"

A secret is written `whsec_` + base64 of its key bytes (`generate_secret()` makes one); any
other string is used as its UTF-8 bytes. Several space-separated signatures may be sent
while a secret rotates; a receiver accepts any that matches.

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from shipyard.errors import ClientError

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

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300.0


class WebhookVerificationError(ClientError):
    """A received webhook is not authentic or not fresh (a receiver answers it with 400)."""

    code = "webhook_verification_failed"


def generate_secret(nbytes: int = 32) -> str:
    """A new signing secret: `whsec_` + base64 of `nbytes` random bytes (24-64)."""
    if not 24 <= nbytes <= 64:
        raise ValueError(f"nbytes is {nbytes}; Standard Webhooks secrets have 24 to 64 bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_bytes(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: `whsec_...` is base64-decoded; other text is its UTF-8."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a 'whsec_' secret must be followed by base64; make one with "
                             "`shipyard webhooks secret`") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one delivery."""
    return "v1," + base64.b64encode(_mac(secret_bytes(secret), msg_id, timestamp, body)).decode()


def signature_header(secrets_: Sequence[str | bytes], msg_id: str, timestamp: int,
                     body: bytes) -> str:
    """The `webhook-signature` value: one signature per secret (during a rotation)."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)


def verify(secret: str | bytes, body: bytes | str, headers: Mapping[str, str], *,
           tolerance_s: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> Any:
    """Check a received delivery and return its parsed JSON body.

    Raises `WebhookVerificationError` when a header is missing, the timestamp is further than
    `tolerance_s` from now (a replay, or a clock far off), or no `v1` signature matches
    (compared in constant time). Pass the raw body bytes exactly as received. To reject a
    replay inside the tolerance too, remember `headers["webhook-id"]` of what you accepted.
    """
    data = body.encode() if isinstance(body, str) else body
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(ID_HEADER, "")
    stamp = lowered.get(TIMESTAMP_HEADER, "")
    given = lowered.get(SIGNATURE_HEADER, "")
    if not (msg_id and stamp and given):
        missing = [h for h, v in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, stamp),
                                  (SIGNATURE_HEADER, given)) if not v]
        raise WebhookVerificationError(f"The delivery lacks header(s) {', '.join(missing)}.")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(
            f"Header {TIMESTAMP_HEADER} is {stamp[:20]!r}; it must be Unix seconds.") from None
    age = (time.time() if now is None else now) - timestamp
    if age > tolerance_s:
        raise WebhookVerificationError(
            f"The delivery was signed {age:.0f}s ago, more than the {tolerance_s:g}s "
            "tolerance: a replay, or a clock far off.")
    if age < -tolerance_s:
        raise WebhookVerificationError(
            f"The delivery's timestamp is {-age:.0f}s in the future, more than the "
            f"{tolerance_s:g}s tolerance; check the clocks.")
    expected = _mac(secret_bytes(secret), msg_id, timestamp, data)
    matched = False
    for candidate in given.split(" "):
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Check every candidate (no early exit): the time taken does not say which matched.
        matched = hmac.compare_digest(expected, signature) or matched
    if not matched:
        raise WebhookVerificationError("No webhook-signature matches: the body or headers "
                                       "were changed, or the secret is not the sender's.")
    try:
        return json.loads(data)
    except ValueError:
        raise WebhookVerificationError("The signed body is not JSON.") from None
