"""Amazon Bedrock's Converse API ⇄ OpenAI chat, both ways, streams included.

Forward: `to_converse` builds the `converse` / `converse-stream` body (the model id goes in
the URL), `from_converse` turns the answer into a `chat.completion`, `StreamReader` turns the
ConverseStream events (`messageStart`, `contentBlockStart/Delta/Stop`, `messageStop`,
`metadata`, and exceptions) into chunks. The binary AWS event-stream framing is decoded by
botocore in the provider; `encode_event` writes it for the simulator. Reverse: `to_openai`,
`to_converse_response`, `StreamWriter`.

`response_format` becomes a forced tool, as for Anthropic (Converse has no JSON mode).

>>> to_converse({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
{'messages': [{'role': 'user', 'content': [{'text': 'Hi'}]}]}
"""

from __future__ import annotations

import struct
import zlib
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
    "STOP_REASONS",
    "StreamReader",
    "StreamWriter",
    "encode_event",
    "error_message",
    "forced_json_tool",
    "from_converse",
    "to_converse",
    "to_converse_response",
    "to_openai",
]

STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                "tool_use": "tool_calls", "guardrail_intervened": "content_filter",
                "content_filtered": "content_filter", "model_context_window_exceeded": "length"}
_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
           "content_filter": "content_filtered"}
# HTTP status → the exception name Bedrock sends in `x-amzn-ErrorType` (and in streams).
ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException",
               404: "ResourceNotFoundException", 408: "ModelTimeoutException",
               429: "ThrottlingException", 500: "InternalServerException",
               502: "InternalServerException", 503: "ServiceUnavailableException",
               504: "ModelTimeoutException"}
_STREAM_STATUS = {"throttlingException": 429, "serviceUnavailableException": 503,
                  "internalServerException": 500, "modelStreamErrorException": 500,
                  "validationException": 400}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/gif": "gif", "image/webp": "webp"}


def forced_json_tool(payload: dict[str, Any]) -> str | None:
    """The tool carrying JSON output, when JSON is wanted and the caller has no tools."""
    wanted = json_output(payload)
    return wanted[0] if wanted is not None and not payload.get("tools") else None


