"""Google's Generative Language API (Gemini) ⇄ OpenAI chat, both ways, streams included.

Forward: `to_gemini` builds the `generateContent` body (the model goes in the URL),
`from_gemini` turns a `GenerateContentResponse` into a `chat.completion`, `StreamReader` turns
the responses of `streamGenerateContent?alt=sse` (each a partial `GenerateContentResponse`;
the stream just ends, there is no `[DONE]`) into chunks. Reverse (the simulator):
`to_openai`, `to_gemini_response`, `StreamWriter`.

System messages become `systemInstruction`; assistant turns are role `model`; tool calls are
`functionCall` parts and tool messages `functionResponse` parts (named after the call they
answer); `response_format` becomes `responseMimeType: application/json` with
`responseJsonSchema`; tools are declared with `parametersJsonSchema`, so JSON Schema is
passed as written.

>>> body = to_gemini({"model": "gemini-2.5-flash", "max_tokens": 50,
...                   "messages": [{"role": "user", "content": "Hi"}]})
>>> body["contents"], body["generationConfig"]
([{'role': 'user', 'parts': [{'text': 'Hi'}]}], {'maxOutputTokens': 50})
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
    "FINISH_REASONS",
    "STATUS_NAMES",
    "StreamReader",
    "StreamWriter",
    "error_body",
    "error_message",
    "from_gemini",
    "to_gemini",
    "to_gemini_response",
    "to_openai",
]

_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
             "IMAGE_SAFETY", "LANGUAGE"}
FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY",
                  "tool_calls": "STOP"}
# HTTP status → the google.rpc status name in Gemini error bodies.
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 429: "RESOURCE_EXHAUSTED",
                500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def _finish(reason: Any, has_calls: bool) -> str:
    if reason in _FILTERED:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    return "tool_calls" if has_calls else "stop"


# -- OpenAI → Gemini (requests) --------------------------------------------------------------
def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return {"inlineData": {"mimeType": head[5:].split(";")[0] or "image/png", "data": data}}
    lower = url.lower().split("?")[0]
    mime = ("image/png" if lower.endswith(".png") else "image/webp" if lower.endswith(".webp")
            else "image/gif" if lower.endswith(".gif") else "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append(_image(url))
    return parts


def _response_object(content: Any) -> dict[str, Any]:
    text = text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


def to_gemini(payload: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as a `generateContent` body."""
    check_supported(payload, "gemini")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name, for functionResponse
    for index, message in enumerate(payload.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "assistant":
            parts = _parts(message.get("content"))
            for n, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name", ""))
                item: dict[str, Any] = {"name": function.get("name", ""), "args": parse_arguments(
                    function.get("arguments"),
                    param=f"messages[{index}].tool_calls[{n}].function.arguments")}
                if call.get("id"):
                    item["id"] = call["id"]
                parts.append({"functionCall": item})
            role = "model"
        elif role == "tool":
            call_id = str(message.get("tool_call_id", ""))
            name = names.get(call_id) or message.get("name")
            if not name:
                raise InvalidRequest(
                    f"'messages[{index}].tool_call_id' is '{call_id}', which no earlier "
                    "assistant tool call has; Gemini needs the function's name.",
                    param=f"messages[{index}].tool_call_id")
            parts = [{"functionResponse": {"id": call_id, "name": name,
                                           "response": _response_object(message.get("content"))}}]
            role = "user"
        else:
            parts = _parts(message.get("content"))
            role = "user"
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
        if payload.get(ours) is not None:
            config[theirs] = payload[ours]
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = payload.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    wanted = json_output(payload)
    if wanted is not None:
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = wanted[1]
    if config:
        out["generationConfig"] = config
    tools = [t["function"] for t in payload.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        declarations = []
        for function in tools:
            declaration = {"name": function.get("name"),
                           "description": function.get("description", "")}
            if function.get("parameters"):
                declaration["parametersJsonSchema"] = function["parameters"]
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
        choice = payload.get("tool_choice")
        if isinstance(choice, str) and choice in _MODES:
            out["toolConfig"] = {"functionCallingConfig": {"mode": _MODES[choice]}}
        elif isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            out["toolConfig"] = {"functionCallingConfig": {"mode": "ANY",
                                                           "allowedFunctionNames": [name]}}
    return out


# -- Gemini → OpenAI (answers) ---------------------------------------------------------------
def _usage(meta: dict[str, Any]) -> dict[str, Any]:
    completion_tokens = (int(meta.get("candidatesTokenCount") or 0)
                         + int(meta.get("thoughtsTokenCount") or 0))
    return openai_usage(int(meta.get("promptTokenCount") or 0), completion_tokens,
                        cached=int(meta.get("cachedContentTokenCount") or 0) or None)


def _candidate_parts(candidate: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue  # thought summaries stay upstream
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            calls.append(tool_call(str(call.get("id") or new_id("call_")),
                                   str(call.get("name", "")), call.get("args") or {}))
    return texts, calls


def from_gemini(data: dict[str, Any], *, model: str = "") -> dict[str, Any]:
    """A `GenerateContentResponse` as a `chat.completion`."""
    candidates = data.get("candidates") or []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reason: Any = None
    if candidates:
        texts, calls = _candidate_parts(candidates[0])
        reason = candidates[0].get("finishReason")
    elif (data.get("promptFeedback") or {}).get("blockReason"):
        reason = "SAFETY"  # the prompt itself was blocked: no candidate at all
    meta = data.get("usageMetadata")
    return completion(id=str(data.get("responseId") or new_id()),
                      model=str(data.get("modelVersion") or model),
                      text="".join(texts) if texts or not calls else None, tool_calls=calls,
                      finish=_finish(reason, bool(calls)),
                      usage=_usage(meta) if isinstance(meta, dict) else None)


class StreamReader:
    """Turns streamed `GenerateContentResponse`s into OpenAI chunks."""

    def __init__(self, writer: ChunkWriter, *, provider: str = "gemini") -> None:
        self.writer = writer
        self.provider = provider
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._started = False
        self._calls = 0

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(data.get("error"), dict):
            error = data["error"]
            raise UpstreamError(
                f"The upstream '{self.provider}' failed mid-stream "
                f"({error.get('status', 'error')}): {error.get('message', '')}",
                upstream_status=int(error.get("code") or 500))
        writer = self.writer
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            if data.get("responseId"):
                writer.base["id"] = data["responseId"]
            out.append(writer.role())
        if isinstance(data.get("usageMetadata"), dict):
            self.usage = _usage(data["usageMetadata"])
        candidates = data.get("candidates") or []
        if not candidates:
            if (data.get("promptFeedback") or {}).get("blockReason"):
                self.done = True
                out.append(writer.finish("content_filter"))
            return out
        texts, calls = _candidate_parts(candidates[0])
        out.extend(writer.text(t) for t in texts if t)
        for call in calls:
            function = call["function"]
            out.append(writer.tool_start(self._calls, call["id"], function["name"]))
            out.append(writer.tool_arguments(self._calls, function["arguments"]))
            self._calls += 1
        reason = candidates[0].get("finishReason")
        if reason:
            self.done = True
            out.append(writer.finish(_finish(reason, self._calls > 0)))
        return out


# -- errors ------------------------------------------------------------------------------
def error_message(body: bytes) -> tuple[str, str | None]:
    """(message, status name) of a Gemini error body (a list of them in streams)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return (body[:300].decode("utf-8", "replace").strip() or "(empty body)", None)
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return (str(error.get("message") or error), error.get("status"))
    return (str(data)[:300], None)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message,
                      "status": STATUS_NAMES.get(status, "UNKNOWN")}}


# -- the reverse direction: Gemini requests → OpenAI, OpenAI answers → Gemini -------------
def to_openai(body: dict[str, Any], *, model: str, stream: bool = False) -> dict[str, Any]:
    """A `generateContent` body (its model from the URL) as an OpenAI chat request."""
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        messages.append({"role": "system", "content": "".join(
            p.get("text", "") for p in system.get("parts") or [])})
    for index, content in enumerate(body.get("contents") or []):
        if not isinstance(content, dict):
            raise InvalidRequest(f"'contents[{index}]' must be an object with 'parts'.",
                                 param=f"contents[{index}]")
        role = "assistant" if content.get("role") == "model" else "user"
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in content.get("parts") or []:
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                calls.append(tool_call(str(call.get("id") or new_id("call_")),
                                       str(call.get("name", "")), call.get("args") or {}))
            elif isinstance(part.get("functionResponse"), dict):
                response = part["functionResponse"]
                messages.append({"role": "tool", "name": response.get("name"),
                                 "tool_call_id": str(response.get("id") or ""),
                                 "content": orjson.dumps(response.get("response")).decode()})
        if role == "assistant" and (texts or calls):
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(texts) if texts else None}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
        elif texts:
            messages.append({"role": "user", "content": "".join(texts)})
    out: dict[str, Any] = {"model": model, "messages": messages}
    config = body.get("generationConfig") or {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"),
                         ("max_tokens", "maxOutputTokens"), ("stop", "stopSequences"),
                         ("seed", "seed")):
        if config.get(theirs) is not None:
            out[ours] = config[theirs]
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        out["response_format"] = ({"type": "json_schema",
                                   "json_schema": {"name": "response", "schema": schema}}
                                  if isinstance(schema, dict) else {"type": "json_object"})
    declarations = [d for tool in body.get("tools") or []
                    for d in tool.get("functionDeclarations") or []]
    if declarations:
        out["tools"] = [{"type": "function", "function": {
            "name": d.get("name"), "description": d.get("description", ""),
            "parameters": d.get("parametersJsonSchema") or d.get("parameters")
            or {"type": "object"}}} for d in declarations]
        calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        allowed = calling.get("allowedFunctionNames") or []
        if calling.get("mode") == "ANY" and len(allowed) == 1:
            out["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
        elif calling.get("mode") in ("AUTO", "ANY", "NONE"):
            out["tool_choice"] = {"AUTO": "auto", "ANY": "required",
                                  "NONE": "none"}[calling["mode"]]
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _usage_metadata(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    return {"promptTokenCount": prompt, "candidatesTokenCount": completion_tokens,
            "totalTokenCount": prompt + completion_tokens}


def _function_part(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"functionCall": {"id": call.get("id"), "name": function.get("name", ""),
                             "args": parse_arguments(function.get("arguments"),
                                                     param="tool_calls.function.arguments")}}


def to_gemini_response(data: dict[str, Any], *, model: str) -> dict[str, Any]:
    """A `chat.completion` as a `GenerateContentResponse`."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    parts: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text:
        parts.append({"text": text})
    parts.extend(_function_part(call) for call in message.get("tool_calls") or [])
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": FINISH_REASONS.get(
                                str(choice.get("finish_reason")), "STOP"), "index": 0}],
            "usageMetadata": _usage_metadata(data.get("usage")), "modelVersion": model,
            "responseId": str(data.get("id") or new_id(""))}


