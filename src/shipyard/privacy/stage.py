"""The PII stage: personal data protection for every target (`pii:` of a model or service).

Before the target: the request is cleaned (chat messages, prompts and embedding inputs of a
model; every string of a service's input) — the target sees typed placeholders such as
`<EMAIL_1>` in `redact` and `pseudonymize` modes, or the request is refused in `block` mode.
After it: PII the target produced itself becomes `<ENTITY>`, and in `pseudonymize` mode the
caller's own values are restored — in streams too, where a placeholder may be split across
chunks. The trace keeps what was cleaned, never the caller's values (`apply_to: [traces]`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.pipeline import Call, Handler, Reply, Stage
from shipyard.pipeline.sse import DONE, data_of, events
from shipyard.privacy.policy import PIIPolicy, PIISession

__all__ = ["PIIStage"]


class PIIStage(Stage):
    """Clean the request, check and restore the answer, per the target's `PIIPolicy`."""

    def __init__(self, policy: PIIPolicy) -> None:
        self.policy = policy

    async def __call__(self, call: Call, call_next: Handler) -> Reply:
        policy = self.policy
        session = await policy.open(call.ctx, call.conversation_id)
        try:
            service = call.endpoint == "invoke"
            cleaned = (session.clean_json(call.payload) if service
                       else session.clean_chat(call.payload))
            if policy.clean_request:
                call.payload = cleaned
            if policy.clean_traces:
                call.ctx.request_payload = cleaned
                if not policy.clean_request:
                    call.traced_payload = cleaned
            reply = await call_next(call)
        except BaseException:
            await session.close()
            raise
        if reply.stream is not None:
            reply.stream = self._stream(reply.stream, session, call)
            return reply
        try:
            if reply.status < 400 and call.endpoint != "embeddings":
                self._answer(reply, session, service)
        finally:
            await session.close()
        return reply

    def _answer(self, reply: Reply, session: PIISession, service: bool) -> None:
        if service:
            if reply.body:  # a complete envelope (a guard's or a person's answer): as it is
                return
            traced, given = session.answer_json(reply.data)
        else:
            parsed = reply.data if reply.data is not None else _parse(reply.body)
            if not isinstance(parsed, dict):
                return
            traced, given = session.answer_chat(parsed)
            reply.body = orjson.dumps(given)
        reply.data = given
        reply.traced = traced if self.policy.clean_traces else given

    async def _stream(self, source: AsyncIterator[bytes], session: PIISession,
                      call: Call) -> AsyncIterator[bytes]:
        rewriter = session.stream()
        try:
            async for event in events(source):
                data = data_of(event)
                if data == b"[DONE]":
                    for held in rewriter.finish():
                        yield b"data: " + orjson.dumps(held) + b"\n\n"
                    yield DONE
                    continue
                parsed = _parse(data) if data is not None else None
                if not isinstance(parsed, dict) or parsed.get("error"):
                    yield event
                    continue
                yield b"data: " + orjson.dumps(rewriter.event(parsed)) + b"\n\n"
        finally:
            if self.policy.clean_traces and call.ctx.capture == "full":
                call.ctx.response_body = rewriter.trace_text()
            await session.close()


def _parse(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
