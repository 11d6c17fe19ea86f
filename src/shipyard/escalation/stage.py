"""Escalation on the request path of every target: a stage, and the guards' escalation hook.

The stage (on chat completions and service invocations, when `escalation.enabled`) answers
instead of the target when

- `before`: a reviewer's answer waits for this conversation (delivered once), or the user
  asks for a person (a ticket opens and the user gets the polite notice; the target is not
  called);
- `after`: the answer's confidence (the `x-shipyard-confidence` header, or the
  `confidence_field` of its JSON) is below `min_confidence`;
- `failed`: the `max_failures`-th failed, blocked or errored request of a conversation gets
  the notice instead of the error.

A guard's `escalate` verdict opens a ticket through `guard_hook` (`GuardHooks.on_escalate`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson

from shipyard.config.schema import Config
from shipyard.errors import ShipyardError
from shipyard.escalation.answers import chat_answer, chat_answer_stream, service_answer
from shipyard.escalation.service import (
    EscalationPolicy,
    Escalations,
    Trigger,
    caller_of,
)
from shipyard.escalation.store import Ticket
from shipyard.escalation.triggers import last_user_text, read_confidence
from shipyard.guards.answers import Escalation as GuardEscalation
from shipyard.guards.answers import EscalationHook
from shipyard.guards.stage import strings_of
from shipyard.pipeline import Call, Handler, Reply, Stage

__all__ = ["CONFIDENCE_HEADER", "EscalationStage", "guard_hook"]

log = logging.getLogger("shipyard.escalation")
CONFIDENCE_HEADER = "x-shipyard-confidence"


def _counts_as_failure(exc: ShipyardError) -> bool:
    """Errored (5xx) or blocked (a guard or PII policy refused it) — not a caller's typo."""
    code = exc.code or ""
    return exc.status >= 500 or code.endswith(("_detected", "_blocked", "blocked"))


class EscalationStage(Stage):
    """Hand a conversation to a person when the target's escalation policy says so."""

    def __init__(self, escalations: Escalations, policy: EscalationPolicy) -> None:
        self.escalations = escalations
        self.policy = policy

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        # A shadow copy (a candidate version's answer nobody sees) never reaches a person.
        if call.endpoint not in ("chat/completions", "invoke") or call.ctx.route == "shadow":
            return await call_next(call)
        hooks = _Hooks(self.escalations, self.policy, call)
        early = await hooks.before()
        if early is not None:
            return early
        try:
            reply = await call_next(call)
        except ShipyardError as exc:
            handed_over = await hooks.failed(exc)
            if handed_over is None:
                raise
            return handed_over
        handed_over = await hooks.after(reply)
        return reply if handed_over is None else handed_over


