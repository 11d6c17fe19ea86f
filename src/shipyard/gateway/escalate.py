"""Escalation on the request path of chat routes and services (see `shipyard.escalation`).

Each hook returns the response to send instead of the usual one, or None to carry on:

- `before`: a reviewer's answer waiting for this conversation is delivered as the answer
  (once); a user asking for a person opens a ticket and gets the polite notice;
- `after`: an answer whose confidence (the `x-shipyard-confidence` header, or the
  `confidence_field` of its JSON) is below `min_confidence` is replaced by the notice;
- `failed`: the `max_failures`-th failed, blocked or errored request of a conversation gets the
  notice instead of the error.

The upstream is not called when `before` answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shipyard.errors import InvalidRequest, ShipyardError
from shipyard.escalation import EscalationPolicy, Ticket, Trigger, caller_of, read_confidence
from shipyard.escalation.answers import chat_answer, chat_answer_stream, service_answer
from shipyard.escalation.triggers import last_user_text
from shipyard.gateway.auth import Principal
from shipyard.gateway.http import json_response
from shipyard.gateway.pii import CONVERSATION_HEADER
from shipyard.gateway.runtime import Gateway
from shipyard.pipeline import Reply, RequestContext

__all__ = ["ChatEscalation", "ServiceEscalation", "conversation_of"]

log = logging.getLogger("shipyard.gateway")
_CONVERSATION = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
CONFIDENCE_HEADER = "x-shipyard-confidence"


def conversation_of(request: Request) -> str | None:
    """The `x-shipyard-conversation` header, checked."""
    value = request.headers.get(CONVERSATION_HEADER)
    if value is not None and not _CONVERSATION.match(value):
        raise InvalidRequest(
            f"Header '{CONVERSATION_HEADER}' is {value[:40]!r}; use 1 to 128 letters, digits "
            "and . _ : - (a conversation id you choose).", param=CONVERSATION_HEADER,
            code="invalid_conversation")
    return value


def _counts_as_failure(exc: ShipyardError) -> bool:
    """Errored (5xx) or blocked (a guard or PII policy refused it) — not a caller's typo."""
    code = exc.code or ""
    return exc.status >= 500 or code.endswith(("_detected", "_blocked", "blocked"))


