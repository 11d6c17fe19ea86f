"""The OpenAI Responses API over chat completions, both ways, without I/O.

`to_chat` turns a `POST /v1/responses` body (plus the conversation of its
`previous_response_id`) into a chat completions request; `to_response` turns the chat answer
into a `response` object; `EventWriter` turns a chat completion stream into the Responses
API's typed events (`response.created` ... `response.completed`). Built-in hosted tools
(web search, file search, code interpreter, computer use, ...) have no chat equivalent and are
refused with a 400 naming the parameter.

>>> chat = to_chat({"model": "m", "input": "Hi", "instructions": "Be brief."}, [])
>>> [m["role"] for m in chat["messages"]]
['system', 'user']
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from shipyard.errors import InvalidRequest

__all__ = ["EventWriter", "conversation", "new_response_id", "to_chat", "to_response"]

# Request fields with a chat equivalent or no effect on the answer; anything else is refused.
_PASSED = {"temperature": "temperature", "top_p": "top_p", "user": "user",
           "parallel_tool_calls": "parallel_tool_calls", "seed": "seed",
           "top_logprobs": "top_logprobs"}
_KNOWN = {"model", "input", "instructions", "tools", "tool_choice", "text", "stream",
          "max_output_tokens", "previous_response_id", "store", "metadata", "reasoning",
          "include", "truncation", "service_tier", "stream_options", "prompt_cache_key",
          "safety_identifier", "background", *_PASSED}


def new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def _text_part(part: Any, where: str) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{where}' must be a content part object.", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _refuse(f"'{where}' is an input_image without an image_url; images by "
                          "file_id are not supported, send a URL or a data: URL.", where)
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    raise _refuse(f"'{where}' is a '{kind}' part, which this gateway does not support "
                  "(input_text, output_text and input_image are).", where)


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of content parts.",
                             param=where)
    parts = [_text_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _items(value: Any) -> list[dict[str, Any]]:
    """Input items as chat messages (function calls and their outputs included)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("'input' must be a string or a list of input items.",
                             param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"'{where}.role' is {role!r}; use user, assistant, system "
                                     "or developer.", param=f"{where}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _content(item.get("content", ""), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or ""), "type": "function",
                    "function": {"name": str(item.get("name", "")),
                                 "arguments": str(item.get("arguments", ""))}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")),
                             "content": output if isinstance(output, str)
                             else orjson.dumps(output).decode()})
        elif kind == "reasoning":
            continue  # a reasoning summary has no chat equivalent; the answer stands alone
        else:
            raise _refuse(f"'{where}' is a '{kind}' item, which this gateway does not support "
                          "(message, function_call and function_call_output are).", where)
    return messages


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be a list.", param="tools")
        converted = []
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise _refuse(f"'tools[{i}].type' is {kind!r}: hosted tools (web search, file "
                              "search, code interpreter, computer use, MCP, ...) are not "
                              "supported through this gateway; use function tools.",
                              f"tools[{i}].type")
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {
                "type": "object", "properties": {}}}
            if tool.get("description"):
                function["description"] = tool["description"]
            if tool.get("strict") is not None:
                function["strict"] = tool["strict"]
            converted.append({"type": "function", "function": function})
        if converted:
            chat["tools"] = converted
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict):
        if choice.get("type") != "function":
            raise _refuse(f"'tool_choice.type' is {choice.get('type')!r}; only function tools "
                          "can be chosen.", "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}


def _format(body: dict[str, Any], chat: dict[str, Any]) -> None:
    text = body.get("text")
    if not isinstance(text, dict):
        return
    shape = text.get("format")
    if not isinstance(shape, dict) or shape.get("type") in (None, "text"):
        return
    if shape.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif shape.get("type") == "json_schema":
        schema = {k: shape[k] for k in ("name", "schema", "strict", "description")
                  if k in shape}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise _refuse(f"'text.format.type' is {shape.get('type')!r}; use text, json_object or "
                      "json_schema.", "text.format.type")


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A chat completions request for a Responses API request; `history` is the conversation
    of its `previous_response_id` (chat messages, earlier answers included)."""
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _refuse(f"Parameter '{unknown[0]}' is not supported by this gateway's Responses "
                      "API; remove it.", unknown[0])
    if body.get("background"):
        raise _refuse("'background' responses are not supported yet; send the request "
                      "without it (or submit a job, see docs/integration.md).", "background")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: a model alias (see GET /v1/models).",
                             param="model")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    messages += [m for m in history if m.get("role") != "system" or not instructions]
    messages += _items(body.get("input", ""))
    chat: dict[str, Any] = {"model": model, "messages": messages,
                            "stream": bool(body.get("stream"))}
    if chat["stream"]:
        chat["stream_options"] = {"include_usage": True}
    for name, target in _PASSED.items():
        if body.get(name) is not None:
            chat[target] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    _tools(body, chat)
    _format(body, chat)
    return chat


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def _message_item(text: str, *, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": "msg_" + uuid.uuid4().hex, "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def _call_item(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    call_id = str(call.get("id") or "call_" + uuid.uuid4().hex[:24])
    return {"type": "function_call", "id": "fc_" + uuid.uuid4().hex, "call_id": call_id,
            "name": str(function.get("name", "")), "arguments": str(function.get("arguments",
                                                                                 "")),
            "status": "completed"}


def _envelope(body: dict[str, Any], response_id: str, created: int, model: str,
              output: list[dict[str, Any]], usage: dict[str, Any] | None, *,
              status: str, incomplete: str | None) -> dict[str, Any]:
    text = body.get("text") if isinstance(body.get("text"), dict) else {"format": {
        "type": "text"}}
    return {"id": response_id, "object": "response", "created_at": created, "status": status,
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens":
            body.get("max_output_tokens"), "model": model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0), "text": text,
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
            "usage": usage, "user": body.get("user"), "metadata": body.get("metadata") or {}}


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def to_response(completion: dict[str, Any], body: dict[str, Any], *, response_id: str,
                created: int | None = None) -> dict[str, Any]:
    """The `response` object for a chat completion (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    content = message.get("content")
    finish = choice.get("finish_reason")
    incomplete = _INCOMPLETE.get(str(finish))
    if isinstance(content, str) and (content or not message.get("tool_calls")):
        output.append(_message_item(content, status="incomplete" if incomplete
                                    else "completed"))
    output += [_call_item(c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    response = _envelope(body, response_id, created or int(time.time()),
                         str(completion.get("model") or body.get("model", "")), output,
                         _usage(completion.get("usage")),
                         status="incomplete" if incomplete else "completed",
                         incomplete=incomplete)
    if isinstance(completion.get("shipyard"), dict):
        response["shipyard"] = completion["shipyard"]  # a guard's or a person's answer
    return response


def conversation(chat: dict[str, Any], response: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a later `previous_response_id` continues: this request's and its
    answer's (text and function calls)."""
    messages = [m for m in chat.get("messages") or [] if m.get("role") != "system"]
    calls = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            text = "".join(p.get("text", "") for p in item.get("content") or []
                           if isinstance(p, dict))
            messages.append({"role": "assistant", "content": text})
        elif item.get("type") == "function_call":
            calls.append({"id": item["call_id"], "type": "function", "function": {
                "name": item["name"], "arguments": item["arguments"]}})
    if calls:
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    return messages


class EventWriter:
    """Chat completion chunks in, Responses API stream events out (as SSE bytes)."""

    def __init__(self, body: dict[str, Any], *, response_id: str, model: str) -> None:
        self.body = body
        self.response_id = response_id
        self.model = model
        self.created = int(time.time())
        self.sequence = 0
        self.text: str | None = None  # the text so far, once a message item is open
        self.message: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index -> item (open)
        self.order: list[dict[str, Any]] = []  # output items in order
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.extra: dict[str, Any] | None = None  # the `shipyard` field of a guard's answer

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _snapshot(self, status: str) -> dict[str, Any]:
        incomplete = _INCOMPLETE.get(str(self.finish)) if status != "in_progress" else None
        response = _envelope(self.body, self.response_id, self.created, self.model,
                             list(self.order) if status != "in_progress" else [], self.usage,
                             status="incomplete" if incomplete else status,
                             incomplete=incomplete)
        if self.extra is not None:
            response["shipyard"] = self.extra
        return response

    def start(self) -> bytes:
        return (self._event("response.created", response=self._snapshot("in_progress"))
                + self._event("response.in_progress", response=self._snapshot("in_progress")))

    def _open_message(self) -> bytes:
        self.message = _message_item("", status="in_progress")
        self.message["content"] = []
        self.text = ""
        self.order.append(self.message)
        index = len(self.order) - 1
        return (self._event("response.output_item.added", output_index=index,
                            item=self.message)
                + self._event("response.content_part.added", item_id=self.message["id"],
                              output_index=index, content_index=0,
                              part={"type": "output_text", "text": "", "annotations": []}))

    def chunk(self, obj: dict[str, Any]) -> bytes:
        """The events of one chat completion chunk."""
        out = b""
        if isinstance(obj.get("usage"), dict):
            self.usage = _usage(obj["usage"])
        if isinstance(obj.get("shipyard"), dict):
            self.extra = obj["shipyard"]
        for choice in obj.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.message is None:
                    out += self._open_message()
                message = self.message or {}
                self.text = (self.text or "") + text
                out += self._event("response.output_text.delta", item_id=message.get("id"),
                                   output_index=len(self.order) - 1 if not self.calls else
                                   self.order.index(message), content_index=0, delta=text,
                                   logprobs=[])
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        return out

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        index = int(call.get("index", 0))
        function = call.get("function") or {}
        item = self.calls.get(index)
        out = b""
        if item is None:
            item = _call_item({"id": call.get("id"), "function": {
                "name": function.get("name", ""), "arguments": ""}})
            item["status"] = "in_progress"
            self.calls[index] = item
            self.order.append(item)
            out += self._event("response.output_item.added",
                               output_index=len(self.order) - 1, item=dict(item))
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            item["arguments"] += piece
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=self.order.index(item), delta=piece)
        return out

    def finish_events(self) -> bytes:
        """Close every open item, then `response.completed` (or `response.incomplete`)."""
        out = b""
        for index, item in enumerate(self.order):
            if item is self.message and self.text is not None:
                part = {"type": "output_text", "text": self.text, "annotations": [],
                        "logprobs": []}
                out += (self._event("response.output_text.done", item_id=item["id"],
                                    output_index=index, content_index=0, text=self.text,
                                    logprobs=[])
                        + self._event("response.content_part.done", item_id=item["id"],
                                      output_index=index, content_index=0, part=part))
                item["content"] = [part]
            else:
                out += self._event("response.function_call_arguments.done",
                                   item_id=item["id"], output_index=index,
                                   arguments=item["arguments"], name=item["name"])
            item["status"] = ("incomplete" if _INCOMPLETE.get(str(self.finish))
                              and item is self.message else "completed")
            out += self._event("response.output_item.done", output_index=index, item=item)
        response = self._snapshot("completed")
        kind = "response.incomplete" if response["status"] == "incomplete" else (
            "response.completed")
        return out + self._event(kind, response=response)

    def response(self) -> dict[str, Any]:
        return self._snapshot("completed")

    def failed(self, message: str, code: str | None) -> bytes:
        response = self._snapshot("in_progress")
        response["status"] = "failed"
        response["error"] = {"code": code or "server_error", "message": message}
        return self._event("response.failed", response=response)
