"""Ollama's native chat API (`POST /api/chat`) ⇄ OpenAI chat, both ways, streams included.

Why the native API and not Ollama's OpenAI-compatible `/v1`: the native one reports token
counts (`prompt_eval_count`, `eval_count`) on every answer, streamed or not, and its stream's
last line carries them with `done_reason`; the compatible endpoint reports streamed usage
only when asked and only in recent releases. Native also takes a JSON Schema in `format`.

Forward: `to_ollama`, `from_ollama`, `StreamReader` (NDJSON lines, the last with
`done: true`). Reverse (the simulator): `to_openai`, `to_ollama_response`, `StreamWriter`.
Ollama has no `tool_choice`: a forced function is offered as the only tool, `required` is
sent as `auto`, and the model decides. Ollama leaves `prompt_eval_count` out when the whole
prompt came from its cache; the prompt is then estimated and the usage marked estimated.

>>> body = to_ollama({"model": "llama3.2", "max_tokens": 20,
...                   "messages": [{"role": "user", "content": "Hi"}]}, stream=False)
>>> body["messages"], body["options"]
([{'role': 'user', 'content': 'Hi'}], {'num_predict': 20})
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from shipyard.errors import UpstreamError
from shipyard.observe.tokens import estimate_chat_prompt
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
    "StreamReader",
    "StreamWriter",
    "error_message",
    "from_ollama",
    "to_ollama",
    "to_ollama_response",
    "to_openai",
]

_OPTIONS = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"))


# -- OpenAI → Ollama (requests) --------------------------------------------------------------
def to_ollama(payload: dict[str, Any], *, stream: bool,
              keep_alive: str | None = None) -> dict[str, Any]:
    """An OpenAI chat request as an `/api/chat` body."""
    check_supported(payload, "ollama")
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for index, message in enumerate(payload.get("messages") or []):
        role = message.get("role")
        content = message.get("content")
        out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": text_of(content)}
        if isinstance(content, list):
            images = [_base64(p) for p in content
                      if isinstance(p, dict) and p.get("type") == "image_url"]
            if any(images):
                out["images"] = [i for i in images if i]
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for n, call in enumerate(message["tool_calls"]):
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name", ""))
                calls.append({"function": {"name": function.get("name", ""),
                                           "arguments": parse_arguments(
                    function.get("arguments"),
                    param=f"messages[{index}].tool_calls[{n}].function.arguments")}})
            out["tool_calls"] = calls
        if role == "tool":
            name = names.get(str(message.get("tool_call_id"))) or message.get("name")
            if name:
                out["tool_name"] = name
        messages.append(out)
    body: dict[str, Any] = {"model": payload.get("model"), "messages": messages,
                            "stream": stream}
    options: dict[str, Any] = {}
    for ours, theirs in _OPTIONS:
        if payload.get(ours) is not None:
            options[theirs] = payload[ours]
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens:
        options["num_predict"] = max_tokens
    stop = payload.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        body["options"] = options
    wanted = json_output(payload)
    if wanted is not None:
        body["format"] = wanted[1] if wanted[1] != {"type": "object"} else "json"
    choice = payload.get("tool_choice")
    if payload.get("tools") and choice != "none":
        tools = [t for t in payload["tools"] if isinstance(t, dict)]
        if isinstance(choice, dict):  # no tool_choice in Ollama: offer the forced one only
            name = (choice.get("function") or {}).get("name")
            tools = [t for t in tools if (t.get("function") or {}).get("name") == name]
        body["tools"] = tools
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def _base64(part: dict[str, Any]) -> str | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        return url.partition(",")[2]
    return None  # Ollama takes images inline only


# -- Ollama → OpenAI (answers) ---------------------------------------------------------------
def _usage(data: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    completion_tokens = int(data.get("eval_count") or 0)
    prompt = data.get("prompt_eval_count")
    if isinstance(prompt, int):
        return openai_usage(prompt, completion_tokens)
    return openai_usage(estimate_chat_prompt(payload.get("messages") or []), completion_tokens,
                        estimated=True)


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        calls.append(tool_call(str(call.get("id") or new_id("call_")),
                               str(function.get("name", "")), function.get("arguments") or {}))
    return calls


def _finish(reason: Any, has_calls: bool) -> str:
    if reason == "length":
        return "length"
    return "tool_calls" if has_calls else "stop"


def from_ollama(data: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """An `/api/chat` answer as a `chat.completion` (`payload` is the OpenAI request)."""
    message = data.get("message") or {}
    calls = _calls(message)
    text = message.get("content") or ""
    return completion(id=new_id(), model=str(data.get("model") or payload.get("model")),
                      text=text if text or not calls else None, tool_calls=calls,
                      finish=_finish(data.get("done_reason"), bool(calls)),
                      usage=_usage(data, payload))


class StreamReader:
    """Turns `/api/chat` NDJSON lines into OpenAI chunks."""

    def __init__(self, writer: ChunkWriter, payload: dict[str, Any], *,
                 provider: str = "ollama") -> None:
        self.writer = writer
        self.payload = payload
        self.provider = provider
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._started = False
        self._calls = 0

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if data.get("error"):
            raise UpstreamError(f"The upstream '{self.provider}' failed mid-stream: "
                                f"{data['error']}", upstream_status=500)
        writer = self.writer
        out: list[dict[str, Any]] = []
        if not self._started:
            self._started = True
            out.append(writer.role())
        message = data.get("message") or {}
        if message.get("content"):
            out.append(writer.text(message["content"]))
        for call in _calls(message):
            out.append(writer.tool_start(self._calls, call["id"], call["function"]["name"]))
            out.append(writer.tool_arguments(self._calls, call["function"]["arguments"]))
            self._calls += 1
        if data.get("done"):
            self.done = True
            self.usage = _usage(data, self.payload)
            out.append(writer.finish(_finish(data.get("done_reason"), self._calls > 0)))
        return out


def error_message(body: bytes) -> str:
    """The message of an Ollama error body (`{"error": "..."}`)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        return str(error.get("message") if isinstance(error, dict) else error)
    return str(data)[:300]


