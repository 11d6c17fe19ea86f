"""What every translation shares: OpenAI chat shapes (completions, chunks, usage), SSE and
NDJSON framing, message parts, tool calls and JSON output.

>>> writer = ChunkWriter(id="chatcmpl-1", model="m", created=0)
>>> writer.text("Hi")["choices"][0]["delta"]
{'content': 'Hi'}
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from shipyard.errors import InvalidRequest, UpstreamUnavailable

__all__ = [
    "DONE",
    "JSON_TOOL",
    "ChunkReader",
    "ChunkWriter",
    "check_supported",
    "completion",
    "json_output",
    "ndjson_lines",
    "new_id",
    "parse_arguments",
    "sse",
    "sse_events",
    "text_of",
    "tool_call",
    "usage",
]

DONE = b"data: [DONE]\n\n"
# The forced tool that carries structured output for APIs without a JSON mode (Anthropic,
# Bedrock Converse): its input is the answer.
JSON_TOOL = "json_output"


def new_id(prefix: str = "chatcmpl-") -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def sse(obj: Any, event: str | None = None) -> bytes:
    """One server-sent event; `event` names it (Anthropic's streams name every event)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def usage(prompt: int, completion: int, *, cached: int | None = None,
          estimated: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    if estimated:
        out["estimated"] = True
    return out


def text_of(content: Any) -> str:
    """The text of an OpenAI message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") in ("text", None)
                       and isinstance(p.get("text"), str))
    return ""


def parse_arguments(arguments: Any, *, param: str) -> Any:
    """A tool call's `arguments` (a JSON string) as an object; upstreams want objects."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"'{param}' is not valid JSON ({str(arguments)[:80]!r}); send the tool call's "
            "arguments as the JSON text the model produced.", param=param) from None


def json_output(payload: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`response_format` as (name, JSON schema) when the caller wants JSON, else None."""
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return (JSON_TOOL, {"type": "object"})
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return (str(spec.get("name") or JSON_TOOL) if isinstance(spec, dict) else JSON_TOOL,
                schema if isinstance(schema, dict) else {"type": "object"})
    return None


def check_supported(payload: dict[str, Any], kind: str) -> None:
    """Refuse what the upstream API cannot do, rather than answering something else."""
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest(
            f"'n' is {n}, but providers of kind '{kind}' answer one choice per request; "
            "send n=1 (or several requests).", param="n")
    if payload.get("logprobs"):
        raise InvalidRequest(
            f"'logprobs' is not available from providers of kind '{kind}'; leave it out.",
            param="logprobs")


def completion(*, id: str, model: str, text: str | None, tool_calls: list[dict[str, Any]],
               finish: str, usage: dict[str, Any] | None, created: int | None = None
               ) -> dict[str, Any]:
    """A `chat.completion` with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    out: dict[str, Any] = {
        "id": id, "object": "chat.completion", "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def tool_call(id: str, name: str, arguments: Any) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return {"id": id, "type": "function", "function": {"name": name, "arguments": text}}


class ChunkWriter:
    """Builds the `chat.completion.chunk` objects of one streamed answer."""

    __slots__ = ("base", "include_usage")

    def __init__(self, *, id: str, model: str, created: int | None = None,
                 include_usage: bool = False) -> None:
        self.base = {"id": id, "object": "chat.completion.chunk",
                     "created": created or int(time.time()), "model": model}
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {**self.base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text})

    def tool_start(self, index: int, id: str, name: str) -> dict[str, Any]:
        return self.chunk({"tool_calls": [{"index": index, "id": id, "type": "function",
                                           "function": {"name": name, "arguments": ""}}]})

    def tool_arguments(self, index: int, arguments: str) -> dict[str, Any]:
        return self.chunk({"tool_calls": [{"index": index,
                                           "function": {"arguments": arguments}}]})

    def finish(self, reason: str) -> dict[str, Any]:
        return self.chunk({}, reason)

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage}


class ChunkReader:
    """Reads OpenAI chunks back into parts (the reverse direction: simulators, front door).

    `feed` returns what each chunk adds, in order, as `("text", str)`,
    `("tool_start", (index, id, name))`, `("tool_arguments", (index, str))`,
    `("finish", reason)` or `("usage", dict)`.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, Any]]:
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        out: list[tuple[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(("text", delta["content"]))
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                function = call.get("function") or {}
                if call.get("id"):
                    out.append(("tool_start", (index, call["id"], function.get("name", ""))))
                if function.get("arguments"):
                    out.append(("tool_arguments", (index, function["arguments"])))
            if choice.get("finish_reason"):
                out.append(("finish", choice["finish_reason"]))
        if chunk.get("usage"):
            out.append(("usage", chunk["usage"]))
        return out


async def sse_events(source: AsyncIterator[bytes], *, provider: str
                     ) -> AsyncIterator[tuple[str | None, bytes]]:
    """Split an SSE byte stream into (event name, data) pairs, as bytes arrive."""
    buffer = b""
    async for chunk in source:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in buffer:
            continue
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            name: str | None = None
            data: list[bytes] = []
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if data:
                yield name, b"\n".join(data)
    if buffer.strip():
        raise UpstreamUnavailable(
            f"The upstream '{provider}' ended its stream in the middle of an event.")


async def ndjson_lines(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split newline-delimited JSON into lines, as bytes arrive."""
    buffer = b""
    async for chunk in source:
        buffer += chunk
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
