"""The guard stage of a model alias or hosted service: input guards before the target, output
guards after.

Attached by `shipyard.targets.build` only when the target configures guards, so a target
without guards pays nothing.

- Models: a block or escalate answers in the normal chat shape (see `shipyard.guards.answers`);
  a fix rewrites the last user message (input) or the answer (output). An output guard that
  blocks with feedback (`json_schema`) gets the model re-asked with that feedback up to its
  `retries`, then the request fails with a clear 502.
- Services: the subject is every string of the JSON input or output, one per line; a fix is
  applied to each string separately, so the JSON shape never changes; a block or escalate
  answers `{"output": null, "blocked": true, "message": ...}` with HTTP 200. Grounding context
  for output guards is the `context` a function returned with `shipyard.Result`, else the
  input's `context` (or `documents`, `sources`) field.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from shipyard.config.trust import GuardsConfig
from shipyard.errors import InvalidRequest, UpstreamError
from shipyard.guards.answers import (
    Escalation,
    GuardHooks,
    blocked_chunks,
    blocked_completion,
    guard_metadata,
)
from shipyard.guards.base import Subject, text_of
from shipyard.guards.runner import GuardList, Outcome
from shipyard.guards.streaming import guard_stream
from shipyard.pipeline import Call, Handler, Reply, Stage

__all__ = ["GuardStage", "chat_subject", "strings_of"]

log = logging.getLogger("shipyard.guards")
_CONTEXT_KEYS = ("context", "documents", "sources")


def strings_of(value: Any, out: list[str] | None = None) -> list[str]:
    """Every string inside a JSON value, depth first."""
    out = [] if out is None else out
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            strings_of(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            strings_of(item, out)
    return out


def _context_of(data: Any) -> list[str]:
    if isinstance(data, dict):
        for key in _CONTEXT_KEYS:
            if key in data:
                return strings_of(data[key])
    return []


def chat_subject(payload: dict[str, Any], stage: str, target: str) -> Subject:
    """The subject of a chat (or legacy completion) request: its last user message."""
    messages = payload.get("messages")
    msgs: list[dict[str, Any]] = [m for m in messages if isinstance(m, dict)] if isinstance(
        messages, list) else []
    text = ""
    system: str | None = None
    for message in msgs:
        if message.get("role") in ("system", "developer") and system is None:
            system = text_of(message.get("content"))
    for message in reversed(msgs):
        if message.get("role") == "user":
            text = text_of(message.get("content"))
            break
    if not msgs:
        prompt = payload.get("prompt")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
    return Subject(text, stage, target, msgs, [], system, payload)  # type: ignore[arg-type]


def _with_user_text(payload: dict[str, Any], text: str) -> dict[str, Any]:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return {**payload, "prompt": text}
    copied = list(messages)
    for i in range(len(copied) - 1, -1, -1):
        message = copied[i]
        if isinstance(message, dict) and message.get("role") == "user":
            copied[i] = {**message, "content": text}
            break
    return {**payload, "messages": copied}


def _choices(payload: dict[str, Any], legacy: bool) -> int:
    n = payload.get("n")
    count = n if isinstance(n, int) and n > 1 else 1
    prompt = payload.get("prompt")
    if legacy and isinstance(prompt, list):
        count *= max(1, len(prompt))
    return count


def _has_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt)


class GuardStage(Stage):
    """Run a target's input and output guards around the rest of the pipeline."""

    def __init__(self, alias: str, config: GuardsConfig, inputs: GuardList,
                 outputs: GuardList, hooks: GuardHooks) -> None:
        self.alias = alias  # the model alias or service name
        self.config = config
        self.inputs = inputs
        self.outputs = outputs
        self.stream_outputs = outputs.streamable()
        self.hooks = hooks

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        reply = await self._guarded(call, call_next)
        # A guard that timed out (and failed open or closed) is never silent: the caller sees
        # which ones in a header, the trace records them (`guards_timed_out`).
        timed_out = (call.ctx.attributes or {}).get("guards_timed_out")
        if timed_out:
            reply.headers["x-shipyard-guard-timeout"] = ",".join(dict.fromkeys(timed_out))
        return reply

    async def _guarded(self, call: Call, call_next: Handler) -> Reply:
        if call.endpoint == "embeddings":
            return await call_next(call)
        if call.endpoint == "invoke":
            return await self._service(call, call_next)
        ctx = call.ctx
        trace = _trace(ctx)
        legacy = call.endpoint == "completions"
        if self.inputs:
            if legacy and _has_token_ids(call.payload.get("prompt")):
                raise InvalidRequest(
                    f"Parameter 'prompt' holds token ids, which the input guards of model "
                    f"'{self.alias}' cannot read; send the prompt as text.", param="prompt",
                    code="token_ids_not_guarded")
            subject = chat_subject(call.payload, "input", self.alias)
            outcome = await self.inputs.run(subject, trace)
            if outcome.stops:
                return await self._refuse(call, outcome, subject, legacy)
            if outcome.action == "fix" and outcome.text is not None:
                prompt = call.payload.get("prompt")
                if legacy and isinstance(prompt, list):
                    call.payload = {**call.payload,
                                    "prompt": await self._fix_prompts(prompt, subject)}
                else:
                    call.payload = _with_user_text(call.payload, outcome.text)
                _fixed(call)
        if call.stream and self.stream_outputs and _choices(call.payload, legacy) > 1:
            raise InvalidRequest(
                f"Model '{self.alias}' checks streamed answers a sentence at a time, one answer "
                "per stream; this request asks for several (n > 1 or several prompts). Set "
                "'n' to 1 and send one prompt, or set 'stream' to false.", param="stream",
                code="stream_several_choices_not_guarded")
        reply = await call_next(call)
        if not self.outputs or reply.status >= 400:
            return reply
        if reply.stream is not None:
            subject = chat_subject(call.payload, "output", self.alias)
            reply.stream = guard_stream(
                reply.stream, guards=self.stream_outputs, subject=subject,
                window=self.config.stream_window, trace=trace, legacy=legacy,
                stop=lambda outcome: self._stop_message(call, outcome, subject))
            return reply
        return await self._check_answer(call, call_next, reply, trace, legacy)

    async def _service(self, call: Call, call_next: Handler) -> Reply:
        ctx = call.ctx
        trace = _trace(ctx)
        request = call.payload if isinstance(call.payload, dict) else None
        if self.inputs:
            subject = Subject("\n".join(strings_of(call.payload)), "input", self.alias,
                              context=_context_of(call.payload), request=request)
            outcome = await self.inputs.run(subject, trace)
            if outcome.stops:
                return await self._refuse_service(call, outcome, subject)
            if outcome.action == "fix":
                call.payload = await self._fix_value(self.inputs, subject, call.payload)
                _fixed(call)
        reply = await call_next(call)
        if not self.outputs or reply.status >= 400 or reply.body:
            return reply
        context = reply.context if reply.context is not None else _context_of(call.payload)
        subject = Subject("\n".join(strings_of(reply.data)), "output", self.alias,
                          context=list(context), request=request)
        outcome = await self.outputs.run(subject, trace)
        if outcome.stops:
            return await self._refuse_service(call, outcome, subject)
        if outcome.action == "fix":
            reply.data = await self._fix_value(self.outputs, subject, reply.data)
        return reply

    async def _fix_value(self, guards: GuardList, subject: Subject, value: Any) -> Any:
        """Each string of a JSON value fixed on its own (not traced or counted again)."""
        quiet = GuardList(guards.slots, guards.stage, target=guards.target)
        if isinstance(value, str):
            outcome = await quiet.run(subject.with_text(value))
            return outcome.text if outcome.action == "fix" and outcome.text is not None else value
        if isinstance(value, dict):
            return {k: await self._fix_value(guards, subject, v) for k, v in value.items()}
        if isinstance(value, list):
            return [await self._fix_value(guards, subject, v) for v in value]
        return value

    async def _refuse_service(self, call: Call, outcome: Outcome, subject: Subject) -> Reply:
        """A blocked or escalated invocation: HTTP 200, `output: null`, the polite message."""
        message, meta = await self._stop_message(call, outcome, subject)
        body = {"id": call.ctx.trace_id, "object": "service.result", "service": self.alias,
                "output": None, "blocked": True, "message": message, "shipyard": meta}
        return Reply(body=orjson.dumps(body), data=body, headers={
            "x-shipyard-guard": f"{outcome.action}:{outcome.guard}"})

    async def _fix_prompts(self, prompts: list[Any], subject: Subject) -> list[Any]:
        """A batch of legacy prompts stays a batch (one answer each): each string is fixed
        on its own. Not traced or counted a second time."""
        quiet = GuardList(self.inputs.slots, "input", target=self.alias)
        fixed: list[Any] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                outcome = await quiet.run(subject.with_text(prompt))
                if outcome.action == "fix" and outcome.text is not None:
                    prompt = outcome.text
            fixed.append(prompt)
        return fixed

    async def _check_answer(self, call: Call, call_next: Handler, reply: Reply,
                            trace: dict[str, Any], legacy: bool) -> Reply:
        attempts = 0
        while True:
            data = reply.data if reply.data is not None else _parse(reply.body)
            if data is None:
                return reply  # not JSON: the route reports the upstream's malformed answer
            choices = data.get("choices")
            if not isinstance(choices, list):
                return reply
            subject = chat_subject(call.payload, "output", self.alias)
            changed = False
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                message = choice.get("message")
                text = text_of(message.get("content")) if isinstance(message, dict) else (
                    str(choice.get("text") or ""))
                outcome = await self.outputs.run(subject.with_text(text), trace)
                if outcome.stops:
                    feedback = outcome.verdict.metadata.get("reask") if outcome.verdict else None
                    retries = outcome.slot.retries if outcome.slot else 0
                    if feedback and outcome.action == "block":
                        if attempts < retries:
                            attempts += 1
                            call.payload = _reask(call.payload, text, str(feedback), legacy)
                            reply = await call_next(call)
                            break
                        raise UpstreamError(
                            f"The answer of model '{self.alias}' failed guard "
                            f"'{outcome.guard}' after {attempts + 1} attempt(s): {feedback}",
                            upstream_status=200, code="guard_output_invalid")
                    return await self._refuse(call, outcome, subject, legacy)
                if outcome.action == "fix" and outcome.text is not None:
                    changed = True
                    if isinstance(message, dict):
                        choice["message"] = {**message, "content": outcome.text}
                    else:
                        choice["text"] = outcome.text
            else:
                if changed:
                    reply.data = data
                    reply.body = orjson.dumps(data)
                elif reply.data is None:
                    reply.data = data
                if attempts:
                    trace["guard_reasks"] = attempts
                return reply

    async def _stop_message(self, call: Call, outcome: Outcome,
                            subject: Subject) -> tuple[str, dict[str, Any]]:
        ctx = call.ctx
        meta = guard_metadata(subject.stage, outcome.guard, outcome.verdict, outcome.action,
                              ctx.trace_id)
        message = self.config.blocked_message
        if outcome.action == "escalate":
            message = self.config.escalated_message
            extra = await self._escalate(call, outcome, subject)
            if extra:
                message = str(extra.pop("message", message))
                meta["escalation"] = extra
        ctx.finish_reason = "content_filter"
        _trace(ctx)["sent"] = message  # the configured answer, never the user's text
        return message, meta

    async def _refuse(self, call: Call, outcome: Outcome, subject: Subject,
                      legacy: bool) -> Reply:
        message, meta = await self._stop_message(call, outcome, subject)
        headers = {"x-shipyard-guard": f"{outcome.action}:{outcome.guard}"}
        if call.stream:
            return Reply(stream=blocked_chunks(call.payload, message, meta, legacy=legacy),
                         headers=headers)
        data = blocked_completion(call.payload, message, meta, legacy=legacy)
        return Reply(body=orjson.dumps(data), data=data, headers=headers)

    async def _escalate(self, call: Call, outcome: Outcome,
                        subject: Subject) -> dict[str, Any] | None:
        hook = self.hooks.on_escalate
        # A shadow copy (a candidate version's answer nobody sees) never reaches a person.
        if hook is None or outcome.verdict is None or call.ctx.route == "shadow":
            return None
        ctx = call.ctx
        try:
            return await hook(Escalation(
                self.alias, subject.stage, outcome.guard, outcome.verdict, subject.messages,
                subject.text, ctx.trace_id, ctx.request_id, ctx.tenant_id, call.principal,
                call.conversation_id))
        except Exception:  # the caller still gets the escalated message, never a 500
            log.exception("escalation hook failed for request %s", ctx.request_id)
            return None


def _fixed(call: Call) -> None:
    """The payload changed: the trace keeps the fixed request."""
    call.traced_payload = None
    call.ctx.request_payload = call.payload


def _trace(ctx: Any) -> dict[str, Any]:
    if ctx.attributes is None:
        ctx.attributes = {}
    attributes: dict[str, Any] = ctx.attributes
    return attributes


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _reask(payload: dict[str, Any], answer: str, feedback: str, legacy: bool) -> dict[str, Any]:
    note = (f"Your previous answer was rejected: {feedback} Answer again, following the "
            "required format exactly, with nothing else.")
    if legacy:
        return {**payload, "prompt": f"{payload.get('prompt', '')}\n{answer}\n{note}"}
    messages = list(payload.get("messages") or [])
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": note}]
    return {**payload, "messages": messages}
