"""The escalation API the gateway (and guards) call: open a ticket, tell the user, notify.

One `EscalationPolicy` per model alias and per service, built from its `escalation:` block;
one `Escalations` per gateway process. A guard whose verdict is `escalate` calls

    ticket = await gateway.escalations.open(ctx, reason="refund over limit", trigger="guard",
                                            conversation=body["messages"], score=0.2)
    return gateway.escalations.chat_response(ticket, model=alias)  # the graceful answer

`open` stores the conversation (PII-cleaned when the policy's `clean_pii` is on), queues the
`escalation.opened` webhook in the durable outbox (delivered by the gateway's worker, never
waited for), and returns the ticket; its `notice` is the polite message the user should read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sqlalchemy import Engine

from shipyard.config.schema import Config
from shipyard.config.trust import EscalationConfig, PIIConfig
from shipyard.errors import ShipyardError
from shipyard.escalation import store
from shipyard.escalation.answers import chat_answer, service_answer
from shipyard.escalation.store import Ticket
from shipyard.escalation.triggers import FailureCounter, UserRequestDetector
from shipyard.escalation.webhook import event_data
from shipyard.observe.metrics import Metrics
from shipyard.privacy import Operator, PIIEngine
from shipyard.privacy.pseudonymize import Pseudonymize, Pseudonyms
from shipyard.privacy.recognizers import Finding
from shipyard.security.principal import Principal
from shipyard.state.base import KeyValue
from shipyard.webhooks.delivery import WebhookOutbox
from shipyard.work import WorkItem

__all__ = [
    "EscalationPolicy",
    "Escalations",
    "OverdueChecker",
    "RequestInfo",
    "Trigger",
    "caller_of",
]

log = logging.getLogger("shipyard.escalation")
Trigger = Literal["guard", "low_confidence", "user_request", "repeated_failures"]
Kind = Literal["model", "service"]


class RequestInfo(Protocol):
    """What `open` needs to know about the request (a `RequestContext` has it all)."""

    tenant_id: str
    key_id: str | None
    request_id: str
    trace_id: str
    service: str | None
    model_alias: str | None


def caller_of(principal: Principal) -> str | None:
    """Who owns a ticket and may poll it: the API key's id, or for an OIDC token a digest of
    its subject (None when authentication is disabled: everyone is the same caller)."""
    if principal.key_id is not None:
        return principal.key_id
    if principal.subject:
        return "sub:" + hashlib.sha256(principal.subject.encode()).hexdigest()[:32]
    return None


@dataclass
class EscalationPolicy:
    """Escalation settings of one model alias or service."""

    kind: Kind
    name: str
    config: EscalationConfig
    pii: PIIConfig = field(default_factory=PIIConfig)
    _detector: UserRequestDetector | None = None
    _engine: PIIEngine | None = None

    @property
    def where(self) -> str:
        return f"{'models' if self.kind == 'model' else 'services'}.{self.name}.escalation"

    def asks_for_person(self, text: str) -> bool:
        if not (self.config.enabled and self.config.user_request and text):
            return False
        if self._detector is None:
            self._detector = UserRequestDetector(self.config.phrases)
        return self._detector(text)

    def low_confidence(self, score: float | None) -> bool:
        threshold = self.config.min_confidence
        return (self.config.enabled and threshold is not None and score is not None
                and score < threshold)

    def clean(self, value: Any) -> Any:
        """`value` (a conversation) with every string's PII replaced, numbered consistently."""
        if self._engine is None:
            self._engine = PIIEngine(entities=self.pii.entities, allow=self.pii.allow,
                                     deny=self.pii.deny, min_score=self.pii.min_score)
        return _clean(self._engine, Pseudonymize(Pseudonyms()), value)


