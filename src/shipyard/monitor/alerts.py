"""Alert rules and SLO burn-rate alerts, evaluated in the background from the traces table.

`AlertEvaluator` runs inside the gateway (`Gateway.start` starts it, `Gateway.stop` stops it).
With several workers or replicas on one store, each runs an evaluator, but only the holder of
the store's lease row (`alert_lease`, see `shipyard.monitor.history`) evaluates and notifies;
when it stops or dies, another takes over within `alerts.lease_s` and resumes the open alerts
from the store. Every `alerts.interval_s` the leader:

1. computes each rule's metric and each SLO's burn rates over their windows;
2. advances each alert's state machine (`shipyard.monitor.state`) and stores the change;
3. notifies the alert's channels of `firing` and `resolved` transitions: webhook and Slack
   channels through the durable webhook outbox (`shipyard.webhooks`; retried with backoff
   across restarts, listed by `shipyard webhooks list`), email in the background with
   retries, so a slow receiver never delays the next evaluation. The alert's history gets
   `notified` (or `delivery_failed`) once a channel's delivery succeeded (or gave up).

>>> evaluator = AlertEvaluator(config, engine)  # doctest: +SKIP
>>> await evaluator.start()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shipyard.config.alerting import AlertRuleConfig, SLOConfig
from shipyard.config.schema import Config
from shipyard.monitor import history
from shipyard.monitor.channels import (
    Channel,
    Notification,
    WebhookChannel,
    build_channel,
    deliver,
)
from shipyard.monitor.queries import Scope, custom_query, metric_value
from shipyard.monitor.slo import SLOCounter, evaluate_slo
from shipyard.monitor.state import OpenAlert, advance
from shipyard.webhooks.delivery import Delivery, WebhookOutbox

__all__ = ["AlertDefinition", "AlertEvaluator", "Observation", "definitions", "observe"]

log = logging.getLogger("shipyard.alerts")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class AlertDefinition:
    """One thing that can fire: a rule, or one severity of an SLO's burn-rate alerts."""

    key: str
    source: str  # rule | slo
    severity: str
    for_s: float
    resolve_after_s: float
    info: history.AlertInfo
    channels: list[str] | None
    rule: AlertRuleConfig | None = None
    slo: SLOConfig | None = None


@dataclass(frozen=True)
class Observation:
    """A definition's condition at one instant."""

    definition: AlertDefinition
    active: bool | None  # None: unknown (its query failed)
    value: float | None
    detail: str = ""


def definitions(config: Config) -> list[AlertDefinition]:
    """Every alert the config defines, with durations scaled by `alerts.time_scale`."""
    scale = config.alerts.time_scale
    default_resolve = config.alerts.resolve_after
    out = []
    for rule in config.alerts.rules:
        summary = rule.summary or (
            f"{rule.metric or 'query'} {rule.comparison} {rule.threshold:g} over "
            f"{_human(rule.window)}" + _where(rule.service, rule.model, rule.tenant))
        resolve = rule.resolve_after if rule.resolve_after is not None else default_resolve
        out.append(AlertDefinition(
            rule.name, "rule", rule.severity, rule.for_duration * scale, resolve * scale,
            history.AlertInfo(rule.name, "rule", rule.severity, rule.tenant or "default",
                              summary, rule.runbook, dict(rule.labels), rule.threshold),
            rule.channels, rule=rule))
    for slo in config.slos:
        resolve = slo.resolve_after if slo.resolve_after is not None else default_resolve
        for severity in dict.fromkeys(p.severity for p in slo.burn_rates):
            what = ("availability (non-5xx)" if slo.sli == "availability" else
                    f"latency under {slo.latency_threshold_ms:g} ms")
            summary = (f"SLO '{slo.name}' ({what}, objective {slo.objective * 100:g}% over "
                       f"{_human(slo.period)}) is burning its error budget too fast"
                       + _where(slo.service, slo.model, slo.tenant))
            key = f"{slo.name}:{severity}"
            out.append(AlertDefinition(
                key, "slo", severity, 0.0, resolve * scale,
                history.AlertInfo(key, "slo", severity, slo.tenant or "default", summary,
                                  slo.runbook, {**slo.labels, "slo": slo.name}, None),
                slo.channels, slo=slo))
    return out


