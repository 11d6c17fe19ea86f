"""Alert rules and SLOs: config parsing, burn-rate math and the state machine (pure parts)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from doc_blocks import take
from shipyard.config import parse_config
from shipyard.config.alerting import DEFAULT_BURN_RATES, parse_duration
from shipyard.errors import ConfigError
from shipyard.monitor.alerts import definitions
from shipyard.monitor.channels import (
    MemoryChannel,
    Notification,
    SlackChannel,
    WebhookChannel,
    deliver,
    verify_signature,
)
from shipyard.monitor.slo import BurnCheck, ErrorBudget, SLOStatus, burn_rate
from shipyard.monitor.state import OpenAlert, advance

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- config -----------------------------------------------------------------------------------
GOOD = """
server: {public_url: "https://ai.example.com"}
alerts:
  interval_s: 15
  resolve_after: 10m
  channels:
    - {name: ops, kind: webhook, url: "https://hooks.example.com/x", secret: {$env: HOOK_SECRET}}
    - {name: chat, kind: slack, url: {$env: SLACK_URL}}
    - {name: mail, kind: email, smtp_host: smtp.example.com, sender: a@example.com,
       to: [b@example.com], username: a, password: {$env: SMTP_PASSWORD}}
  rules:
    - name: support-errors
      metric: error_rate
      service: support
      window: 5m
      comparison: ">"
      threshold: 0.05
      for_duration: 2m
      severity: page
      runbook: "https://wiki.example.com/runbooks/support-errors"
      labels: {team: support}
      channels: [ops, chat]
    - name: spend
      query: "SELECT sum(cost_usd) FROM traces WHERE started_at >= :since"
      threshold: 20
      window: 1h
slos:
  - name: support-availability
    sli: availability
    objective: 0.999
    period: 30d
    service: support
  - name: support-latency
    sli: latency
    objective: 0.99
    latency_threshold_ms: 2000
    burn_rates:
      - {severity: page, long_window: 1h, short_window: 5m, burn_rate: 14.4}
