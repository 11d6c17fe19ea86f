"""Output guards on a streaming answer, a sentence window at a time.

Content events are held back only until the sentence they belong to completes; then the
guards judge the last `window` sentences and the held events go out (or, on a fix, one chunk
with the fixed text). A block stops the stream with an explicit final chunk —
`finish_reason: "content_filter"`, the polite message as content and the reason under
`shipyard` — followed by `[DONE]`; nothing the guard objected to reaches the client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from shipyard.guards.base import Subject
from shipyard.guards.runner import GuardList, Outcome

__all__ = ["guard_stream"]

_BOUNDARY = re.compile(r"[.!?\n][\"')\]]*(?=\s|$)")
_DONE = b"data: [DONE]\n\n"
# (outcome) -> (message, metadata) for the stop event.
Stopper = Callable[[Outcome], Awaitable[tuple[str, dict[str, Any]]]]


def _content(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    if isinstance(delta, dict):
        text = delta.get("content")
        return text if isinstance(text, str) and text else None
    text = choices[0].get("text")
    return text if isinstance(text, str) and text else None


def _sentences(text: str) -> list[str]:
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s.strip()]


async def guard_stream(source: AsyncIterator[bytes], *, guards: GuardList, subject: Subject,
                       window: int, stop: Stopper, trace: dict[str, Any],
                       legacy: bool = False) -> AsyncIterator[bytes]:
    """Relay `source` (SSE bytes) through `guards`; see the module docstring."""
    buffer = b""
    held: list[bytes] = []
    pending = ""  # text of held events, not yet judged
    judged: list[str] = []  # sentences already let through
    base: dict[str, Any] = {}

    async def judge(final: bool) -> tuple[str, Outcome | None]:
        """Judge the held text when a sentence has completed (or at the end)."""
        nonlocal pending
        if not pending.strip():
            return "pass", None
        if not final and not _BOUNDARY.search(pending):
            return "hold", None
        new = _sentences(pending)
        context = judged[-(window - 1):] if window > 1 else []
        text = "".join(context + new)
        outcome = await guards.run(subject.with_text(text), trace)
        if outcome.action == "fix":
            fixed = await guards.run(subject.with_text(pending), trace)
            judged.extend(new)
            return "fix", fixed
        if outcome.stops:
            return "stop", outcome
        judged.extend(new)
        del judged[:-window]
        return "pass", None

    def chunk(text: str, finish: str | None = None, meta: dict[str, Any] | None = None) -> bytes:
        choice: dict[str, Any] = (
            {"index": 0, "text": text, "finish_reason": finish} if legacy else
            {"index": 0, "delta": {"content": text}, "finish_reason": finish})
        body: dict[str, Any] = {**base, "choices": [choice]}
        if meta is not None:
            body["shipyard"] = meta
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async def release(final: bool) -> tuple[list[bytes], bool]:
        nonlocal pending, held
        verdict, outcome = await judge(final)
        if verdict == "hold":
            return [], False
        if verdict == "stop" and outcome is not None:
            message, meta = await stop(outcome)
            return [chunk("\n\n" + message, "content_filter", meta), _DONE], True
        out = held
        if verdict == "fix" and outcome is not None:
            text = outcome.text if outcome.text is not None else pending
            out = [e for e in held if _content(_parse(e)) is None] + [chunk(text)]
        held, pending = [], ""
        return out, False

    try:
        async for piece in source:
            buffer += piece
            if b"\n\n" not in buffer:
                continue
            *events, buffer = buffer.split(b"\n\n")
            out: list[bytes] = []
            for raw in events:
                if not raw.strip():
                    continue
                event = raw + b"\n\n"
                obj = _parse(event)
                if obj == "[DONE]":
                    flushed, stopped = await release(True)
                    out.extend(flushed)
                    if not stopped:
                        out.append(_DONE)
                    yield b"".join(out)
                    return
                if not base and isinstance(obj, dict) and "id" in obj:
                    base = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
                text = _content(obj)
                if text is None and not held:
                    out.append(event)
                    continue
                held.append(event)
                if text is not None:
                    pending += text
                    flushed, stopped = await release(False)
                    out.extend(flushed)
                    if stopped:
                        yield b"".join(out)
                        return
            if out:
                yield b"".join(out)
        flushed, stopped = await release(True)  # the upstream ended without [DONE]
        if flushed:
            yield b"".join(flushed)
        if buffer.strip() and not stopped:
            yield buffer
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


def _parse(event: bytes) -> Any:
    data = None
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
    if data is None:
        return None
    if data == b"[DONE]":
        return "[DONE]"
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