def _where(service: str | None, model: str | None, tenant: str | None) -> str:
    parts = [f"{k}={v}" for k, v in (("service", service), ("model", model),
                                      ("tenant", tenant)) if v]
    return f" [{', '.join(parts)}]" if parts else ""


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def observe(engine: Engine, defs: list[AlertDefinition], now: datetime, *,
            time_scale: float = 1.0,
            counters: dict[str, SLOCounter] | None = None) -> list[Observation]:
    """Evaluate every definition's condition at `now` (blocking: run it in a thread).

    With `counters` (kept by a long-running evaluator), SLOs read only recent traces. A
    definition whose query fails is observed as unknown (`active` None): its alert keeps its
    state, so a store hiccup or a broken query neither fires nor resolves anything.
    """
    out: list[Observation] = []
    slo_status: dict[str, Any] = {}
    for d in defs:
        try:
            out.append(_observe_one(engine, d, now, time_scale, counters, slo_status))
        except SQLAlchemyError as exc:
            log.warning("alerts: evaluating '%s' failed (%s)", d.key, type(exc).__name__)
            out.append(Observation(d, None, None, f"query failed ({type(exc).__name__})"))
    return out


def _observe_one(engine: Engine, d: AlertDefinition, now: datetime, time_scale: float,
                 counters: dict[str, SLOCounter] | None,
                 slo_status: dict[str, Any]) -> Observation:
    if d.rule is not None:
        rule = d.rule
        since = now - timedelta(seconds=rule.window * time_scale)
        if rule.query is not None:
            value = custom_query(engine, rule.query, since, now)
        else:
            value = metric_value(engine, rule.metric or "", Scope(
                service=rule.service, model=rule.model, tenant=rule.tenant), since, now,
                min_requests=rule.min_requests)
        active = value is not None and _COMPARE[rule.comparison](value, rule.threshold)
        return Observation(d, active, value,
                           "no data" if value is None else f"value {value:.6g}")
    slo = d.slo
    if slo is None:
        raise ValueError(f"alert definition {d.key!r} has neither a rule nor an SLO")
    if slo.name not in slo_status:
        counter = counters.get(slo.name) if counters is not None else None
        slo_status[slo.name] = (counter.status(now) if counter is not None
                                else evaluate_slo(engine, slo, now, time_scale=time_scale))
    status = slo_status[slo.name]
    check = status.firing(d.severity)
    if check is not None:
        return Observation(
            d, True, check.long_burn,
            f"burn rate {check.long_burn:.3g}x over {_human(check.long_window_s)} and "
            f"{check.short_burn:.3g}x over {_human(check.short_window_s)} (> "
            f"{check.threshold:g}x)")
    burns = [c.long_burn for c in status.checks
             if c.severity == d.severity and c.long_burn is not None]
    return Observation(d, False, max(burns) if burns else None, "burn rates below thresholds")


@dataclass
class _Result:
    definition: AlertDefinition
    transition: str
    alert: OpenAlert
    value: float | None
    detail: str