class StreamWriter:
    """Turns OpenAI chunks into streamed `GenerateContentResponse`s: text as it comes,
    function calls, the finish reason and usage in the last one."""

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.reader = ChunkReader()
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish = "STOP"
        self._usage: Any = None

    def _event(self, parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if "finishReason" in extra:
            candidate["finishReason"] = extra.pop("finishReason")
        return {"candidates": [candidate], "modelVersion": self.model,
                "responseId": str(self.reader.id or ""), **extra}

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, value in self.reader.feed(chunk):
            if kind == "text":
                out.append(self._event([{"text": value}]))
            elif kind == "tool_start":
                index, call_id, name = value
                self._calls[index] = {"id": call_id, "function": {"name": name,
                                                                  "arguments": ""}}
            elif kind == "tool_arguments":
                index, text = value
                self._calls.setdefault(index, {"id": None, "function": {
                    "name": "", "arguments": ""}})["function"]["arguments"] += text
            elif kind == "finish":
                self._finish = FINISH_REASONS.get(value, "STOP")
            elif kind == "usage":
                self._usage = value
        return out

    def end(self) -> list[dict[str, Any]]:
        parts = [_function_part(self._calls[i]) for i in sorted(self._calls)]
        return [self._event(parts, finishReason=self._finish,
                            usageMetadata=_usage_metadata(self._usage))]