def _clean(engine: PIIEngine, operator: Operator, value: Any) -> Any:
    if isinstance(value, str):
        findings: list[Finding] = engine.analyze(value)
        return engine.anonymize(value, findings, operator) if findings else value
    if isinstance(value, list):
        return [_clean(engine, operator, v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(engine, operator, v) for k, v in value.items()}
    return value


class Escalations:
    """Tickets, the user-facing notice, webhooks and the overdue check of one gateway."""

    def __init__(self, engine: Engine, *, kv: KeyValue, policies: Iterable[EscalationPolicy],
                 outbox: WebhookOutbox | None = None,
                 on_open: Callable[[Ticket], None] | None = None) -> None:
        self.engine = engine
        self.on_open = on_open
        self.policies: dict[tuple[str, str], EscalationPolicy] = {
            (p.kind, p.name): p for p in policies}
        self.outbox = outbox
        self._queued: set[asyncio.Task[WorkItem | None]] = set()
        self.failures = FailureCounter(kv)
        self._pending: set[tuple[str, str]] | None = None  # None: not loaded, ask the store
        self._default = EscalationPolicy("model", "", EscalationConfig())

    @classmethod
    def from_config(cls, config: Config, engine: Engine, kv: KeyValue,
                    metrics: Metrics | None = None,
                    outbox: WebhookOutbox | None = None) -> Escalations:
        """One policy per alias and service; tickets counted in `metrics`; webhooks queued in
        `outbox` (without one, no webhook is sent)."""
        policies = [EscalationPolicy("model", alias, m.escalation, m.pii)
                    for alias, m in config.models.items()]
        policies += [EscalationPolicy("service", name, s.escalation, s.pii)
                     for name, s in config.services.items()]
        if metrics is None:
            return cls(engine, kv=kv, policies=policies, outbox=outbox)
        opened = metrics.escalations
        return cls(engine, kv=kv, policies=policies, outbox=outbox,
                   on_open=lambda t: opened.labels(t.service, t.trigger).inc())

    @property
    def enabled(self) -> list[EscalationPolicy]:
        return [p for p in self.policies.values() if p.config.enabled]

    def for_model(self, alias: str) -> EscalationPolicy | None:
        """The alias's policy when escalation is enabled on it."""
        policy = self.policies.get(("model", alias))
        return policy if policy is not None and policy.config.enabled else None

    def for_service(self, name: str) -> EscalationPolicy | None:
        policy = self.policies.get(("service", name))
        return policy if policy is not None and policy.config.enabled else None

    def _policy_of(self, ctx: RequestInfo) -> EscalationPolicy:
        if ctx.model_alias:
            found = self.policies.get(("model", ctx.model_alias))
        else:
            found = self.policies.get(("service", ctx.service or ""))
        return found or self._default

    # -- the API ---------------------------------------------------------------------------
    async def open(self, ctx: RequestInfo, *, reason: str, trigger: Trigger,
                   conversation: list[Any], score: float | None = None,
                   conversation_id: str | None = None,
                   policy: EscalationPolicy | None = None,
                   caller: str | None = None) -> Ticket:
        """Open a ticket for the request's conversation and notify the webhook (in the
        background); `notice(ticket)` is what the user should be told. `caller` (see
        `caller_of`) owns the ticket; by default the request's key. A conversation that
        already waits for a reviewer keeps its ticket (no second ticket, no second webhook)."""
        policy = policy or self._policy_of(ctx)
        if conversation_id is not None:
            waiting = await asyncio.to_thread(store.waiting_ticket, self.engine,
                                              tenant_id=ctx.tenant_id,
                                              conversation_id=conversation_id)
            if waiting is not None:
                return waiting
        cfg = policy.config
        stored = policy.clean(conversation) if cfg.clean_pii else conversation
        kind: Kind = "model" if ctx.model_alias else "service"
        ticket = await asyncio.to_thread(
            store.create_ticket, self.engine, tenant_id=ctx.tenant_id,
            key_id=caller or ctx.key_id,
            conversation_id=conversation_id, request_id=ctx.request_id,
            trace_id=ctx.trace_id, kind=kind,
            service=ctx.model_alias or ctx.service or policy.name, trigger=trigger,
            reason=reason[:2000], score=score, conversation=stored,
            pii_cleaned=cfg.clean_pii, sla_s=cfg.sla_s)
        if conversation_id is not None:
            await self.failures.reset(ctx.tenant_id, conversation_id)
        log.info("escalation %s opened (%s) for %s", ticket.id, trigger, ticket.service)
        if self.on_open is not None:
            self.on_open(ticket)
        queued = self.notify(ticket, "escalation.opened", policy)
        if queued is not None:
            await asyncio.shield(queued)  # in the store before the caller hears of the ticket
        return ticket

    @staticmethod
    def endpoint_of(kind: str, name: str) -> str:
        """The outbox endpoint of an alias's or service's escalation webhook."""
        return f"{'models' if kind == 'model' else 'services'}.{name}.escalation"

    def notify(self, ticket: Ticket, event: str,
               policy: EscalationPolicy | None = None) -> asyncio.Task[WorkItem | None] | None:
        """Queue `event` for the webhook of `ticket`'s alias or service, if it has one; the
        returned task finishes once the delivery is in the store (the outbox's worker sends
        it). A second notification of the same ticket and event is not queued again."""
        policy = policy or self.policies.get((ticket.kind, ticket.service))
        if policy is None or policy.config.webhook_url is None or self.outbox is None:
            return None
        endpoint = self.endpoint_of(policy.kind, policy.name)
        if endpoint not in self.outbox.endpoints:
            return None
        outbox = self.outbox

        def send() -> WorkItem | None:
            try:
                return outbox.send(endpoint, event, event_data(event, _jsonable(ticket.public())),
                                   tenant_id=ticket.tenant_id,
                                   idempotency_key=f"{ticket.id}:{event}",
                                   headers={"x-shipyard-event": event},
                                   meta={"escalation_id": ticket.id, "event": event})
            except Exception as exc:  # the store failed: say so; the ticket stands
                log.warning("escalation %s: queueing the %s webhook failed (%s)", ticket.id,
                            event, type(exc).__name__)
                return None

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(send))
        self._queued.add(task)
        task.add_done_callback(self._queued.discard)
        return task

    def notice(self, ticket: Ticket) -> str:
        """The polite message for the user, from the policy's `message`."""
        policy = self.policies.get((ticket.kind, ticket.service)) or self._default
        return policy.config.message.format(id=ticket.id)  # validated at config load

    @staticmethod
    def field(ticket: Ticket, **extra: Any) -> dict[str, Any]:
        """The machine-readable `shipyard.escalation` field of an answer."""
        return {"id": ticket.id, "status": ticket.status, "trigger": ticket.trigger,
                "poll_url": f"/v1/escalations/{ticket.id}", **extra}

    def chat_response(self, ticket: Ticket, *, model: str) -> dict[str, Any]:
        """The graceful chat answer for an escalated request."""
        return chat_answer(self.notice(ticket), model=model, escalation=self.field(ticket))

    def service_response(self, ticket: Ticket, *, service: str,
                         result_id: str) -> dict[str, Any]:
        """The graceful service result for an escalated request."""
        return service_answer(self.notice(ticket), service=service, result_id=result_id,
                              escalation=self.field(ticket))

    async def record_failure(self, ctx: RequestInfo, policy: EscalationPolicy,
                             conversation_id: str) -> bool:
        """Count a failed, blocked or errored request; True when it is the one that reaches
        the policy's `max_failures` within `failure_window_s`."""
        cfg = policy.config
        if not cfg.enabled or cfg.max_failures is None:
            return False
        count = await self.failures.add(ctx.tenant_id, conversation_id, cfg.failure_window_s)
        return count >= cfg.max_failures

    async def take_answer(self, tenant_id: str, conversation_id: str) -> Ticket | None:
        """A reviewer's answer waiting for this conversation (each is delivered once).

        Once the background checker has loaded the set of conversations with answers waiting
        (refreshed every second), a conversation outside it costs a set lookup, not a query.
        """
        key = (tenant_id, conversation_id)
        if self._pending is not None and key not in self._pending:
            return None
        ticket = await asyncio.to_thread(store.take_answer, self.engine, tenant_id=tenant_id,
                                         conversation_id=conversation_id)
        if ticket is None and self._pending is not None:
            self._pending.discard(key)
        return ticket

    def note_answer(self, ticket: Ticket) -> None:
        """A reviewer answered through this process: deliver it without waiting for a refresh."""
        if self._pending is not None and ticket.conversation_id is not None:
            self._pending.add((ticket.tenant_id, ticket.conversation_id))

    async def mark_delivered(self, ticket: Ticket) -> None:
        """The caller polled the answer: the conversation will not get it a second time."""
        if ticket.answer is not None and ticket.delivered_at is None:
            await asyncio.to_thread(store.mark_delivered, self.engine, ticket.id)

    async def refresh_pending(self) -> None:
        """Reload the conversations that have a reviewer's answer waiting."""
        if any(p.config.deliver_answer for p in self.enabled):
            self._pending = await asyncio.to_thread(store.pending_answers, self.engine)

    async def check_overdue(self) -> int:
        """Send one `escalation.overdue` event per ticket past its SLA; returns how many."""
        sent = 0
        for ticket in await asyncio.to_thread(store.overdue_unnotified, self.engine):
            if await asyncio.to_thread(store.mark_overdue_notified, self.engine, ticket.id):
                log.warning("escalation %s is overdue (due %s)", ticket.id,
                            ticket.due_at.isoformat())
                self.notify(ticket, "escalation.overdue")
                sent += 1
        return sent

    def check_interval_s(self) -> float:
        """How often the checker looks: every second (waiting answers), or more often for a
        short SLA (a quarter of the shortest, at least 0.2 s)."""
        slas = [p.config.sla_s for p in self.enabled] or [120.0]
        return max(0.2, min(1.0, min(slas) / 4))

    async def close(self) -> None:
        """Let notifications being queued reach the store."""
        if self._queued:
            await asyncio.wait(set(self._queued), timeout=5.0)


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v)
            for k, v in value.items()}


class OverdueChecker:
    """Background task that sends the overdue alerts (and reloads which conversations have an
    answer waiting); `start()` and `stop()` with the gateway.

    Every replica may run one: each alert is claimed with a conditional UPDATE first, so it is
    sent once in total.
    """

    def __init__(self, escalations: Escalations, *, interval_s: float | None = None) -> None:
        self.escalations = escalations
        self.interval_s = interval_s or escalations.check_interval_s()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.escalations.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.escalations.refresh_pending()
                await self.escalations.check_overdue()
            except ShipyardError as exc:
                log.warning("overdue check failed: %s", exc.message)
            except Exception as exc:  # the store may be down; try again next round
                log.warning("overdue check failed: %s", type(exc).__name__)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.escalations.close()
