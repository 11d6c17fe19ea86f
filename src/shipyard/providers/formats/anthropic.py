"""Anthropic's Messages API ⇄ OpenAI chat, both ways, streams included.

Forward (a provider of kind `anthropic`): `to_anthropic` builds the Messages request,
`from_anthropic` turns the answer into a `chat.completion`, `StreamReader` turns the SSE
events (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `error`) into
`chat.completion.chunk`s. Reverse (the simulator, an Anthropic-format front door):
`to_openai`, `to_anthropic_response` and `StreamWriter`.

System and developer messages become `system`; tool messages become `tool_result` blocks of a
user turn; consecutive turns of one role are merged (the API wants them alternating).
`response_format` becomes a forced tool whose input is the JSON answer (`JSON_TOOL` or the
schema's name), which works on every Claude model and on Bedrock alike.

>>> body = to_anthropic({"model": "claude", "messages": [
...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
>>> body["system"], body["max_tokens"], body["messages"][0]["content"]
('Be brief.', 4096, [{'type': 'text', 'text': 'Hi'}])
"""

from __future__ import annotations

from typing import Any

import orjson

from shipyard.errors import InvalidRequest, UpstreamError
from shipyard.providers.formats.openai import (
    ChunkReader,
    ChunkWriter,
    check_supported,
    completion,
    json_output,
    new_id,
    parse_arguments,
    text_of,
    tool_call,
)
from shipyard.providers.formats.openai import usage as openai_usage

__all__ = [
    "ERROR_TYPES",
    "FINISH_REASONS",
    "STOP_REASONS",
    "StreamReader",
    "StreamWriter",
    "error_body",
    "error_message",
    "forced_json_tool",
    "from_anthropic",
    "to_anthropic",
    "to_anthropic_response",
    "to_openai",
]

# Anthropic stop_reason → OpenAI finish_reason, and back.
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop",
                "model_context_window_exceeded": "length"}
FINISH_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "function_call": "tool_use", "content_filter": "refusal"}
# HTTP status → Anthropic error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               502: "api_error", 503: "overloaded_error", 504: "timeout_error",
               529: "overloaded_error"}
_TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


# -- OpenAI → Anthropic (requests) -----------------------------------------------------------
def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media = head[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                blocks.append(_image(url))
    return blocks


def _assistant_blocks(message: dict[str, Any], index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or f"toolu_{index}_{n}",
                       "name": function.get("name", ""),
                       "input": parse_arguments(
                           function.get("arguments"),
                           param=f"messages[{index}].tool_calls[{n}].function.arguments")})
    return blocks


def forced_json_tool(payload: dict[str, Any]) -> str | None:
    """The name of the tool that carries JSON output, when `response_format` asks for JSON
    and the caller has no tools of its own."""
    wanted = json_output(payload)
    return wanted[0] if wanted is not None and not payload.get("tools") else None