@dataclass
class _Outbox:
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class AlertEvaluator:
    """Evaluates the config's rules and SLOs every `alerts.interval_s`; one per store acts."""

    def __init__(self, config: Config, engine: Engine, *,
                 channels: dict[str, Channel] | None = None,
                 clock: Callable[[], datetime] | None = None,
                 holder: str | None = None, outbox: WebhookOutbox | None = None,
                 on_evaluated: Callable[[], None] | None = None) -> None:
        self.config = config
        self.on_evaluated = on_evaluated  # counts evaluation rounds (a metric)
        self.engine = engine
        self.defs = definitions(config)
        legacy = config.webhooks.legacy_signature
        self.channels: dict[str, Channel] = channels if channels is not None else {
            c.name: build_channel(c, legacy_signature=legacy) for c in config.alerts.channels}
        self.outbox = outbox
        if outbox is not None:
            outbox.listen(self._delivered)
        self._retry = {c.name: (c.attempts, c.backoff_s) for c in config.alerts.channels}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        server = config.server
        self.url_base = server.public_url or f"http://{server.host}:{server.port}"
        self.leader = False
        self._task: asyncio.Task[None] | None = None
        self._outbox = _Outbox()
        self._open: dict[str, OpenAlert] = {}
        self._counters: dict[str, SLOCounter] = {}

    @property
    def enabled(self) -> bool:
        return self.config.alerts.enabled and bool(self.defs)

    async def start(self) -> None:
        """Start the background loop (nothing to do without rules or SLOs)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, *, flush_s: float = 10.0) -> None:
        """Stop evaluating, let in-flight notifications finish (up to `flush_s`), and hand
        the lease on."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        pending = list(self._outbox.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=flush_s)
            for task in late:
                task.cancel()
        if self.leader:
            try:
                await asyncio.to_thread(history.release_lease, self.engine, self.holder)
            except Exception:  # the lease expires by itself
                log.warning("alerts: releasing the evaluator lease failed")
            self.leader = False

    async def _loop(self) -> None:
        interval = self.config.alerts.interval_s
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store outage must not kill the evaluator
                log.warning("alerts: evaluation failed (%s); retrying in %gs",
                            type(exc).__name__, interval)
                self.leader = False  # reload open alerts from the store once it is back
            await asyncio.sleep(interval)

    async def run_once(self) -> list[tuple[str, str]]:
        """One evaluation if this process holds the lease; returns (key, transition) pairs
        it made and queued notifications for."""
        leader = await asyncio.to_thread(history.acquire_lease, self.engine, self.holder,
                                         self.config.alerts.lease_s)
        if leader and not self.leader:
            self._open = await asyncio.to_thread(history.open_alerts, self.engine)
            self._counters = {slo.name: SLOCounter(self.engine, slo,
                                                   time_scale=self.config.alerts.time_scale)
                              for slo in self.config.slos}
            log.info("alerts: this process evaluates %d rules/SLO alerts (lease %s)",
                     len(self.defs), self.holder)
        self.leader = leader
        if not leader:
            return []
        results = await asyncio.to_thread(self._evaluate, self.clock())
        if results and self.outbox is not None:
            try:
                await asyncio.to_thread(self._queue_durable, results)
            except Exception as exc:  # the store failed between two writes
                log.warning("alerts: queueing webhook notifications failed (%s)",
                            type(exc).__name__)
        for result in results:
            if result.transition in ("firing", "resolved"):
                self._notify(result)
        if self.on_evaluated is not None:
            self.on_evaluated()
        return [(r.definition.key, r.transition) for r in results]

    def _evaluate(self, now: datetime) -> list[_Result]:
        observations = observe(self.engine, self.defs, now,
                               time_scale=self.config.alerts.time_scale,
                               counters=self._counters)
        known = {d.key for d in self.defs}
        for key, orphan in list(self._open.items()):
            if key not in known:  # its rule or SLO left the config: close it, quietly
                history.close_orphan(self.engine, orphan.id, now=now)
                del self._open[key]
        results = []
        for obs in observations:
            d = obs.definition
            if obs.active is None:
                continue  # unknown: keep the alert as it is
            before = self._open.get(d.key)
            after, transition = advance(before, active=obs.active, value=obs.value, now=now,
                                        for_s=d.for_s, resolve_after_s=d.resolve_after_s,
                                        key=d.key)
            won = history.save_transition(self.engine, before, after, transition, d.info,
                                          now=now, url_base=self.url_base)
            if before is None and after is not None and not won:
                # Another evaluator opened this incident (a lease that expired mid-run):
                # take the store's version instead of our own.
                stored = history.open_alerts(self.engine).get(d.key)
                if stored is None:
                    self._open.pop(d.key, None)
                else:
                    self._open[d.key] = stored
                continue
            if after is None:
                self._open.pop(d.key, None)
            else:
                self._open[d.key] = after
            if transition is not None and won:
                alert = after or before
                if alert is not None:
                    log.info("alert %s: %s (%s)", d.key, transition, obs.detail)
                    results.append(_Result(d, transition, alert, obs.value, obs.detail))
        return results

    def _payload(self, result: _Result) -> dict[str, Any]:
        d, alert = result.definition, result.alert
        now = self.clock()
        return {
            "id": alert.id, "key": d.key, "source": d.source, "severity": d.severity,
            "state": result.transition, "value": result.value, "threshold": d.info.threshold,
            "summary": d.info.summary, "detail": result.detail, "runbook": d.info.runbook,
            "labels": d.info.labels, "tenant": d.info.tenant_id,
            "url": f"{self.url_base.rstrip('/')}/ui/alerts/{alert.id}",
            "started_at": alert.started_at.isoformat(),
            "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
            "resolved_at": now.isoformat() if result.transition == "resolved" else None,
        }

    def _targets(self, names: list[str] | None) -> list[Channel]:
        if names is None:
            return list(self.channels.values())
        return [self.channels[n] for n in names if n in self.channels]

    def _durable(self, channel: Channel) -> bool:
        """Webhook and Slack channels go through the outbox when the gateway has one."""
        return (self.outbox is not None and isinstance(channel, WebhookChannel)
                and channel.endpoint.name in self.outbox.endpoints)

    def _notify(self, result: _Result) -> None:
        notification = Notification(result.transition, self._payload(result))
        for channel in self._targets(result.definition.channels):
            if self._durable(channel):
                continue  # queued by _queue_durable
            task = asyncio.get_running_loop().create_task(
                self._send(channel, notification, result.alert.id))
            self._outbox.tasks.add(task)
            task.add_done_callback(self._outbox.tasks.discard)

    def _queue_durable(self, results: list[_Result]) -> None:
        """Queue the outbox deliveries of `results` (blocking: runs in a thread). The key
        (alert, transition, channel) makes a second evaluator's attempt a no-op."""
        if self.outbox is None:
            return
        for result in results:
            if result.transition not in ("firing", "resolved"):
                continue
            notification = Notification(result.transition, self._payload(result))
            for channel in self._targets(result.definition.channels):
                if not isinstance(channel, WebhookChannel) or not self._durable(channel):
                    continue
                self.outbox.send(
                    channel.endpoint.name, notification.event_type,
                    raw_body=channel.body(notification),
                    tenant_id=result.definition.info.tenant_id,
                    idempotency_key=f"{result.alert.id}:{result.transition}:{channel.name}",
                    headers=channel.extra_headers(notification),
                    meta={"alert_id": result.alert.id, "channel": channel.name,
                          "event": notification.event})

    def _delivered(self, delivery: Delivery, status: str) -> None:
        """An outbox delivery of an alert finished (in whichever process delivered it)."""
        alert_id = delivery.meta.get("alert_id")
        if not alert_id or not delivery.endpoint.startswith("alerts.channels."):
            return
        history.record_event(self.engine, str(alert_id),
                             "notified" if status == "succeeded" else "delivery_failed",
                             details={"channel": delivery.meta.get("channel"),
                                      "event": delivery.meta.get("event"),
                                      "delivery": delivery.id})

    async def _send(self, channel: Channel, notification: Notification, alert_id: str) -> None:
        attempts, backoff = self._retry.get(channel.name, (5, 1.0))
        ok = await deliver(channel, notification, attempts=attempts, backoff_s=backoff)
        try:
            await asyncio.to_thread(
                history.record_event, self.engine, alert_id,
                "notified" if ok else "delivery_failed",
                details={"channel": channel.name, "event": notification.event})
        except Exception:  # the notification went out (or not); only its record failed
            log.warning("alerts: recording delivery to '%s' failed", channel.name)

    async def send_test(self) -> dict[str, bool]:
        """Send a `test` notification through every channel; True per channel delivered."""
        payload: dict[str, Any] = {
                   "id": "test", "key": "shipyard-test", "source": "test", "severity": "info",
                   "state": "test", "value": None, "threshold": None,
                   "summary": "A test notification from `shipyard alerts test`.",
                   "runbook": "Nothing to do: this checks the channel works.", "labels": {},
                   "url": f"{self.url_base.rstrip('/')}/ui/alerts",
                   "started_at": self.clock().isoformat()}
        results = {}
        for name, channel in self.channels.items():
            attempts, backoff = self._retry.get(name, (5, 1.0))
            results[name] = await deliver(channel, Notification("test", payload),
                                          attempts=attempts, backoff_s=backoff)
        return results