# -- the reverse direction: Ollama requests → OpenAI, OpenAI answers → Ollama --------------
def to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An `/api/chat` body as an OpenAI chat request (streams unless `stream` is false)."""
    messages: list[dict[str, Any]] = []
    pending: dict[str, list[str]] = {}  # function name → ids of calls not yet answered
    for message in body.get("messages") or []:
        role = message.get("role")
        out: dict[str, Any] = {"role": role, "content": message.get("content", "")}
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") or {}
                call_id = str(call.get("id") or new_id("call_"))
                pending.setdefault(str(function.get("name")), []).append(call_id)
                calls.append(tool_call(call_id, str(function.get("name", "")),
                                       function.get("arguments") or {}))
            out["tool_calls"] = calls
        if role == "tool":
            ids = pending.get(str(message.get("tool_name")), [])
            out["tool_call_id"] = ids.pop(0) if ids else ""
        messages.append(out)
    request: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    options = body.get("options") or {}
    for ours, theirs in _OPTIONS:
        if options.get(theirs) is not None:
            request[ours] = options[theirs]
    if options.get("num_predict"):
        request["max_tokens"] = options["num_predict"]
    if options.get("stop"):
        request["stop"] = options["stop"]
    fmt = body.get("format")
    if fmt == "json":
        request["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        request["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "response", "schema": fmt}}
    if body.get("tools"):
        request["tools"] = body["tools"]
    if body.get("stream", True):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": c.get("id"), "function": {
        "name": (c.get("function") or {}).get("name", ""),
        "arguments": parse_arguments((c.get("function") or {}).get("arguments"),
                                     param="tool_calls.function.arguments")}} for c in calls]


def _counts(usage: Any, started: float) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    total_ns = int((time.perf_counter() - started) * 1e9)
    return {"total_duration": total_ns, "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            "prompt_eval_duration": total_ns // 4,
            "eval_count": int(usage.get("completion_tokens") or 0),
            "eval_duration": total_ns - total_ns // 4}


def to_ollama_response(data: dict[str, Any], *, model: str, started: float) -> dict[str, Any]:
    """A `chat.completion` as an `/api/chat` answer."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out_message: dict[str, Any] = {"role": "assistant", "content": text_of(message.get("content"))}
    if message.get("tool_calls"):
        out_message["tool_calls"] = _ollama_calls(message["tool_calls"])
    return {"model": model, "created_at": _now(), "message": out_message, "done": True,
            "done_reason": "length" if choice.get("finish_reason") == "length" else "stop",
            **_counts(data.get("usage"), started)}


class StreamWriter:
    """Turns OpenAI chunks into `/api/chat` NDJSON lines (tool calls whole, at the end)."""

    def __init__(self, *, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.reader = ChunkReader()
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish = "stop"
        self._usage: Any = None

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, value in self.reader.feed(chunk):
            if kind == "text":
                out.append({"model": self.model, "created_at": _now(),
                            "message": {"role": "assistant", "content": value}, "done": False})
            elif kind == "tool_start":
                self._calls[value[0]] = {"id": value[1], "function": {"name": value[2],
                                                                      "arguments": ""}}
            elif kind == "tool_arguments":
                self._calls[value[0]]["function"]["arguments"] += value[1]
            elif kind == "finish":
                self._finish = value
            elif kind == "usage":
                self._usage = value
        return out

    def end(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        if self._calls:
            lines.append({"model": self.model, "created_at": _now(), "done": False,
                          "message": {"role": "assistant", "content": "", "tool_calls":
                                      _ollama_calls([self._calls[i]
                                                     for i in sorted(self._calls)])}})
        lines.append({"model": self.model, "created_at": _now(),
                      "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "length" if self._finish == "length" else "stop",
                      **_counts(self._usage, self.started)})
        return lines


def encode_line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"
