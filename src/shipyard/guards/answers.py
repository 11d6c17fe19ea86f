"""Graceful answers: what a caller gets when a guard blocks or escalates.

Chat routes answer in the normal response shape (a `chat.completion`, or a stream of chunks)
with `finish_reason: "content_filter"`, the configured polite message as the assistant's
content, and the machine-readable reason under a `shipyard` field — never a stack trace and
never an empty answer.

>>> body = blocked_completion({"model": "m"}, "Sorry.", {"guard": {"action": "block"}})
>>> body["choices"][0]["finish_reason"], body["shipyard"]["guard"]["action"]
('content_filter', 'block')
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from shipyard.guards.base import Verdict

__all__ = ["Escalation", "EscalationHook", "GuardHooks", "blocked_chunks",
           "blocked_completion", "guard_metadata"]


@dataclass(slots=True)
class Escalation:
    """A guard asked for a person: what the escalation code (a hook) is given.

    `principal` is the caller (a `shipyard.gateway.auth.Principal`; the ticket is theirs to
    poll) and `conversation_id` the request's `x-shipyard-conversation` when escalation is
    enabled on the alias or service (a reviewer's answer is delivered in that conversation).
    """

    target: str
    stage: str
    guard: str
    verdict: Verdict
    messages: list[dict[str, Any]]
    text: str
    trace_id: str = ""
    request_id: str = ""
    tenant_id: str = "default"
    principal: Any = None
    conversation_id: str | None = None


# Returns extra metadata for the caller (e.g. {"ticket_id": ..., "message": ...}) or None.
EscalationHook = Callable[[Escalation], Awaitable[dict[str, Any] | None]]


@dataclass(slots=True)
class GuardHooks:
    """Extension points of the guard stage, shared by every model and service of a gateway.

    `on_escalate` is called when a guard's verdict is `escalate`; the escalation queue plugs in
    here (`gateway.guard_hooks.on_escalate = queue.open_ticket`). A `message` in what it
    returns replaces the configured `escalated_message`.
    """

    on_escalate: EscalationHook | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def guard_metadata(stage: str, guard: str, verdict: Verdict | None, action: str,
                   trace_id: str) -> dict[str, Any]:
    info: dict[str, Any] = {"action": action, "stage": stage, "guard": guard}
    if verdict is not None:
        info["code"] = verdict.code or ("guard_" + action)
        info["reason"] = verdict.reason
        info["score"] = round(float(verdict.score), 4)
    return {"guard": info, "trace_id": trace_id}


def _id() -> str:
    return "chatcmpl-guard-" + os.urandom(12).hex()


def _choice_count(payload: dict[str, Any], legacy: bool) -> int:
    """How many choices the request asked for: `n` (per prompt, for a list of prompts)."""
    n = payload.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    prompt = payload.get("prompt")
    if legacy and isinstance(prompt, list) and prompt and all(
            isinstance(p, str | list) for p in prompt):
        count *= len(prompt)
    return count


def blocked_completion(payload: dict[str, Any], message: str, meta: dict[str, Any], *,
                       legacy: bool = False) -> dict[str, Any]:
    """A complete answer carrying `message` in every choice the request asked for,
    finish_reason `content_filter` and `meta`."""
    model = str(payload.get("model", ""))
    choices: list[dict[str, Any]]
    if legacy:
        choices = [{"index": i, "text": message, "logprobs": None,
                    "finish_reason": "content_filter"}
                   for i in range(_choice_count(payload, legacy))]
    else:
        choices = [{"index": i, "message": {"role": "assistant", "content": message,
                                            "refusal": None},
                    "logprobs": None, "finish_reason": "content_filter"}
                   for i in range(_choice_count(payload, legacy))]
    return {"id": _id(), "object": "text_completion" if legacy else "chat.completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "shipyard": meta}


async def blocked_chunks(payload: dict[str, Any], message: str, meta: dict[str, Any], *,
                         legacy: bool = False) -> AsyncIterator[bytes]:
    """The same answer as a stream: one content chunk, then `[DONE]`."""
    base = {"id": _id(), "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": int(time.time()), "model": str(payload.get("model", ""))}
    choices: list[dict[str, Any]] = [
        {"index": i, "text": message, "finish_reason": "content_filter"} if legacy else
        {"index": i, "delta": {"role": "assistant", "content": message},
         "finish_reason": "content_filter"} for i in range(_choice_count(payload, legacy))]
    yield b"data: " + orjson.dumps({**base, "choices": choices, "shipyard": meta}) + b"\n\n"
    yield b"data: [DONE]\n\n"