class _Hooks:
    def __init__(self, gw: Gateway, ctx: RequestContext, policy: EscalationPolicy,
                 conversation_id: str | None, principal: Principal) -> None:
        self.gw = gw
        self.ctx = ctx
        self.policy = policy
        self.conversation_id = conversation_id
        self.caller = caller_of(principal)

    async def _open(self, trigger: Trigger, reason: str, conversation: list[Any],
                    score: float | None = None) -> Ticket | None:
        """The new (or the conversation's waiting) ticket; None when it cannot be stored, and
        the request then goes on as if nothing had triggered: a user is never told a person
        will follow up when no ticket exists."""
        try:
            ticket = await self.gw.escalations.open(
                self.ctx, reason=reason, trigger=trigger, conversation=conversation,
                score=score, conversation_id=self.conversation_id, policy=self.policy,
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
        self.ctx.status = 200

    async def _waiting_answer(self) -> Ticket | None:
        if not (self.policy.config.deliver_answer and self.conversation_id):
            return None
        try:
            ticket = await self.gw.escalations.take_answer(self.ctx.tenant_id,
                                                           self.conversation_id)
        except Exception as exc:  # the store is down: the answer waits for the next request
            log.error("reading waiting answers failed: %s", type(exc).__name__)
            return None
        if ticket is not None:
            self._note(ticket, "delivered")
        return ticket

    async def _failure(self, exc: ShipyardError, conversation: list[Any]) -> Ticket | None:
        if self.conversation_id is None or not _counts_as_failure(exc):
            return None
        if not await self.gw.escalations.record_failure(self.ctx, self.policy,
                                                        self.conversation_id):
            return None
        reason = (f"{self.policy.config.max_failures} failed requests in "
                  f"{self.policy.config.failure_window_s:g}s; last: {type(exc).__name__} "
                  f"({exc.status})")
        return await self._open("repeated_failures", reason, conversation)


class ChatEscalation(_Hooks):
    """Escalation hooks of one chat completion request."""

    def __init__(self, gw: Gateway, ctx: RequestContext, policy: EscalationPolicy,
                 conversation_id: str | None, principal: Principal, body: dict[str, Any], *,
                 stream: bool, include_usage: bool) -> None:
        super().__init__(gw, ctx, policy, conversation_id, principal)
        self.body = body
        self.stream = stream
        self.include_usage = include_usage
        messages = body.get("messages")
        self.messages: list[Any] = list(messages) if isinstance(messages, list) else []

    def _respond(self, text: str, escalation: dict[str, Any]) -> Response:
        model = str(self.body.get("model", ""))
        headers = {**self.gw.headers(self.ctx), "x-shipyard-escalation": escalation["id"]}
        if self.stream:
            source: AsyncIterator[bytes] = chat_answer_stream(
                text, model=model, escalation=escalation, include_usage=self.include_usage)
            return StreamingResponse(source, media_type="text/event-stream",
                                     headers={**_SSE_HEADERS, **headers})
        data = chat_answer(text, model=model, escalation=escalation)
        body = orjson.dumps(data)
        self.ctx.response_bytes = len(body)
        return json_response(None, body=body, headers=headers)

    def _notice(self, ticket: Ticket) -> Response:
        esc = self.gw.escalations
        return self._respond(esc.notice(ticket), esc.field(ticket))

    async def before(self) -> Response | None:
        waiting = await self._waiting_answer()
        if waiting is not None and waiting.answer is not None:
            return self._respond(waiting.answer, self.gw.escalations.field(
                waiting, delivered=True))
        text = last_user_text(self.messages)
        if self.policy.asks_for_person(text):
            ticket = await self._open("user_request", "The user asked for a person.",
                                      self.messages)
            return None if ticket is None else self._notice(ticket)
        return None

    async def after(self, reply: Reply) -> Response | None:
        """Check the answer's confidence; on a low score, close the upstream's stream and
        answer with the notice."""
        if self.policy.config.min_confidence is None:
            return None
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
            score = read_confidence(data, self.policy.config.confidence_field)
        if not self.policy.low_confidence(score):
            return None
        if reply.stream is not None:
            close = getattr(reply.stream, "aclose", None)
            if close is not None:
                await close()
        answer = _answer_text(data)
        conversation = [*self.messages, *([{"role": "assistant", "content": answer}]
                                          if answer is not None else [])]
        ticket = await self._open(
            "low_confidence", f"Confidence {score:g} is below "
            f"{self.policy.config.min_confidence:g} ({self.policy.where}.min_confidence).",
            conversation, score)
        return None if ticket is None else self._notice(ticket)

    async def failed(self, exc: ShipyardError) -> Response | None:
        ticket = await self._failure(exc, self.messages)
        return None if ticket is None else self._notice(ticket)


class ServiceEscalation(_Hooks):
    """Escalation hooks of one service invocation; the input's strings are checked for a
    request for a person."""

    def __init__(self, gw: Gateway, ctx: RequestContext, policy: EscalationPolicy,
                 conversation_id: str | None, principal: Principal, name: str) -> None:
        super().__init__(gw, ctx, policy, conversation_id, principal)
        self.name = name
        self.input: Any = None

    def _respond(self, text: str, escalation: dict[str, Any]) -> Response:
        data = service_answer(text, service=self.name, result_id=self.ctx.trace_id,
                              escalation=escalation)
        body = orjson.dumps(data)
        self.ctx.response_bytes = len(body)
        return json_response(None, body=body, headers={
            **self.gw.headers(self.ctx), "x-shipyard-escalation": escalation["id"]})

    def _notice(self, ticket: Ticket) -> Response:
        esc = self.gw.escalations
        return self._respond(esc.notice(ticket), esc.field(ticket))

    def _conversation(self, output: Any = None) -> list[Any]:
        out: list[Any] = [{"role": "user", "content": self.input}]
        if output is not None:
            out.append({"role": "assistant", "content": output})
        return out

    async def before(self, body: Any) -> Response | None:
        self.input = body
        waiting = await self._waiting_answer()
        if waiting is not None and waiting.answer is not None:
            return self._respond(waiting.answer, self.gw.escalations.field(
                waiting, delivered=True))
        if any(self.policy.asks_for_person(text) for text in _strings(body)):
            ticket = await self._open("user_request", "The user asked for a person.",
                                      self._conversation())
            return None if ticket is None else self._notice(ticket)
        return None

    async def after(self, output: Any) -> Response | None:
        if self.policy.config.min_confidence is None:
            return None
        score = read_confidence(output, self.policy.config.confidence_field)
        if not self.policy.low_confidence(score):
            return None
        ticket = await self._open(
            "low_confidence", f"Confidence {score:g} is below "
            f"{self.policy.config.min_confidence:g} ({self.policy.where}.min_confidence).",
            self._conversation(output), score)
        return None if ticket is None else self._notice(ticket)

    async def failed(self, exc: ShipyardError) -> Response | None:
        ticket = await self._failure(exc, self._conversation())
        return None if ticket is None else self._notice(ticket)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _answer_text(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None
