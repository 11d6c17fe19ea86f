"""The graceful answers a user gets when a person takes over: the normal response shape of the
route, with a machine-readable `shipyard.escalation` field beside it.

>>> answer = chat_answer("A person will follow up.", model="support", escalation={
...     "id": "esc_1", "status": "open"})
>>> answer["choices"][0]["message"]["content"], answer["shipyard"]["escalation"]["status"]
('A person will follow up.', 'open')
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

__all__ = ["chat_answer", "chat_answer_stream", "service_answer"]


def chat_answer(text: str, *, model: str, escalation: dict[str, Any]) -> dict[str, Any]:
    """A `chat.completion` whose assistant message is `text`."""
    return {
        "id": "chatcmpl-" + os.urandom(12).hex(), "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "shipyard": {"escalation": escalation},
    }


async def chat_answer_stream(text: str, *, model: str, escalation: dict[str, Any],
                             include_usage: bool = False) -> AsyncIterator[bytes]:
    """The same answer as server-sent `chat.completion.chunk` events ending in `[DONE]`."""
    base = {"id": "chatcmpl-" + os.urandom(12).hex(), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def event(choice: dict[str, Any], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

    yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}, shipyard={"escalation": escalation})
    yield event({"index": 0, "delta": {"content": text}, "logprobs": None,
                 "finish_reason": None})
    yield event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"})
    if include_usage:
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": {
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def service_answer(text: str, *, service: str, result_id: str,
                   escalation: dict[str, Any]) -> dict[str, Any]:
    """A `service.result` whose output is `{"message": text}`."""
    return {"id": result_id, "object": "service.result", "service": service,
            "output": {"message": text}, "shipyard": {"escalation": escalation}}
