"""Standard Webhooks signatures: the spec's reference test vector, the reference library
(`standardwebhooks`, written by the spec's authors) verifying what we sign and signing what
we verify, stale and future timestamps, tampering, rotation and secret formats."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as TheirError

from shipyard.webhooks import (
    WebhookVerificationError,
    generate_secret,
    secret_bytes,
    sign,
    signature_header,
    verify,
)

# From the reference implementation's test suite (libraries/python/tests/test_webhooks.py,
# test_sign_function, in github.com/standard-webhooks/standard-webhooks).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(secret: str, msg_id: str, stamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, msg_id, stamp, body)}


def test_the_reference_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY.encode()) == (
        VECTOR_SIGNATURE)
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": VECTOR_SIGNATURE}
    assert verify(VECTOR_SECRET, VECTOR_BODY, headers, now=VECTOR_TIMESTAMP + 10) == {
        "test": 2432232314}
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(VECTOR_SECRET, VECTOR_BODY, headers)  # signed in 2021: a replay today


def test_the_reference_library_accepts_what_we_sign_and_we_accept_what_it_signs() -> None:
    secret = generate_secret()
    body = b'{"type":"job.completed","data":{"id":"job_1"}}'
    now = int(time.time())
    ours = _headers(secret, "msg_abc", now, body)
    assert Webhook(secret).verify(body, ours) == {"type": "job.completed",
                                                  "data": {"id": "job_1"}}
    theirs = Webhook(secret).sign("msg_xyz", datetime.fromtimestamp(now, UTC), body.decode())
    headers = {"Webhook-Id": "msg_xyz", "Webhook-Timestamp": str(now),
               "Webhook-Signature": theirs}
    assert verify(secret, body, headers)["data"]["id"] == "job_1"
    # Both refuse a tampered body.
    with pytest.raises(TheirError):
        Webhook(secret).verify(body.replace(b"job_1", b"job_2"), ours)
    with pytest.raises(WebhookVerificationError, match="No webhook-signature matches"):
        verify(secret, body.replace(b"job_1", b"job_2"), ours)


@pytest.mark.parametrize(("offset", "message"), [(-301, "more than the 300s"),
                                                 (301, "in the future")])
def test_timestamps_outside_the_tolerance_are_rejected(offset: int, message: str) -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = _headers(secret, "msg_1", now + offset, b"{}")
    with pytest.raises(WebhookVerificationError, match=message):
        verify(secret, b"{}", headers, now=now)
    assert verify(secret, b"{}", headers, now=now, tolerance_s=600) == {}


def test_missing_and_malformed_headers_name_the_problem() -> None:
    secret = generate_secret()
    headers = _headers(secret, "msg_1", int(time.time()), b"{}")
    for name in headers:
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(WebhookVerificationError, match=name):
            verify(secret, b"{}", partial)
    with pytest.raises(WebhookVerificationError, match="Unix seconds"):
        verify(secret, b"{}", {**headers, "webhook-timestamp": "yesterday"})
    bad = {**headers, "webhook-signature": "v1,not-base64!! v2,abc"}
    with pytest.raises(WebhookVerificationError, match="No webhook-signature"):
        verify(secret, b"{}", bad)
    with pytest.raises(WebhookVerificationError, match="No webhook-signature"):
        verify(generate_secret(), b"{}", headers)  # another secret


def test_rotation_sends_one_signature_per_secret() -> None:
    old, new = generate_secret(), generate_secret()
    now = int(time.time())
    header = signature_header([new, old], "msg_r", now, b"{}")
    assert header.count("v1,") == 2
    for secret in (old, new):
        assert verify(secret, b"{}", {"webhook-id": "msg_r", "webhook-timestamp": str(now),
                                      "webhook-signature": header}) == {}


def test_secret_formats() -> None:
    secret = generate_secret(24)
    assert secret.startswith("whsec_") and len(secret_bytes(secret)) == 24
    assert secret_bytes("plain-text-secret") == b"plain-text-secret"
    raw = base64.b64decode(VECTOR_SECRET[6:])
    assert secret_bytes(VECTOR_SECRET) == raw
    with pytest.raises(ValueError, match="base64"):
        secret_bytes("whsec_***")
    with pytest.raises(ValueError, match="24 to 64"):
        generate_secret(8)
