"""Relay an upstream SSE stream to the client, event by event, learning as it goes by.

Events are forwarded as soon as they are complete (never buffered beyond one event). On the
way the relay notes time to first token, the finish reason, usage and the answer text (for
token estimation when the upstream sends no usage). A stream that fails or ends without
`data: [DONE]` ends with an explicit error event, never with a clean `[DONE]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.errors import ShipyardError, UpstreamUnavailable
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import RequestContext

__all__ = ["relay_sse"]

log = logging.getLogger("shipyard.gateway")
_DONE = b"data: [DONE]\n\n"


def error_event(exc: ShipyardError) -> bytes:
    return b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"


def _prompt_tokens(payload: dict[str, Any]) -> int:
    if "messages" in payload:
        return estimate_chat_prompt(payload.get("messages") or [])
    prompt = payload.get("prompt")
    return estimate_text(prompt if isinstance(prompt, str) else str(prompt or ""))


async def relay_sse(
    source: AsyncIterator[bytes],
    ctx: RequestContext,
    *,
    payload: dict[str, Any],
    client_wants_usage: bool,
    drop_usage_event: bool,
    keep_text: bool,
    upstream_started: float,
) -> AsyncIterator[bytes]:
    """Yield SSE bytes for the client; fills `ctx` (ttft, usage, finish reason, status).

    The answer text is kept for the trace (`keep_text`) unless a stage already set what the
    trace keeps (the PII stage keeps placeholders, not the caller's restored values)."""
    buffer = b""
    pieces: list[str] = []
    saw_done = False
    first = True
    base: dict[str, Any] = {}
    try:
        async for chunk in source:
            if first:
                ctx.ttft_ms = ctx.elapsed_ms()
                first = False
            buffer += chunk
            if b"\r\n" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            if b"\n\n" not in buffer:
                continue
            *events, buffer = buffer.split(b"\n\n")
            out: list[bytes] = []
            for event in events:
                if not event.strip():
                    continue
                data = _data_of(event)
                if data is None:
                    out.append(event + b"\n\n")  # comments, keep-alives, named events
                    continue
                if data == b"[DONE]":
                    saw_done = True
                    continue  # sent last, after a synthesised usage event if needed
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamUnavailable(
                        f"The upstream '{ctx.provider}' sent a malformed stream event; the "
                        "stream was ended."
                    ) from None
                if isinstance(obj, dict):
                    if obj.get("error"):
                        ctx.status = 502
                        ctx.error_type = "UpstreamError"
                        ctx.error_message = str(obj["error"])[:500]
                        out.append(event + b"\n\n")
                        continue
                    if not base and "id" in obj:
                        base = {k: obj[k] for k in ("id", "object", "created", "model")
                                if k in obj}
                    choices = obj.get("choices")
                    if choices:
                        _note_choices(choices, ctx, pieces)
                    usage = obj.get("usage")
                    if usage:
                        ctx.set_usage(usage)
                        if drop_usage_event and not choices:
                            continue
                out.append(event + b"\n\n")
            if out:
                yield b"".join(out)
        if ctx.provider is not None:  # an upstream streamed (not a guard's or a person's answer)
            ctx.upstream_ms = (time.perf_counter() - upstream_started) * 1000.0
        if ctx.status >= 400:
            return  # the upstream's own error event already reached the client; no [DONE]
        if not saw_done:
            raise UpstreamUnavailable(
                f"The upstream '{ctx.provider}' ended the stream before it was complete."
            )
        if ctx.total_tokens is None:
            text = "".join(pieces)
            prompt = _prompt_tokens(payload)
            completion = estimate_text(text)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion, "estimated": True}
            ctx.set_usage(usage, estimated=True)
            if client_wants_usage:
                yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        if keep_text and ctx.response_body is None:
            ctx.response_body = "".join(pieces)
        ctx.status = 200
        yield _DONE
    except ShipyardError as exc:
        if ctx.provider is not None:
            ctx.upstream_ms = (time.perf_counter() - upstream_started) * 1000.0
        ctx.status = exc.status
        ctx.error_type = type(exc).__name__
        ctx.error_message = exc.message
        if keep_text and ctx.response_body is None:
            ctx.response_body = "".join(pieces)
        yield error_event(exc)


def _data_of(event: bytes) -> bytes | None:
    data: bytes | None = None
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            data = value if data is None else data + b"\n" + value
    return data


def _note_choices(choices: Any, ctx: RequestContext, pieces: list[str]) -> None:
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                pieces.append(content)
        else:
            text = choice.get("text")
            if isinstance(text, str):
                pieces.append(text)
        finish = choice.get("finish_reason")
        if finish:
            ctx.finish_reason = str(finish)