def to_anthropic(payload: dict[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """An OpenAI chat request as a Messages API request."""
    check_supported(payload, "anthropic")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(payload.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "tool":
            blocks = [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                       "content": text_of(message.get("content"))}]
            role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, index)
        else:
            blocks = _user_blocks(message.get("content"))
            role = "user"
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    out: dict[str, Any] = {
        "model": payload.get("model"),
        "max_tokens": payload.get("max_completion_tokens") or payload.get("max_tokens")
        or default_max_tokens,
        "messages": messages,
    }
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "stream"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    stop = payload.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(payload.get("user"), str):
        out["metadata"] = {"user_id": payload["user"]}
    _tools(payload, out)
    return out


def _tools(payload: dict[str, Any], out: dict[str, Any]) -> None:
    tools = payload.get("tools") or []
    choice = payload.get("tool_choice")
    wanted = json_output(payload)
    if tools and choice != "none":
        out["tools"] = [
            {"name": t["function"]["name"],
             "description": t["function"].get("description", ""),
             "input_schema": t["function"].get("parameters") or {"type": "object"}}
            for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        if isinstance(choice, str) and choice in _TOOL_CHOICE:
            out["tool_choice"] = dict(_TOOL_CHOICE[choice])
        elif isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            out["tool_choice"] = {"type": "tool", "name": name}
        if payload.get("parallel_tool_calls") is False:
            out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
        if wanted is not None:  # JSON output and tools: say it, the tools stay free
            schema = orjson.dumps(wanted[1]).decode()
            note = f"Answer with one JSON object only, matching this JSON Schema: {schema}"
            out["system"] = f"{out['system']}\n\n{note}" if out.get("system") else note
    elif wanted is not None:
        out["tools"] = [{"name": wanted[0], "input_schema": wanted[1],
                         "description": "Give your answer as this tool's input."}]
        out["tool_choice"] = {"type": "tool", "name": wanted[0]}


# -- Anthropic → OpenAI (answers) ------------------------------------------------------------
def _usage(data: dict[str, Any]) -> dict[str, Any]:
    cached = int(data.get("cache_read_input_tokens") or 0)
    prompt = (int(data.get("input_tokens") or 0) + cached
              + int(data.get("cache_creation_input_tokens") or 0))
    return openai_usage(prompt, int(data.get("output_tokens") or 0), cached=cached)


def from_anthropic(data: dict[str, Any], *, json_tool: str | None = None) -> dict[str, Any]:
    """A Messages API answer as a `chat.completion`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            if json_tool is not None and block.get("name") == json_tool:
                texts.append(orjson.dumps(block.get("input", {})).decode())
            else:
                calls.append(tool_call(block.get("id", ""), block.get("name", ""),
                                       block.get("input", {})))
    finish = STOP_REASONS.get(str(data.get("stop_reason")), "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"  # the JSON-output tool: to the caller that is a plain answer
    usage = data.get("usage")
    return completion(id=str(data.get("id") or new_id()), model=str(data.get("model", "")),
                      text="".join(texts) if texts or not calls else None, tool_calls=calls,
                      finish=finish, usage=_usage(usage) if isinstance(usage, dict) else None)


class StreamReader:
    """Turns Messages API stream events into OpenAI chunks; `usage` is known at the end."""

    def __init__(self, writer: ChunkWriter, *, json_tool: str | None = None,
                 provider: str = "anthropic") -> None:
        self.writer = writer
        self.json_tool = json_tool
        self.provider = provider
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._raw_usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # block index → OpenAI tool_calls index
        self._json_blocks: set[int] = set()
        self._calls = 0

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        writer = self.writer
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            index = int(event.get("index", 0))
            if delta.get("type") == "text_delta":
                return [writer.text(delta.get("text", ""))] if delta.get("text") else []
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                if index in self._json_blocks:
                    return [writer.text(delta["partial_json"])]
                if index in self._tools:
                    return [writer.tool_arguments(self._tools[index], delta["partial_json"])]
            return []  # thinking and signature deltas stay upstream
        if kind == "message_start":
            message = event.get("message") or {}
            if message.get("id"):
                writer.base["id"] = message["id"]
            self._raw_usage.update(message.get("usage") or {})
            return [writer.role()]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            index = int(event.get("index", 0))
            if block.get("type") == "text" and block.get("text"):
                return [writer.text(block["text"])]
            if block.get("type") == "tool_use":
                if self.json_tool is not None and block.get("name") == self.json_tool:
                    self._json_blocks.add(index)
                    return []
                self._tools[index] = self._calls
                self._calls += 1
                return [writer.tool_start(self._tools[index], block.get("id", ""),
                                          block.get("name", ""))]
            return []
        if kind == "message_delta":
            self._raw_usage.update({k: v for k, v in (event.get("usage") or {}).items()
                                    if v is not None})
            self.usage = _usage(self._raw_usage)
            reason = (event.get("delta") or {}).get("stop_reason")
            finish = STOP_REASONS.get(str(reason), "stop")
            if finish == "tool_calls" and not self._calls:
                finish = "stop"
            return [writer.finish(finish)]
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            raise stream_error(event, self.provider)
        return []  # ping, content_block_stop, events added later


def stream_error(event: dict[str, Any], provider: str) -> UpstreamError:
    error = event.get("error") or {}
    kind = str(error.get("type", "api_error"))
    status = 503 if kind == "overloaded_error" else 429 if kind == "rate_limit_error" else 500
    return UpstreamError(
        f"The upstream '{provider}' failed mid-stream ({kind}): {error.get('message', '')}",
        upstream_status=status)


# -- errors ------------------------------------------------------------------------------
def error_message(body: bytes) -> tuple[str, str | None]:
    """(message, error type) of an Anthropic error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (body[:300].decode("utf-8", "replace").strip() or "(empty body)", None)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return (str(error.get("message") or error), error.get("type"))
    return (str(data)[:300], None)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}


# -- Anthropic → OpenAI (requests), OpenAI → Anthropic (answers): the reverse direction ----
def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or []
                   if isinstance(b, dict) and b.get("type") == "text")


