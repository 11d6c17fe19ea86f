"""What the sim refuses before it computes anything: absurd sizes and malformed options.

A real provider answers `400` when a request asks for more than the model allows; the sim does
the same, naming the parameter and the limit, so that no request can make it allocate without
bound (`dimensions: 39928267929292` once grew a vector until the kernel killed the process).
The limits follow OpenAI's published ones where there is one.
"""

from __future__ import annotations

from typing import Any

from shipyard.observe.tokens import estimate_text

__all__ = ["LIMITS", "SimRequestError", "check_chat", "check_completion", "check_embeddings",
           "whole"]

LIMITS: dict[str, int] = {
    "n": 128,                   # choices per request (OpenAI: 128)
    "max_tokens": 16_384,       # completion tokens per choice (gpt-4o: 16,384)
    "top_logprobs": 20,         # chat alternatives per token (OpenAI: 20)
    "logprobs": 5,              # legacy completions alternatives per token (OpenAI: 5)
    "best_of": 20,              # legacy completions (OpenAI: 20)
    "stop": 4,                  # stop sequences (OpenAI: 4)
    "tools": 128,               # tools per request (OpenAI: 128)
    "dimensions": 8_192,        # embedding size (OpenAI's largest is 3,072)
    "inputs": 2_048,            # embedding inputs / legacy prompts per request (OpenAI: 2,048)
    "input_tokens": 8_192,      # tokens of one embedding input (OpenAI: 8,192)
}


class SimRequestError(ValueError):
    """A request the sim refuses with 400; `param` names the parameter."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def whole(value: Any) -> int | None:
    """An integer parameter as OpenAI reads it (`2` or `2.0`); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _count(body: dict[str, Any], name: str, *, low: int, limit_key: str | None = None,
           what: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    number = whole(value)
    if number is None:
        raise SimRequestError(f"Invalid type for '{name}': expected an integer, but got "
                              f"{value!r}.", name, "invalid_type")
    limit = LIMITS[limit_key or name]
    if number < low:
        raise SimRequestError(f"Invalid '{name}': {number} is less than the minimum of {low}.",
                              name)
    if number > limit:
        raise SimRequestError(f"Invalid '{name}': {number} is greater than the maximum of "
                              f"{limit} {what}; ask for at most {limit}.", name)
    return number


def _stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise SimRequestError("Invalid 'stop': expected a string or a list of strings.", "stop",
                              "invalid_type")
    if len(stop) > LIMITS["stop"]:
        raise SimRequestError(f"Invalid 'stop': {len(stop)} sequences, but the maximum is "
                              f"{LIMITS['stop']}.", "stop")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise SimRequestError("Invalid 'tools': expected a list of tools.", "tools",
                              "invalid_type")
    if len(tools) > LIMITS["tools"]:
        raise SimRequestError(f"Invalid 'tools': {len(tools)} tools, but the maximum is "
                              f"{LIMITS['tools']}.", "tools")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise SimRequestError(
                f"Missing required parameter: 'tools[{i}].function.name'; each tool is "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}.',
                f"tools[{i}].function.name", "missing_required_parameter")
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters is not None and not isinstance(parameters, dict):
            raise SimRequestError(f"Invalid 'tools[{i}].function.parameters': expected a JSON "
                                  "Schema object.", f"tools[{i}].function.parameters",
                                  "invalid_type")
        names.add(name)
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in names:
            raise SimRequestError(f"Invalid 'tool_choice': no tool named {name!r} is in "
                                  f"'tools' ({', '.join(sorted(names)) or 'none given'}).",
                                  "tool_choice")
    elif choice is not None and choice not in ("none", "auto", "required"):
        raise SimRequestError(f"Invalid 'tool_choice': {choice!r}; use 'none', 'auto', "
                              "'required' or {\"type\": \"function\", \"function\": "
                              "{\"name\": ...}}.", "tool_choice")
    elif choice == "required" and not tools:
        raise SimRequestError("Invalid 'tool_choice': 'required' needs at least one tool in "
                              "'tools'.", "tool_choice")


def _mentions_json(messages: Any) -> bool:
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str) and "json" in text.lower():
                return True
    return False


def _response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise SimRequestError(f"Invalid 'response_format.type': {kind!r}; use 'text', "
                              "'json_object' or 'json_schema'.", "response_format.type")
    if kind == "json_object" and not _mentions_json(body.get("messages")):
        raise SimRequestError("'messages' must contain the word 'json' in some form, to use "
                              "'response_format' of type 'json_object'.", "messages")
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise SimRequestError("Missing required parameter: 'response_format.json_schema"
                                  ".name'; send {\"type\": \"json_schema\", \"json_schema\": "
                                  "{\"name\": ..., \"schema\": {...}}}.",
                                  "response_format.json_schema.name",
                                  "missing_required_parameter")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict | bool):
            raise SimRequestError("Invalid 'response_format.json_schema.schema': expected a "
                                  "JSON Schema object.", "response_format.json_schema.schema",
                                  "invalid_type")


