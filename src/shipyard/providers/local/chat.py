"""Chat plumbing of the local model that needs no model: messages for the chat template,
tool descriptions, the JSON schemas that constrain structured answers, and tool-call parsing.

Tool calls follow the Hermes convention most open chat models were trained on: the model
answers `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. With `tool_choice` naming a
function or `required`, a grammar forces a schema-valid call whatever the model; with `auto`
the model decides, and its answer is parsed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

__all__ = [
    "TOOL_CALL_OPEN",
    "call_schema",
    "forced_tool",
    "parse_tool_calls",
    "template_messages",
    "tool_call",
    "tools_instruction",
]

TOOL_CALL_OPEN = "<tool_call>"
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        parsed = arguments
    return f"{TOOL_CALL_OPEN}\n" + json.dumps(
        {"name": function.get("name"), "arguments": parsed}, ensure_ascii=False) + "\n</tool_call>"


def template_messages(messages: list[Any], *, native_tools: bool,
                      instruction: str | None) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates expect them: string content, and (for templates
    without tool support) tool calls and tool results written out as text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        role = "system" if role == "developer" else role
        content = _text(message.get("content"))
        item: dict[str, Any] = {"role": role, "content": content}
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        if calls and native_tools:
            item["tool_calls"] = [{"type": "function", "id": c.get("id"), "function": {
                "name": (c.get("function") or {}).get("name"),
                "arguments": _arguments(c)}} for c in calls]
        elif calls:
            item["content"] = "\n".join([content, *(_call_text(c) for c in calls)]).strip()
        if role in ("tool", "function") and not native_tools:
            item = {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
        elif role == "tool" and message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        out.append(item)
    if instruction:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instruction}".strip()}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    return out


def _arguments(call: dict[str, Any]) -> Any:
    arguments = (call.get("function") or {}).get("arguments")
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return arguments


def _functions(tools: list[Any]) -> list[dict[str, Any]]:
    return [t["function"] for t in tools if isinstance(t, dict)
            and isinstance(t.get("function"), dict) and t["function"].get("name")]


def tools_instruction(tools: list[Any]) -> str:
    """The system-prompt text that tells a model without native tool support how to call."""
    described = [{"name": f["name"], "description": f.get("description", ""),
                  "parameters": f.get("parameters") or {"type": "object", "properties": {}}}
                 for f in _functions(tools)]
    return ("You may call one of these tools. To call a tool, answer only with\n"
            f'{TOOL_CALL_OPEN}\n{{"name": "<tool name>", "arguments": {{...}}}}\n</tool_call>\n'
            "Tools:\n" + json.dumps(described, ensure_ascii=False))


def forced_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """How the request wants tools used: ('none'|'auto'|'required'|'named', named function)."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return ("none", None)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        function = next((f for f in _functions(tools) if f["name"] == name), None)
        return ("named", function)
    return ("required", None) if choice == "required" else ("auto", None)


def _hoist(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Move a tool's `$defs` to the root, where its `#/$defs/...` references point."""
    inner = dict(schema)
    for key in ("$defs", "definitions"):
        found = inner.pop(key, None)
        if isinstance(found, dict):
            defs.update(found)
            if key == "definitions":
                inner = json.loads(json.dumps(inner).replace('"#/definitions/', '"#/$defs/'))
    return inner


def call_schema(tools: list[Any]) -> dict[str, Any]:
    """The JSON schema of one call to any of `tools` (`tool_choice: required`)."""
    defs: dict[str, Any] = {}
    options = []
    for function in _functions(tools):
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        options.append({"type": "object", "additionalProperties": False,
                        "required": ["name", "arguments"],
                        "properties": {"name": {"const": function["name"]},
                                       "arguments": _hoist(parameters, defs)}})
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def parse_tool_calls(text: str, tools: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """Tool calls written by the model as `<tool_call>` blocks: (remaining content, calls).
    Blocks that are not valid calls to a known tool stay in the content."""
    names = {f["name"] for f in _functions(tools)}
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    position = 0
    for match in _TOOL_CALL_BLOCK.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or data.get("name") not in names:
            continue
        arguments = data.get("arguments", data.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                continue
        kept.append(text[position:match.start()])
        position = match.end()
        calls.append(tool_call(str(data["name"]), json.dumps(arguments, ensure_ascii=False)))
    if not calls:
        return (text, [])
    kept.append(text[position:])
    rest = "".join(kept).strip()
    return (rest or None, calls)
