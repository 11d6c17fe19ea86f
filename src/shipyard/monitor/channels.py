"""Notification channels: a JSON webhook (signed per Standard Webhooks), a Slack-compatible
webhook and email over SMTP; `deliver` retries each with exponential backoff. In the gateway,
webhook and Slack notifications go through the durable webhook outbox instead (see
`shipyard.monitor.alerts`).

A channel is anything with a `name` and `async send(notification)`; `MemoryChannel` keeps what
it was sent (for tests, or to collect notifications in your own code). Failures are logged by
channel name and exception type only: URLs (a Slack URL is a secret), passwords and the
alert's labels never reach the log.

>>> channel = MemoryChannel("mem")
>>> asyncio.run(deliver(channel, Notification("test", {"key": "demo"})))
True
>>> channel.sent[0].event
'test'
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp
import orjson

from shipyard.config.alerting import AlertChannelConfig
from shipyard.webhooks.delivery import Endpoint, Legacy, delivery_headers
from shipyard.work import new_item_id

__all__ = [
    "Channel",
    "EmailChannel",
    "MemoryChannel",
    "Notification",
    "SlackChannel",
    "WebhookChannel",
    "build_channel",
    "deliver",
]

log = logging.getLogger("shipyard.alerts")
SIGNATURE_HEADER = "x-shipyard-signature"


@dataclass(frozen=True)
class Notification:
    """One message about one alert: `event` is `firing`, `resolved` or `test`."""

    event: str
    alert: dict[str, Any]
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def payload(self) -> dict[str, Any]:
        """The JSON body a webhook receives."""
        return {"version": 1, "event": self.event, "sent_at": self.sent_at.isoformat(),
                "alert": self.alert}

    @property
    def event_type(self) -> str:
        """The Standard Webhooks event type: `alert.firing`, `alert.resolved`, `alert.test`."""
        return f"alert.{self.event}"

    def title(self) -> str:
        a = self.alert
        state = {"firing": "FIRING", "resolved": "RESOLVED"}.get(self.event, "TEST")
        return f"[{state}][{a.get('severity', 'info')}] {a.get('key', '?')}"

    def text(self) -> str:
        """Plain-text body (email, Slack fallback)."""
        a = self.alert
        lines = [self.title()]
        if a.get("summary"):
            lines.append(str(a["summary"]))
        if a.get("value") is not None:
            threshold = a.get("threshold")
            lines.append(f"value: {a['value']:.6g}" + (
                f" (threshold {threshold:.6g})" if threshold is not None else ""))
        for name in ("started_at", "fired_at", "resolved_at"):
            if a.get(name):
                lines.append(f"{name.replace('_', ' ')}: {a[name]}")
        if a.get("labels"):
            lines.append("labels: " + ", ".join(f"{k}={v}" for k, v in a["labels"].items()))
        if a.get("runbook"):
            lines.append(f"runbook: {a['runbook']}")
        if a.get("url"):
            lines.append(f"dashboard: {a['url']}")
        return "\n".join(lines)


class Channel(Protocol):
    name: str

    async def send(self, notification: Notification) -> None:
        """Deliver once; raise on any failure (`deliver` retries)."""


class DeliveryFailed(Exception):
    """The receiver answered, but not with 2xx."""


class MemoryChannel:
    """Keeps notifications in a list."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.sent.append(notification)


class WebhookChannel:
    """POST the notification as JSON, signed per Standard Webhooks when it has a secret.

    The gateway queues these deliveries in the durable webhook outbox (`shipyard.webhooks`,
    endpoint `alerts.channels.NAME`), so they survive restarts; `send` is the immediate path
    (`shipyard alerts test`, or an evaluator without an outbox). Both send the same body and
    headers: `webhook-id`, `webhook-timestamp`, `webhook-signature` and, until Shipyard 0.3.0,
    the deprecated `x-shipyard-signature: sha256=<hex HMAC of the body>`.
    """

    legacy: Legacy = "body"

    def __init__(self, name: str, url: str, *, secret: str | None = None,
                 headers: dict[str, str] | None = None, timeout_s: float = 10.0,
                 legacy_signature: bool = True) -> None:
        self.name, self.url, self.secret = name, url, secret
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.legacy_signature = legacy_signature

    @property
    def endpoint(self) -> Endpoint:
        """This channel as a webhook endpoint (its name in the outbox)."""
        return Endpoint(f"alerts.channels.{self.name}", self.url, secret=self.secret,
                        headers=self.headers, timeout_s=self.timeout_s, legacy=self.legacy)

    def body(self, notification: Notification) -> bytes:
        """`{"type": "alert.firing", "timestamp": ..., "version": 1, "event", "sent_at",
        "alert"}`: Standard Webhooks' type and timestamp beside the original fields."""
        return orjson.dumps({"type": notification.event_type,
                             "timestamp": notification.sent_at, **notification.payload()},
                            option=orjson.OPT_UTC_Z)

    def extra_headers(self, notification: Notification) -> dict[str, str]:
        return {"x-shipyard-event": notification.event,
                "x-shipyard-delivery": f"{notification.alert.get('id', '')}:"
                                       f"{notification.event}"}

    async def send(self, notification: Notification) -> None:
        body = self.body(notification)
        headers = delivery_headers(self.endpoint, new_item_id("msg"), body,
                                   extra=self.extra_headers(notification),
                                   legacy_signature=self.legacy_signature)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                self.url, data=body, headers=headers, allow_redirects=False) as response:
            await response.read()
            if not 200 <= response.status < 300:
                raise DeliveryFailed(f"HTTP {response.status}")