def _sampling(body: dict[str, Any], *, chat: bool) -> None:
    n = _count(body, "n", low=1, what="choices")
    if chat:
        for name in ("max_tokens", "max_completion_tokens"):
            _count(body, name, low=1, limit_key="max_tokens", what="completion tokens")
        _count(body, "top_logprobs", low=0, what="alternatives per token")
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise SimRequestError(f"Invalid type for 'logprobs': expected a boolean, but got "
                                  f"{logprobs!r}.", "logprobs", "invalid_type")
        if body.get("top_logprobs") is not None and not logprobs:
            raise SimRequestError("Invalid 'top_logprobs': it needs 'logprobs' set to true.",
                                  "top_logprobs")
    else:
        # Scoring a prompt (echo + logprobs) asks for 0 new tokens.
        _count(body, "max_tokens", low=0, what="completion tokens")
        _count(body, "logprobs", low=0, what="alternatives per token")
        best_of = _count(body, "best_of", low=1, what="candidates")
        if best_of is not None and n is not None and best_of < n:
            raise SimRequestError(f"Invalid 'best_of': {best_of} is less than 'n' ({n}); "
                                  "best_of must be at least n.", "best_of")
    seed = body.get("seed")
    if seed is not None and whole(seed) is None:
        raise SimRequestError(f"Invalid type for 'seed': expected an integer, but got "
                              f"{seed!r}.", "seed", "invalid_type")
    _stop(body)


def check_chat(body: dict[str, Any]) -> None:
    """Refuse a chat request the sim will not answer (raises SimRequestError)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimRequestError("Invalid 'messages': expected a non-empty list of messages.",
                              "messages", "invalid_type")
    _sampling(body, chat=True)
    _tools(body)
    _response_format(body)


def check_completion(body: dict[str, Any]) -> None:
    """Refuse a legacy completion request the sim will not answer."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > LIMITS["inputs"]:
        raise SimRequestError(f"Invalid 'prompt': {len(prompt)} prompts, but the maximum is "
                              f"{LIMITS['inputs']}.", "prompt")
    _sampling(body, chat=False)
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not all(
        isinstance(p, int) for p in prompt) else 1
    n = whole(body.get("n")) or 1
    if prompts * n > LIMITS["n"] * 4:
        raise SimRequestError(f"Invalid 'n': {n} choices for each of {prompts} prompts is "
                              f"{n * prompts} answers; the maximum is {LIMITS['n'] * 4}.", "n")


def check_embeddings(body: dict[str, Any]) -> None:
    """Refuse an embeddings request the sim will not answer."""
    _count(body, "dimensions", low=1, what="dimensions")
    inputs = body.get("input")
    if inputs is None:
        raise SimRequestError("Missing required parameter: 'input'.", "input",
                              "missing_required_parameter")
    flat_ids = isinstance(inputs, list) and bool(inputs) and all(
        whole(x) is not None for x in inputs)
    items = [inputs] if flat_ids or not isinstance(inputs, list) else inputs
    if not items or (isinstance(inputs, str) and not inputs):
        raise SimRequestError("Invalid 'input': it must not be empty.", "input")
    if len(items) > LIMITS["inputs"]:
        raise SimRequestError(f"Invalid 'input': {len(items)} inputs, but the maximum is "
                              f"{LIMITS['inputs']} per request; send them in batches.", "input")
    for i, item in enumerate(items):
        if isinstance(item, list):
            if not all(whole(x) is not None for x in item):
                raise SimRequestError(f"Invalid 'input[{i}]': a list input must hold token ids "
                                      "(integers).", f"input[{i}]", "invalid_type")
            size = len(item)
        elif isinstance(item, str):
            # Every token holds at least one character: count only texts that may be too long.
            size = estimate_text(item) if len(item) > LIMITS["input_tokens"] else 0
        elif whole(item) is not None:
            size = 1
        else:
            raise SimRequestError(f"Invalid 'input[{i}]': expected a string or token ids, but "
                                  f"got {type(item).__name__}.", f"input[{i}]", "invalid_type")
        if size > LIMITS["input_tokens"]:
            raise SimRequestError(
                f"This model's maximum context length is {LIMITS['input_tokens']} tokens, "
                f"however you requested {size} tokens in 'input[{i}]'; shorten it.",
                f"input[{i}]" if len(items) > 1 else "input", "context_length_exceeded")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise SimRequestError(f"Invalid 'encoding_format': {fmt!r}; use 'float' or 'base64'.",
                              "encoding_format")