"""
ENV = {"HOOK_SECRET": "s3cret-hook", "SLACK_URL": "https://hooks.slack.com/services/T/B/X",
       "SMTP_PASSWORD": "pw"}


def test_a_full_alerts_config_parses_with_durations_in_seconds() -> None:
    config = parse_config(GOOD, environ=ENV)
    rule = config.alerts.rules[0]
    assert (rule.window, rule.for_duration, rule.severity) == (300.0, 120.0, "page")
    assert config.alerts.resolve_after == 600.0
    assert config.alerts.channels[1].url is not None
    assert config.alerts.channels[1].url.get_secret_value() == ENV["SLACK_URL"]
    availability, latency = config.slos
    assert availability.period == 30 * 86400
    assert availability.burn_rates == list(DEFAULT_BURN_RATES)
    assert latency.burn_rates[0].long_window == 3600
    keys = [d.key for d in definitions(config)]
    assert keys == ["support-errors", "spend", "support-availability:page",
                    "support-availability:ticket", "support-latency:page"]


def test_time_scale_shrinks_every_duration() -> None:
    config = parse_config(GOOD.replace("interval_s: 15", "interval_s: 15\n  time_scale: 0.001"),
                          environ=ENV)
    rule = definitions(config)[0]
    assert rule.for_s == pytest.approx(0.12) and rule.resolve_after_s == pytest.approx(0.6)


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("5m", 300), ("1.5h", 5400),
                                                ("30d", 2592000), ("2w", 1209600), (90, 90),
                                                ("250ms", 0.25), ("45", 45)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("yaml", "expected"), [
    ("alerts: {rules: [{name: r, metric: error_rate, threshold: 1, window: 5 minutes}]}",
     "key 'alerts.rules.0.window': '5 minutes' is not a duration; write one such as 30s"),
    ("alerts: {rules: [{name: r, threshold: 1}]}",
     "rule 'r' needs exactly one of 'metric'"),
    ("alerts: {rules: [{name: r, metric: p99, threshold: 1}]}",
     "alerts.rules.0.metric"),
    ("alerts: {rules: [{name: r, query: 'DELETE FROM traces', threshold: 1}]}",
     "'query' must be a SELECT"),
    ("alerts: {rules: [{name: r, metric: error_rate, threshold: 1, channels: [pager]}]}",
     "alerts.rules[0].channels names 'pager', which is not a channel (known: none are "
     "defined); add it under alerts.channels"),
    ("alerts: {rules: [{name: r, metric: error_rate, threshold: 1}]}\n"
     "slos: [{name: r, sli: availability, objective: 0.99}]",
     "slos[0].name is 'r', which another rule or SLO already uses"),
    ("slos: [{name: a, sli: availability, objective: 99.9}]",
     "key 'slos.0.objective': must be a ratio between 0 and 1, e.g. 0.999 (write 0.999 for "
     "99.9%)"),
    ("slos: [{name: a, sli: latency, objective: 0.99}]",
     "needs 'latency_threshold_ms', e.g. latency_threshold_ms: 2000"),
    ("slos: [{name: a, sli: availability, objective: 0.99, burn_rates: [{severity: page, "
     "long_window: 5m, short_window: 1h, burn_rate: 2}]}]",
     "short_window (3600s) must be shorter than long_window (300s)"),
    ("alerts: {interval_s: 60}",
     "lease_s (60) must be longer than interval_s (60) so the evaluator renews its lease "
     "before it expires; e.g. lease_s: 120"),
    ("alerts: {channels: [{name: c, kind: slack}]}",
     "channel 'c' of kind 'slack' needs 'url' starting with http"),
    ("alerts: {channels: [{name: c, kind: email, smtp_host: h}]}",
     "needs 'smtp_host', 'sender' and at least one address in 'to'"),
    ("alerts: {channels: [{name: c, kind: email, smtp_host: h, sender: a@b, to: [c@d], "
     "ssl: true}]}",
     "set 'ssl: true' (implicit TLS, port 465) or 'starttls: true' (port 587), not both"),
])
def test_config_errors_name_the_field_the_value_and_the_fix(yaml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml)
    assert expected in caught.value.message


def test_secrets_do_not_show_in_the_parsed_config() -> None:
    config = parse_config(GOOD, environ=ENV)
    assert "s3cret-hook" not in repr(config) and "hooks.slack.com" not in repr(config)


# -- burn-rate math ---------------------------------------------------------------------------
def test_burn_rate_is_the_error_ratio_over_the_budget() -> None:
    assert burn_rate(0.001, 0.999) == pytest.approx(1.0)
    assert burn_rate(0.0144, 0.999) == pytest.approx(14.4)
    assert burn_rate(0.0, 0.99) == 0.0
    # The workbook's table: 14.4x for 1h spends 2% of a 30-day (720h) budget, 6x for 6h 5%,
    # 1x for 3 days 10%.
    spent = [rate * hours / 720 for rate, hours in ((14.4, 1), (6, 6), (1, 72))]
    assert spent == pytest.approx([0.02, 0.05, 0.10])


def test_a_burn_check_needs_both_windows_above_the_rate() -> None:
    def check(long: float | None, short: float | None) -> BurnCheck:
        return BurnCheck("page", 3600, 300, 14.4, long, short, 100)

    assert check(20, 15).firing
    assert not check(20, 10).firing  # fixed already: the short window recovered
    assert not check(10, 20).firing  # a blip: the long window is not significant
    assert not check(None, 20).firing and not check(14.4, 14.4).firing
    status = SLOStatus("s", [check(1, 1), BurnCheck("ticket", 86400, 7200, 3, 5, 4, 10)])
    assert status.firing("page") is None and status.firing("ticket") is not None
    assert status.severities() == ["page", "ticket"]


def test_error_budget() -> None:
    budget = ErrorBudget(objective=0.999, total=1_000_000, bad=250)
    assert budget.allowed == 1000 and budget.remaining == 0.75
    assert budget.sli == pytest.approx(0.99975)
    assert ErrorBudget(0.99, 100, 3).remaining == pytest.approx(-2.0)  # overspent
    assert ErrorBudget(0.99, 0, 0).remaining == 1.0 and ErrorBudget(0.99, 0, 0).sli is None


# -- state machine ----------------------------------------------------------------------------
def run(conditions: list[bool], *, for_s: float = 0, resolve_after_s: float = 0,
        step_s: float = 1) -> list[str]:
    """Feed one condition per step; return the transitions taken, in order."""
    alert: OpenAlert | None = None
    seen = []
    for i, active in enumerate(conditions):
        alert, transition = advance(alert, active=active, value=1.0 if active else 0.0,
                                    now=at(i * step_s), for_s=for_s,
                                    resolve_after_s=resolve_after_s, key="k")
        if transition is not None:
            seen.append(transition)
    return seen


def test_fires_at_once_without_for_and_resolves_once() -> None:
    assert run([False, True, True, True, False, False, False]) == ["firing", "resolved"]


def test_pending_until_the_for_duration_then_firing() -> None:
    assert run([True, True, True, True, False], for_s=2) == ["pending", "firing", "resolved"]


def test_a_pending_alert_that_clears_never_fires() -> None:
    assert run([True, True, False, False], for_s=5) == ["pending", "cleared"]


def test_flapping_does_not_spam_with_a_minimum_resolve_time() -> None:
    flapping = [True, False, True, False, True, False, True] + [False] * 4
    assert run(flapping, resolve_after_s=2) == ["firing", "resolved"]
    # Without hysteresis the same signal would fire and resolve again and again.
    assert run(flapping, resolve_after_s=0).count("firing") == 4


def test_a_resolved_alert_fires_again_as_a_new_incident() -> None:
    alert, _ = advance(None, active=True, value=1, now=at(0), for_s=0, resolve_after_s=0)
    assert alert is not None
    gone, transition = advance(alert, active=False, value=0, now=at(1), for_s=0,
                               resolve_after_s=0)
    assert gone is None and transition == "resolved"
    again, transition = advance(None, active=True, value=1, now=at(2), for_s=0,
                                resolve_after_s=0)
    assert transition == "firing" and again is not None and again.id != alert.id


# -- channels ---------------------------------------------------------------------------------
class Flaky:
    def __init__(self, failures: int) -> None:
        self.name, self.failures, self.calls = "flaky", failures, 0

    async def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("https://hooks.example.com/secret-token refused")


def test_delivery_retries_with_backoff_and_logs_no_secret(
        caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(2)
    note = Notification("firing", {"key": "k"})
    assert asyncio.run(deliver(flaky, note, attempts=3, backoff_s=0.01))
    assert flaky.calls == 3
    dead = Flaky(10)
    assert not asyncio.run(deliver(dead, note, attempts=2, backoff_s=0.01))
    assert "secret-token" not in caplog.text and "ConnectionError" in caplog.text


def test_payloads_of_webhook_and_slack() -> None:
    note = Notification("firing", {"id": "a1", "key": "errors", "severity": "page",
                                   "value": 0.25, "threshold": 0.05, "summary": "too many",
                                   "runbook": "restart it", "url": "https://x/ui/alerts/a1"})
    assert note.title() == "[FIRING][page] errors"
    assert "runbook: restart it" in note.text() and "dashboard: https://x/ui/alerts/a1" in (
        note.text())
    hook = WebhookChannel("h", "http://127.0.0.1:1/", secret="k")
    body = hook.body(note)
    signature = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify_signature("k", body, signature) and not verify_signature("x", body, signature)
    slack = SlackChannel("s", "http://127.0.0.1:1/").body(note)
    assert b'"blocks"' in slack and b"<https://x/ui/alerts/a1|Open in Shipyard>" in slack
    memory = MemoryChannel("m")
    assert asyncio.run(deliver(memory, note)) and memory.sent == [note]


ALERTS_YAML = take("docs/alerts.md", lang="yaml")


def test_every_yaml_example_in_the_alerts_doc_is_valid() -> None:
    blocks = [b.text for b in ALERTS_YAML]
    assert len(blocks) >= 8
    environ = {"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
               "ALERT_WEBHOOK_SECRET": "s", "SMTP_PASSWORD": "p"}
    for block in blocks:
        config = parse_config(block, environ=environ)
        assert config.alerts.rules or config.slos or config.alerts.channels or (
            config.alerts.time_scale < 1)


def test_commands_that_send_nothing_load_the_config_without_channel_secrets(
        tmp_path: Path) -> None:
    from shipyard.config import load_config
    from shipyard.config.alerting import UNRESOLVED_SECRET
    from shipyard.config.loader import _PLACEHOLDER

    assert UNRESOLVED_SECRET == _PLACEHOLDER
    file = tmp_path / "shipyard.yaml"
    file.write_text("alerts: {channels: [{name: c, kind: slack, url: {$env: UNSET_URL}}]}")
    config = load_config(file, environ={}, secrets=False)
    assert config.alerts.channels[0].kind == "slack"
    with pytest.raises(ConfigError, match="UNSET_URL, which is not set"):
        load_config(file, environ={})