def verify_signature(secret: str, body: bytes, header: str) -> bool:
    """Check the deprecated `X-Shipyard-Signature` on the receiving side (constant-time).

    Deprecated: use `shipyard.webhooks.verify`, which also rejects replays; the header and
    this helper are removed in Shipyard 0.3.0."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


class SlackChannel(WebhookChannel):
    """A Slack-compatible incoming webhook (`text` plus Block Kit `blocks`)."""

    legacy: Legacy = "none"

    def body(self, notification: Notification) -> bytes:
        a = notification.alert
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}.get(
            notification.event, ":information_source:")
        fields = [{"type": "mrkdwn", "text": f"*Severity*\n{a.get('severity', 'info')}"}]
        if a.get("value") is not None:
            fields.append({"type": "mrkdwn", "text": f"*Value*\n{a['value']:.6g}"})
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"{icon} *{notification.title()}*\n"
                                                 f"{a.get('summary') or ''}".strip()},
             "fields": fields}]
        context = []
        if a.get("runbook"):
            context.append({"type": "mrkdwn", "text": f"Runbook: {a['runbook']}"})
        if a.get("url"):
            context.append({"type": "mrkdwn", "text": f"<{a['url']}|Open in Shipyard>"})
        if context:
            blocks.append({"type": "context", "elements": context})
        return orjson.dumps({"text": f"{icon} {notification.text()}", "blocks": blocks})


class EmailChannel:
    """Email over SMTP (stdlib `smtplib`, run in a thread): STARTTLS or implicit TLS, login."""

    def __init__(self, name: str, *, host: str, port: int, sender: str, to: Sequence[str],
                 starttls: bool = True, use_ssl: bool = False, username: str | None = None,
                 password: str | None = None, timeout_s: float = 10.0,
                 ca_file: str | None = None) -> None:
        self.name, self.host, self.port = name, host, port
        self.sender, self.to = sender, list(to)
        self.starttls, self.use_ssl = starttls, use_ssl
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self.ca_file = ca_file

    def message(self, notification: Notification) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = notification.title()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message["X-Shipyard-Event"] = notification.event
        message.set_content(notification.text())
        return message

    def _send(self, message: EmailMessage) -> None:
        context = ssl.create_default_context(cafile=self.ca_file)
        smtp: smtplib.SMTP
        if self.use_ssl:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                    context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with smtp:
            if self.starttls and not self.use_ssl:
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)

    async def send(self, notification: Notification) -> None:
        await asyncio.to_thread(self._send, self.message(notification))


def build_channel(config: AlertChannelConfig, *, legacy_signature: bool = True) -> Channel:
    """The channel a config entry describes (secrets resolved by the config loader)."""
    if config.kind == "email":
        return EmailChannel(
            config.name, host=config.smtp_host or "", port=config.smtp_port,
            sender=config.sender or "", to=config.to, starttls=config.starttls,
            use_ssl=config.ssl, username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            timeout_s=config.timeout_s, ca_file=config.ca_file)
    url = config.url.get_secret_value() if config.url is not None else ""
    headers = {k: v.get_secret_value() for k, v in config.headers.items()}
    if config.kind == "slack":
        return SlackChannel(config.name, url, headers=headers, timeout_s=config.timeout_s)
    return WebhookChannel(config.name, url, headers=headers, timeout_s=config.timeout_s,
                          secret=config.secret.get_secret_value() if config.secret else None,
                          legacy_signature=legacy_signature)


async def deliver(channel: Channel, notification: Notification, *, attempts: int = 5,
                  backoff_s: float = 1.0) -> bool:
    """Send with retries and exponential backoff (full jitter); True once delivered.

    Logged on failure: the channel's name, the attempt and the exception's type, never the
    URL, credentials or the exception text (which may repeat them).
    """
    for attempt in range(1, attempts + 1):
        try:
            await channel.send(notification)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the receiver or the network is retried
            reason = str(exc) if isinstance(exc, DeliveryFailed) else type(exc).__name__
            if attempt == attempts:
                log.error("alert channel '%s': giving up on %s notification for '%s' after "
                          "%d attempts (%s)", channel.name, notification.event,
                          notification.alert.get("key"), attempts, reason)
                return False
            log.warning("alert channel '%s': attempt %d/%d failed (%s); retrying",
                        channel.name, attempt, attempts, reason)
            await asyncio.sleep(backoff_s * (2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
    return False
