"""Validation of OpenAI-shaped requests, with errors that name the parameter and the fix.

Only what Shipyard relies on is checked; every other parameter passes through to the
upstream untouched, so new OpenAI features work without a Shipyard release.
"""

from __future__ import annotations

from typing import Any

from shipyard.errors import InvalidRequest

__all__ = ["validate_chat", "validate_completion", "validate_embeddings"]

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _bad("Missing required parameter 'model'; name one of the models listed by "
                   "GET /v1/models.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad(f"Parameter 'model' is {model!r}; it must be a non-empty string naming one of "
                   "the models listed by GET /v1/models.", "model", "invalid_type")
    return model


def _common(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad(f"Parameter 'stream' is {stream!r}; it must be true or false.", "stream",
                   "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("Parameter 'stream_options' must be an object such as "
                       '{"include_usage": true}.', "stream_options", "invalid_type")
        if not stream:
            raise _bad("Parameter 'stream_options' is only allowed when 'stream' is true.",
                       "stream_options")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise _bad(f"Parameter '{name}' is {value!r}; it must be a positive integer.", name)
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, int | float)
                                    or not 0 <= temperature <= 2):
        raise _bad(f"Parameter 'temperature' is {temperature!r}; it must be a number from 0 "
                   "to 2.", "temperature")
    top_p = body.get("top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float)
                              or not 0 <= top_p <= 1):
        raise _bad(f"Parameter 'top_p' is {top_p!r}; it must be a number from 0 to 1.", "top_p")
    return bool(stream)


def validate_chat(body: dict[str, Any]) -> tuple[str, bool]:
    """Check a chat completion request; returns (model, stream)."""
    model = _require_model(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter 'messages'; send a list such as "
                   '[{"role": "user", "content": "Hello"}].', "messages",
                   "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("Parameter 'messages' must be a non-empty list of message objects such as "
                   '{"role": "user", "content": "Hello"}.', "messages", "invalid_type")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{where}' is {type(message).__name__}; each message must be an object "
                       'with "role" and "content".', where, "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad(f"'{where}.role' is {role!r}; it must be one of "
                       f"{', '.join(sorted(_ROLES))}.", f"{where}.role")
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")
                                        or "refusal" in message):
                continue
            raise _bad(f"'{where}.content' is missing; every {role} message needs content (a "
                       "string or a list of content parts).", f"{where}.content",
                       "missing_required_parameter")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(f"'{where}.content[{j}]' must be a content part object with a "
                               '"type", such as {"type": "text", "text": "Hello"}.',
                               f"{where}.content[{j}]", "invalid_type")
        elif not isinstance(content, str):
            raise _bad(f"'{where}.content' is {type(content).__name__}; it must be a string or "
                       "a list of content parts.", f"{where}.content", "invalid_type")
    return model, _common(body)


def validate_completion(body: dict[str, Any]) -> tuple[str, bool]:
    """Check a legacy completion request; returns (model, stream)."""
    model = _require_model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("Missing required parameter 'prompt'; send a string.", "prompt",
                   "missing_required_parameter")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
            isinstance(p, str | int | list) for p in prompt))):
        raise _bad("Parameter 'prompt' must be a string, a list of strings or a list of token "
                   "ids.", "prompt", "invalid_type")
    return model, _common(body)


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; returns the model."""
    model = _require_model(body)
    value = body.get("input")
    if value is None:
        raise _bad("Missing required parameter 'input'; send a string or a list of strings.",
                   "input", "missing_required_parameter")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and value and all(
            (isinstance(v, str) and v != "") or isinstance(v, int) or
            (isinstance(v, list) and v and all(isinstance(t, int) for t in v))
            for v in value))
    if not ok:
        raise _bad("Parameter 'input' must be a non-empty string, a non-empty list of non-empty "
                   "strings, or token ids.", "input", "invalid_value")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _bad(f"Parameter 'encoding_format' is {fmt!r}; it must be 'float' or 'base64'.",
                   "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise _bad(f"Parameter 'dimensions' is {dims!r}; it must be a positive integer.",
                   "dimensions")
    return model