class _Hooks:
    """Escalation of one request (chat or service)."""

    def __init__(self, escalations: Escalations, policy: EscalationPolicy, call: Call) -> None:
        self.esc = escalations
        self.policy = policy
        self.call = call
        self.ctx = call.ctx
        self.service = call.endpoint == "invoke"
        self.caller = caller_of(call.principal) if call.principal is not None else None
        payload = call.payload
        messages = payload.get("messages") if isinstance(payload, dict) else None
        self.messages: list[Any] = list(messages) if isinstance(messages, list) else []
        self.input = payload

    # -- answers ----------------------------------------------------------------------------

    def _respond(self, text: str, escalation: dict[str, Any]) -> Reply:
        headers = {"x-shipyard-escalation": escalation["id"]}
        if self.service:
            data = service_answer(text, service=self.call.target.name,
                                  result_id=self.ctx.trace_id, escalation=escalation)
            return Reply(body=orjson.dumps(data), data=data, headers=headers)
        model = str(self.call.payload.get("model", ""))
        if self.call.stream:
            return Reply(stream=chat_answer_stream(
                text, model=model, escalation=escalation,
                include_usage=self.call.client_wants_usage), headers=headers)
        answer = chat_answer(text, model=model, escalation=escalation)
        return Reply(body=orjson.dumps(answer), data=answer, headers=headers)

    def _notice(self, ticket: Ticket) -> Reply:
        notice = self.esc.notice(ticket)
        attributes = self.ctx.attributes if self.ctx.attributes is not None else {}
        attributes["sent"] = notice  # the configured notice (a reviewer's answer is not kept)
        self.ctx.attributes = attributes
        return self._respond(notice, self.esc.field(ticket))

    def _conversation(self, output: Any = None) -> list[Any]:
        if not self.service:
            extra = [{"role": "assistant", "content": output}] if output is not None else []
            return [*self.messages, *extra]
        out: list[Any] = [{"role": "user", "content": self.input}]
        if output is not None:
            out.append({"role": "assistant", "content": output})
        return out

    def _asks_for_person(self) -> bool:
        if self.service:
            return any(self.policy.asks_for_person(text) for text in strings_of(self.input))
        return self.policy.asks_for_person(last_user_text(self.messages))

    # -- tickets ----------------------------------------------------------------------------

    async def _open(self, trigger: Trigger, reason: str, conversation: list[Any],
                    score: float | None = None) -> Ticket | None:
        """The new (or the conversation's waiting) ticket; None when it cannot be stored, and
        the request then goes on as if nothing had triggered: a user is never told a person
        will follow up when no ticket exists."""
        try:
            ticket = await self.esc.open(
                self.ctx, reason=reason, trigger=trigger, conversation=conversation,
                score=score, conversation_id=self.call.conversation_id, policy=self.policy,
                caller=self.caller)
        except Exception as exc:  # the store is down: answer as usual, loudly
            log.error("escalation (%s) of request %s could not be stored: %s", trigger,
                      self.ctx.request_id, type(exc).__name__)
            return None
        self._note(ticket, trigger)
        return ticket

    def _note(self, ticket: Ticket, trigger: str) -> None:
        attributes = self.ctx.attributes if self.ctx.attributes is not None else {}
        attributes["escalation"] = {"id": ticket.id, "trigger": trigger}
        self.ctx.attributes = attributes

    # -- the three moments ------------------------------------------------------------------

    async def before(self) -> Reply | None:
        conversation = self.call.conversation_id
        if self.policy.config.deliver_answer and conversation:
            try:
                waiting = await self.esc.take_answer(self.ctx.tenant_id, conversation)
            except Exception as exc:  # the store is down: the answer waits for the next time
                log.error("reading waiting answers failed: %s", type(exc).__name__)
                waiting = None
            if waiting is not None and waiting.answer is not None:
                self._note(waiting, "delivered")
                return self._respond(waiting.answer, self.esc.field(waiting, delivered=True))
        if self._asks_for_person():
            ticket = await self._open("user_request", "The user asked for a person.",
                                      self._conversation())
            return None if ticket is None else self._notice(ticket)
        return None

    async def after(self, reply: Reply) -> Reply | None:
        """Check the answer's confidence; on a low score, close the target's stream and
        answer with the notice."""
        if self.policy.config.min_confidence is None or reply.status >= 400:
            return None
        field = self.policy.config.confidence_field
        if self.service:
            if reply.body:  # already a guard's or a person's answer
                return None
            data: Any = reply.data
            score = read_confidence(data, field)
        else:
            score = read_confidence(reply.headers.get(CONFIDENCE_HEADER), "")
            data = reply.data
            if score is None and reply.stream is None:
                if data is None:
                    try:
                        data = orjson.loads(reply.body)
                    except orjson.JSONDecodeError:
                        return None
                    if isinstance(data, dict):
                        reply.data = data  # parsed once: the route reuses it
                score = read_confidence(data, field)
        if not self.policy.low_confidence(score):
            return None
        if reply.stream is not None:
            close = getattr(reply.stream, "aclose", None)
            if close is not None:
                await close()
        answer = data if self.service else _answer_text(data)
        ticket = await self._open(
            "low_confidence", f"Confidence {score:g} is below "
            f"{self.policy.config.min_confidence:g} ({self.policy.where}.min_confidence).",
            self._conversation(answer), score)
        return None if ticket is None else self._notice(ticket)

    async def failed(self, exc: ShipyardError) -> Reply | None:
        conversation = self.call.conversation_id
        if conversation is None or not _counts_as_failure(exc):
            return None
        if not await self.esc.record_failure(self.ctx, self.policy, conversation):
            return None
        reason = (f"{self.policy.config.max_failures} failed requests in "
                  f"{self.policy.config.failure_window_s:g}s; last: {type(exc).__name__} "
                  f"({exc.status})")
        ticket = await self._open("repeated_failures", reason, self._conversation())
        return None if ticket is None else self._notice(ticket)


def guard_hook(escalations: Escalations, config: Config) -> EscalationHook:
    """The guards' `on_escalate`: a guard's `escalate` verdict opens a ticket in the queue,
    owned by the caller (who may poll it) and tied to the request's conversation. The user is
    told the target's escalation message when escalation is enabled on it, else the guards'
    own `escalated_message`; the ticket id is in `shipyard.escalation`."""

    async def on_escalate(event: GuardEscalation) -> dict[str, Any] | None:
        is_model = event.target in config.models
        request = _Request(event.tenant_id, event.request_id, event.trace_id, event.target,
                           event.target if is_model else None)
        conversation = list(event.messages) or [{"role": "user", "content": event.text}]
        ticket = await escalations.open(
            request, reason=f"guard '{event.guard}' ({event.stage}): {event.verdict.reason}",
            trigger="guard", conversation=conversation, score=event.verdict.score,
            conversation_id=event.conversation_id,
            caller=caller_of(event.principal) if event.principal is not None else None)
        found: Callable[[str], EscalationPolicy | None] = (
            escalations.for_model if is_model else escalations.for_service)
        if found(event.target) is None:
            return escalations.field(ticket)
        return {"message": escalations.notice(ticket), **escalations.field(ticket)}

    return on_escalate


class _Request:
    """What `Escalations.open` needs to know of a request a guard escalated."""

    __slots__ = ("key_id", "model_alias", "request_id", "service", "tenant_id", "trace_id")

    def __init__(self, tenant_id: str, request_id: str, trace_id: str, service: str,
                 model_alias: str | None) -> None:
        self.tenant_id = tenant_id
        self.key_id: str | None = None
        self.request_id = request_id
        self.trace_id = trace_id
        self.service: str | None = service
        self.model_alias = model_alias


def _answer_text(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None