# -- OpenAI → Converse (requests) ------------------------------------------------------------
def _user_content(content: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.startswith("data:"):
                raise InvalidRequest(
                    f"'messages[{index}].content' has an image by URL; Bedrock takes images "
                    "as data: URLs (base64) only.", param=f"messages[{index}].content")
            head, _, data = url.partition(",")
            media = head[5:].split(";")[0]
            blocks.append({"image": {"format": _IMAGE_FORMATS.get(media, "png"),
                                     "source": {"bytes": data}}})
    return blocks


def to_converse(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a Converse body."""
    check_supported(payload, "bedrock")
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(payload.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append({"text": text})
            continue
        if role == "tool":
            blocks: list[dict[str, Any]] = [{"toolResult": {
                "toolUseId": message.get("tool_call_id", ""),
                "content": [{"text": text_of(message.get("content")) or " "}]}}]
            role = "user"
        elif role == "assistant":
            blocks = []
            text = text_of(message.get("content"))
            if text:
                blocks.append({"text": text})
            for n, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") or {}
                blocks.append({"toolUse": {
                    "toolUseId": call.get("id", ""), "name": function.get("name", ""),
                    "input": parse_arguments(
                        function.get("arguments"),
                        param=f"messages[{index}].tool_calls[{n}].function.arguments")}})
        else:
            blocks = _user_content(message.get("content"), index)
            role = "user"
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    config: dict[str, Any] = {}
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens:
        config["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if payload.get(ours) is not None:
            config[theirs] = payload[ours]
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    _tools(payload, out)
    return out


def _tools(payload: dict[str, Any], out: dict[str, Any]) -> None:
    tools = [t["function"] for t in payload.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    wanted = json_output(payload)
    choice = payload.get("tool_choice")
    if tools:
        config: dict[str, Any] = {"tools": [{"toolSpec": {
            "name": f.get("name"), "description": f.get("description") or f.get("name"),
            "inputSchema": {"json": f.get("parameters") or {"type": "object"}}}}
            for f in tools]}
        if choice == "required":
            config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict):
            config["toolChoice"] = {"tool": {"name": (choice.get("function") or {}).get("name")}}
        elif choice == "auto":
            config["toolChoice"] = {"auto": {}}
        # "none": Converse has no such choice; the tools stay declared (history may use
        # them) and the model is free.
        out["toolConfig"] = config
        if wanted is not None:
            note = ("Answer with one JSON object only, matching this JSON Schema: "
                    + orjson.dumps(wanted[1]).decode())
            out.setdefault("system", []).append({"text": note})
    elif wanted is not None:
        out["toolConfig"] = {"tools": [{"toolSpec": {
            "name": wanted[0], "description": "Give your answer as this tool's input.",
            "inputSchema": {"json": wanted[1]}}}], "toolChoice": {"tool": {"name": wanted[0]}}}


# -- Converse → OpenAI (answers) -------------------------------------------------------------
def _usage(data: dict[str, Any]) -> dict[str, Any]:
    cached = int(data.get("cacheReadInputTokens") or 0)
    prompt = (int(data.get("inputTokens") or 0) + cached
              + int(data.get("cacheWriteInputTokens") or 0))
    return openai_usage(prompt, int(data.get("outputTokens") or 0), cached=cached or None)


def from_converse(data: dict[str, Any], *, model: str, json_tool: str | None = None
                  ) -> dict[str, Any]:
    """A Converse answer as a `chat.completion`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    message = (data.get("output") or {}).get("message") or {}
    for block in message.get("content") or []:
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            if json_tool is not None and use.get("name") == json_tool:
                texts.append(orjson.dumps(use.get("input", {})).decode())
            else:
                calls.append(tool_call(str(use.get("toolUseId", "")), str(use.get("name", "")),
                                       use.get("input", {})))
    finish = STOP_REASONS.get(str(data.get("stopReason")), "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"
    usage = data.get("usage")
    return completion(id=new_id(), model=model,
                      text="".join(texts) if texts or not calls else None, tool_calls=calls,
                      finish=finish, usage=_usage(usage) if isinstance(usage, dict) else None)


class StreamReader:
    """Turns ConverseStream events (type, payload) into OpenAI chunks."""

    def __init__(self, writer: ChunkWriter, *, json_tool: str | None = None,
                 provider: str = "bedrock") -> None:
        self.writer = writer
        self.json_tool = json_tool
        self.provider = provider
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._tools: dict[int, int] = {}
        self._json_blocks: set[int] = set()
        self._calls = 0
        self._finish: str | None = None

    def feed(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        writer = self.writer
        if kind == "contentBlockDelta":
            delta = data.get("delta") or {}
            index = int(data.get("contentBlockIndex", 0))
            if isinstance(delta.get("text"), str):
                return [writer.text(delta["text"])] if delta["text"] else []
            use = delta.get("toolUse")
            if isinstance(use, dict) and use.get("input"):
                if index in self._json_blocks:
                    return [writer.text(use["input"])]
                if index in self._tools:
                    return [writer.tool_arguments(self._tools[index], use["input"])]
            return []
        if kind == "messageStart":
            return [writer.role()]
        if kind == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            index = int(data.get("contentBlockIndex", 0))
            if not isinstance(use, dict):
                return []
            if self.json_tool is not None and use.get("name") == self.json_tool:
                self._json_blocks.add(index)
                return []
            self._tools[index] = self._calls
            self._calls += 1
            return [writer.tool_start(self._tools[index], str(use.get("toolUseId", "")),
                                      str(use.get("name", "")))]
        if kind == "messageStop":
            finish = STOP_REASONS.get(str(data.get("stopReason")), "stop")
            if finish == "tool_calls" and not self._calls:
                finish = "stop"
            return [writer.finish(finish)]
        if kind == "metadata":
            if isinstance(data.get("usage"), dict):
                self.usage = _usage(data["usage"])
            self.done = True
            return []
        return []  # contentBlockStop, reasoning deltas, later additions

    def exception(self, kind: str, data: dict[str, Any]) -> UpstreamError:
        return UpstreamError(
            f"The upstream '{self.provider}' failed mid-stream ({kind}): "
            f"{data.get('message') or data.get('Message') or ''}",
            upstream_status=_STREAM_STATUS.get(kind, 500))


def error_message(body: bytes) -> str:
    """The message of a Bedrock error body (`{"message": ...}`, sometimes `Message`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or data)[:1000]
    return str(data)[:300]


# -- AWS event-stream framing (application/vnd.amazon.eventstream) ----------------------------
def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (bytes([len(raw_name)]) + raw_name + b"\x07"
            + struct.pack(">H", len(raw_value)) + raw_value)


def encode_event(kind: str, payload: dict[str, Any], *, exception: bool = False) -> bytes:
    """One event-stream message: prelude (lengths + CRC32), string headers, JSON payload,
    message CRC32 — the framing botocore's `EventStreamBuffer` reads."""
    headers = (_header(":exception-type" if exception else ":event-type", kind)
               + _header(":content-type", "application/json")
               + _header(":message-type", "exception" if exception else "event"))
    body = orjson.dumps(payload)
    total = 12 + len(headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


# -- the reverse direction: Converse requests → OpenAI, OpenAI answers → Converse ----------
def to_openai(body: dict[str, Any], *, model: str, stream: bool = False) -> dict[str, Any]:
    """A Converse body (its model id from the URL) as an OpenAI chat request."""
    messages: list[dict[str, Any]] = []
    system = "".join(b.get("text", "") for b in body.get("system") or [] if isinstance(b, dict))
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"'messages[{index}].role' must be 'user' or 'assistant'.",
                                 param=f"messages[{index}].role")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in message.get("content") or []:
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                calls.append(tool_call(str(use.get("toolUseId", "")), str(use.get("name", "")),
                                       use.get("input", {})))
            elif isinstance(block.get("toolResult"), dict):
                result = block["toolResult"]
                text = "".join(c.get("text") or orjson.dumps(c.get("json")).decode()
                               for c in result.get("content") or [])
                messages.append({"role": "tool", "tool_call_id": result.get("toolUseId", ""),
                                 "content": text})
        if message["role"] == "assistant" and (texts or calls):
            out: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(texts) if texts else None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
        elif texts:
            messages.append({"role": "user", "content": "".join(texts)})
    request: dict[str, Any] = {"model": model, "messages": messages}
    config = body.get("inferenceConfig") or {}
    for ours, theirs in (("max_tokens", "maxTokens"), ("temperature", "temperature"),
                         ("top_p", "topP"), ("stop", "stopSequences")):
        if config.get(theirs) is not None:
            request[ours] = config[theirs]
    tools = (body.get("toolConfig") or {}).get("tools") or []
    if tools:
        request["tools"] = [{"type": "function", "function": {
            "name": t["toolSpec"].get("name"), "description": t["toolSpec"].get("description"),
            "parameters": (t["toolSpec"].get("inputSchema") or {}).get("json")
            or {"type": "object"}}} for t in tools if isinstance(t.get("toolSpec"), dict)]
        choice = (body.get("toolConfig") or {}).get("toolChoice") or {}
        if "any" in choice:
            request["tool_choice"] = "required"
        elif "tool" in choice:
            request["tool_choice"] = {"type": "function",
                                      "function": {"name": choice["tool"].get("name")}}
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def _converse_usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    return {"inputTokens": prompt, "outputTokens": completion_tokens,
            "totalTokens": prompt + completion_tokens}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"toolUse": {"toolUseId": call.get("id", ""), "name": function.get("name", ""),
                        "input": parse_arguments(function.get("arguments"),
                                                 param="tool_calls.function.arguments")}}


def to_converse_response(data: dict[str, Any], *, latency_ms: int = 0) -> dict[str, Any]:
    """A `chat.completion` as a Converse answer."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        content.append({"text": text})
    content.extend(_tool_use(call) for call in message.get("tool_calls") or [])
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if message.get("tool_calls") else _FINISH.get(
                str(choice.get("finish_reason")), "end_turn"),
            "usage": _converse_usage(data.get("usage")), "metrics": {"latencyMs": latency_ms}}


class StreamWriter:
    """Turns OpenAI chunks into ConverseStream events, as (event type, payload) pairs."""

    def __init__(self) -> None:
        self.reader = ChunkReader()
        self._block = -1
        self._open = False
        self._kind: str | None = None
        self._stop = "end_turn"
        self._called = False  # a tool call was streamed: the turn ends in `tool_use`
        self._usage: Any = None
        self._started = False

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if not self._open:
            return []
        self._open = False
        return [("contentBlockStop", {"contentBlockIndex": self._block})]

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if not self._started:
            self._started = True
            events.append(("messageStart", {"role": "assistant"}))
        for kind, value in self.reader.feed(chunk):
            if kind == "text":
                if self._kind != "text" or not self._open:
                    events += self._close()
                    self._block += 1
                    self._open, self._kind = True, "text"
                events.append(("contentBlockDelta", {"contentBlockIndex": self._block,
                                                     "delta": {"text": value}}))
            elif kind == "tool_start":
                self._called = True
                events += self._close()
                self._block += 1
                self._open, self._kind = True, "tool"
                events.append(("contentBlockStart", {
                    "contentBlockIndex": self._block,
                    "start": {"toolUse": {"toolUseId": value[1], "name": value[2]}}}))
            elif kind == "tool_arguments":
                events.append(("contentBlockDelta", {"contentBlockIndex": self._block,
                                                     "delta": {"toolUse": {"input": value[1]}}}))
            elif kind == "finish":
                self._stop = "tool_use" if self._called else _FINISH.get(value, "end_turn")
            elif kind == "usage":
                self._usage = value
        return events

    def end(self, *, latency_ms: int = 0) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if not self._started:
            events.append(("messageStart", {"role": "assistant"}))
        events += self._close()
        events.append(("messageStop", {"stopReason": self._stop}))
        events.append(("metadata", {"usage": _converse_usage(self._usage),
                                    "metrics": {"latencyMs": latency_ms}}))
        return events