def to_openai(request: dict[str, Any]) -> dict[str, Any]:
    """A Messages API request as an OpenAI chat request."""
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str)
                         else _tool_result_text(system)})
    for index, message in enumerate(request.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"'messages[{index}].role' must be 'user' or 'assistant'.",
                                 param=f"messages[{index}].role")
        role, content = message["role"], message.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for block in content or []:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                source = block.get("source") or {}
                url = (source.get("url") if source.get("type") == "url" else
                       f"data:{source.get('media_type')};base64,{source.get('data', '')}")
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_use":
                calls.append(tool_call(block.get("id", ""), block.get("name", ""),
                                       block.get("input", {})))
            elif kind == "tool_result":
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""),
                                 "content": _tool_result_text(block.get("content"))})
        if role == "assistant":
            if parts or calls:
                out: dict[str, Any] = {"role": "assistant",
                                       "content": text_of(parts) if parts else None}
                if calls:
                    out["tool_calls"] = calls
                messages.append(out)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            messages.append({"role": "user", "content": text_of(parts) if only_text else parts})
    out = {"model": request.get("model"), "messages": messages,
           "max_tokens": request.get("max_tokens")}
    for key in ("temperature", "top_p", "stream"):
        if request.get(key) is not None:
            out[key] = request[key]
    if request.get("stream"):
        out["stream_options"] = {"include_usage": True}
    if request.get("stop_sequences"):
        out["stop"] = list(request["stop_sequences"])
    user = (request.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if request.get("tools"):
        out["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description", ""),
            "parameters": t.get("input_schema") or {"type": "object"}}}
            for t in request["tools"] if isinstance(t, dict)]
    choice = request.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


def _anthropic_usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
            "cache_read_input_tokens": cached,
            "output_tokens": int(usage.get("completion_tokens") or 0)}


def to_anthropic_response(data: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
    """A `chat.completion` as a Messages API answer."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{n}",
                        "name": function.get("name", ""),
                        "input": parse_arguments(function.get("arguments"),
                                                 param="tool_calls.function.arguments")})
    return {"id": _message_id(data.get("id")), "type": "message", "role": "assistant",
            "model": model or data.get("model"), "content": content,
            # A turn that calls tools ends in `tool_use` for Anthropic, whatever the OpenAI
            # finish reason (OpenAI says `stop` when tool_choice names the function).
            "stop_reason": "tool_use" if message.get("tool_calls") else FINISH_REASONS.get(
                str(choice.get("finish_reason")), "end_turn"),
            "stop_sequence": None, "usage": _anthropic_usage(data.get("usage"))}


def _message_id(openai_id: Any) -> str:
    text = str(openai_id or new_id(""))
    return text if text.startswith("msg_") else "msg_" + text.removeprefix("chatcmpl-")


class StreamWriter:
    """Turns OpenAI chunks into Messages API stream events, as (event name, data) pairs."""

    def __init__(self, *, model: str, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.reader = ChunkReader()
        self._block = -1
        self._open: str | None = None  # "text" or "tool" while a block is open
        self._stop = "end_turn"
        self._called = False  # a tool call was streamed: the turn ends in `tool_use`
        self._usage: dict[str, int] | None = None
        self._started = False

    def _start(self, chunk_id: str | None) -> list[tuple[str, dict[str, Any]]]:
        self._started = True
        return [("message_start", {"type": "message_start", "message": {
            "id": _message_id(chunk_id), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}})]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        self._block += 1
        self._open = kind
        events.append(("content_block_start", {"type": "content_block_start",
                                                "index": self._block, "content_block": block}))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = [] if self._started else self._start(chunk.get("id"))
        for kind, value in self.reader.feed(chunk):
            if kind == "text":
                if self._open != "text":
                    events += self._open_block("text", {"type": "text", "text": ""})
                events.append(("content_block_delta", {
                    "type": "content_block_delta", "index": self._block,
                    "delta": {"type": "text_delta", "text": value}}))
            elif kind == "tool_start":
                _, call_id, name = value
                self._called = True
                events += self._open_block("tool", {"type": "tool_use", "id": call_id,
                                                    "name": name, "input": {}})
            elif kind == "tool_arguments":
                events.append(("content_block_delta", {
                    "type": "content_block_delta", "index": self._block,
                    "delta": {"type": "input_json_delta", "partial_json": value[1]}}))
            elif kind == "finish":
                self._stop = "tool_use" if self._called else FINISH_REASONS.get(value,
                                                                                 "end_turn")
            elif kind == "usage":
                self._usage = _anthropic_usage(value)
        return events

    def end(self) -> list[tuple[str, dict[str, Any]]]:
        events = [] if self._started else self._start(None)
        events += self._close()
        usage: dict[str, int] = {"output_tokens": 0}
        if self._usage is not None:
            usage = {"input_tokens": self._usage["input_tokens"],
                     "output_tokens": self._usage["output_tokens"]}
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": self._stop,
                                                   "stop_sequence": None},
                                         "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events
