"""`kind: python` — a `module:function` acts as the model, for custom prototypes.

The function receives the OpenAI-shaped request as a dict and may return:
- a string (the answer), or a dict with `content` and optional `usage` and `finish_reason`,
  or a complete OpenAI response dict (with `choices`);
- for embeddings: a list of vectors (one per input);
- an iterator or async iterator of strings, streamed as chunks.
Sync functions run in a thread pool so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool

from shipyard.config.targets import ProviderConfig
from shipyard.errors import ServiceError, UpstreamError, UpstreamTimeout
from shipyard.observe.tokens import estimate_chat_prompt, estimate_text
from shipyard.pipeline import Endpoint, Reply
from shipyard.providers.loading import import_object

__all__ = ["PythonProvider", "call_function"]


async def call_function(function: Callable[..., Any], argument: Any, *, timeout_s: float,
                        what: str) -> Any:
    """Call a sync or async function with a timeout; sync ones run in the thread pool."""
    try:
        # asyncio.timeout (not wait_for): no extra task per call on the hot path.
        async with asyncio.timeout(timeout_s):
            if inspect.iscoroutinefunction(function):
                return await function(argument)
            return await run_in_threadpool(function, argument)
    except TimeoutError:
        raise UpstreamTimeout(f"{what} did not return within {timeout_s:g}s.") from None
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError(f"{what} raised {type(exc).__name__}: {exc}") from exc


class PythonProvider:
    kind = "python"

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.function: Callable[..., Any] = import_object(
            config.function or "", key=f"providers.{name}.function"
        )
        if not callable(self.function):
            raise UpstreamError(f"providers.{name}.function is not callable")

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, endpoint: Endpoint, payload: dict[str, Any], *, stream: bool,
                   headers: dict[str, str] | None = None, timeout: float | None = None) -> Reply:
        started = time.perf_counter()
        limit = min(self.config.timeout_s, timeout) if timeout else self.config.timeout_s
        result = await call_function(self.function, payload, timeout_s=limit,
                                     what=f"The function of provider '{self.name}'")
        model = str(payload.get("model", self.name))
        if endpoint == "embeddings":
            data = _embeddings(result, model)
            return Reply(data=data, body=orjson.dumps(data),
                         upstream_ms=(time.perf_counter() - started) * 1000.0)
        if stream:
            return Reply(stream=_sse(_pieces(result), endpoint, model, payload),
                         upstream_ms=(time.perf_counter() - started) * 1000.0)
        text: str
        if isinstance(result, dict) and "choices" in result:
            data = result
        else:
            if isinstance(result, dict):
                text = str(result.get("content", ""))
                usage = result.get("usage")
                finish = str(result.get("finish_reason", "stop"))
            elif isinstance(result, str):
                text, usage, finish = result, None, "stop"
            else:
                text = "".join([p async for p in _pieces(result)])
                usage, finish = None, "stop"
            data = _complete(endpoint, model, text, finish, usage, payload)
        return Reply(data=data, body=orjson.dumps(data),
                     upstream_ms=(time.perf_counter() - started) * 1000.0)


def _usage_for(payload: dict[str, Any], text: str) -> dict[str, Any]:
    if "messages" in payload:
        prompt = estimate_chat_prompt(payload.get("messages") or [])
    else:
        prompt = estimate_text(str(payload.get("prompt", "")))
    completion = estimate_text(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "estimated": True}


def _complete(endpoint: Endpoint, model: str, text: str, finish: str,
              usage: Any, payload: dict[str, Any]) -> dict[str, Any]:
    created = int(time.time())
    if endpoint == "completions":
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                                  "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                          "refusal": None},
                  "logprobs": None, "finish_reason": finish}
        obj, prefix = "chat.completion", "chatcmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": obj, "created": created,
            "model": model, "choices": [choice],
            "usage": usage if isinstance(usage, dict) else _usage_for(payload, text)}


def _embeddings(result: Any, model: str) -> dict[str, Any]:
    if isinstance(result, dict) and "data" in result:
        return result
    vectors = list(result or [])
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0}}


async def _pieces(result: Any) -> AsyncIterator[str]:
    if isinstance(result, str):
        yield result
    elif isinstance(result, dict):
        yield str(result.get("content", ""))
    elif hasattr(result, "__aiter__"):
        async for piece in result:
            yield str(piece)
    elif isinstance(result, Iterator) or hasattr(result, "__iter__"):
        iterator = iter(result)
        sentinel = object()
        while True:
            piece = await run_in_threadpool(next, iterator, sentinel)
            if piece is sentinel:
                break
            yield str(piece)
    else:
        yield str(result)


async def _sse(pieces: AsyncIterator[str], endpoint: Endpoint, model: str,
               payload: dict[str, Any]) -> AsyncIterator[bytes]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": model}
    chat = endpoint == "chat/completions"
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    text_parts: list[str] = []

    def event(choice: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    if chat:
        yield event({"index": 0, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None})
    async for piece in pieces:
        text_parts.append(piece)
        if chat:
            yield event({"index": 0, "delta": {"content": piece}, "logprobs": None,
                         "finish_reason": None})
        else:
            yield event({"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
    if chat:
        yield event({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"})
    else:
        yield event({"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"})
    if (payload.get("stream_options") or {}).get("include_usage"):
        usage = _usage_for(payload, "".join(text_parts))
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"
