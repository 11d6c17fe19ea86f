"""Webhook notifications: a JSON POST per event, signed, retried with backoff, in the background.

The body is `{"event": "escalation.opened" | "escalation.overdue", "sent_at": ..., "escalation":
{...}}`. With a secret, two headers let the receiver check it came from Shipyard and is fresh:

    x-shipyard-timestamp: 1764270000
    x-shipyard-signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, keyed by the secret>

>>> sign(b"secret", b'{"event":"escalation.opened"}', 1764270000)[:7]
'sha256='
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "WebhookNotifier", "sign", "verify"]

log = logging.getLogger("shipyard.escalation")
SIGNATURE_HEADER = "x-shipyard-signature"
TIMESTAMP_HEADER = "x-shipyard-timestamp"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, body: bytes, timestamp: str, signature: str, *,
           tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Check a received webhook (constant time), refusing stale timestamps (replays)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((now or time.time()) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, sent), signature)


class WebhookNotifier:
    """Deliver events without ever holding up a request: each delivery is a background task
    that retries failed attempts (connection errors, 5xx, 429) with exponential backoff."""

    def __init__(self, *, backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 on_result: Callable[[str, bool], None] | None = None) -> None:
        self.backoff_base_s = backoff_base_s
        self.on_result = on_result  # (event, delivered): for metrics
        self.backoff_max_s = backoff_max_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self.delivered = 0
        self.failed = 0

    def send(self, url: str, event: str, escalation: dict[str, Any], *,
             secret: str | None = None, retries: int = 3,
             timeout_s: float = 5.0) -> asyncio.Task[bool]:
        """Queue one delivery; returns its task (True when the receiver took it)."""
        body = orjson.dumps({"event": event, "sent_at": datetime.now(UTC),
                             "escalation": escalation}, option=orjson.OPT_UTC_Z)
        task = asyncio.get_running_loop().create_task(
            self._deliver(url, event, body, secret, retries, timeout_s, escalation.get("id")))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, url: str, event: str, body: bytes, secret: str | None,
                       retries: int, timeout_s: float, ticket: Any) -> bool:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        problem = ""
        for attempt in range(retries + 1):
            headers = {"content-type": "application/json", "user-agent": "shipyard-webhook",
                       "x-shipyard-event": event}
            if secret:
                now = int(time.time())
                headers[TIMESTAMP_HEADER] = str(now)
                headers[SIGNATURE_HEADER] = sign(secret.encode(), body, now)
            try:
                async with self._session.post(
                        url, data=body, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                    if response.status < 300:
                        self.delivered += 1
                        if self.on_result is not None:
                            self.on_result(event, True)
                        return True
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        break  # the receiver refuses this body; retrying will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if attempt < retries:
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        self.failed += 1
        if self.on_result is not None:
            self.on_result(event, False)
        # The URL may hold a token in its query: log only its scheme and host.
        where = url.split("?", 1)[0].split("/")[2] if "://" in url else "?"
        log.warning("webhook %s for escalation %s to %s failed after %d attempts: %s",
                    event, ticket, where, retries + 1, problem)
        return False

    async def close(self, *, wait_s: float = 5.0) -> None:
        """Let queued deliveries finish (up to `wait_s`), then close the connection pool."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait_s)
            for task in pending:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
