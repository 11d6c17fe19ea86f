"""Validation of OpenAI-shaped requests, with errors that name the parameter and the fix.

What is checked follows OpenAI's published request schemas (github.com/openai/openai-openapi;
`tests/fixtures/openai-openapi/` holds the parts the conformance tests replay): a request that
the schema accepts is not refused here, except above this gateway's bounds on size-like
parameters (`server.bounds`, each refusal names the parameter and the bound) and for the
semantic rules OpenAI itself enforces (e.g. `stream_options` only with `stream`, a non-empty
embeddings input). JSON numbers with a zero fraction (`1.0`) are integers in JSON Schema, so
integer parameters accept them and are forwarded as integers. Every parameter not checked here
passes through to the upstream untouched, so new OpenAI features work without a Shipyard
release.
"""

from __future__ import annotations

from typing import Any

from shipyard.config.server import BoundsConfig
from shipyard.errors import InvalidRequest

__all__ = ["validate_chat", "validate_completion", "validate_embeddings"]

_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# Roles whose messages may leave `content` out or null: an assistant turn that only calls
# tools (or refused, or carries audio), and a function result with no output.
_CONTENT_OPTIONAL = {"assistant", "function"}
_DEFAULT_BOUNDS = BoundsConfig()


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


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None,
             bound: str | None = None) -> int | None:
    """An integer parameter (null or absent: None), normalised in `body` when sent as a whole
    float; below `low` is invalid, above `high` exceeds the gateway's bound `bound`."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = body[name] = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"Parameter '{name}' is {value!r}; it must be an integer.", name,
                   "invalid_type")
    if value < low:
        raise _bad(f"Parameter '{name}' is {value}; it must be at least {low}.", name)
    if high is not None and value > high:
        raise _bad(f"Parameter '{name}' is {value}; this gateway allows at most {high} "
                   f"(server.bounds.{bound}). Ask for less.", name, "bound_exceeded")
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not low <= value <= high):
        raise _bad(f"Parameter '{name}' is {value!r}; it must be a number from {low:g} to "
                   f"{high:g}.", name)


def _common(body: dict[str, Any], bounds: BoundsConfig) -> bool:
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
    _integer(body, "n", 1, bounds.max_n, "max_n")
    _integer(body, "seed", -(2**64))  # any integer: the upstream knows its own range
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    return bool(stream)


def _content(message: dict[str, Any], role: str, where: str) -> None:
    if "content" not in message or message["content"] is None:
        if role in _CONTENT_OPTIONAL:
            return
        raise _bad(f"'{where}.content' is missing; every {role} message needs content (a "
                   "string or a list of content parts).", f"{where}.content",
                   "missing_required_parameter")
    content = message["content"]
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _bad(f"'{where}.content[{j}]' must be a content part object with a "
                           '"type", such as {"type": "text", "text": "Hello"}.',
                           f"{where}.content[{j}]", "invalid_type")
    elif not isinstance(content, str):
        raise _bad(f"'{where}.content' is {type(content).__name__}; it must be a string or "
                   "a list of content parts.", f"{where}.content", "invalid_type")


def validate_chat(body: dict[str, Any], bounds: BoundsConfig = _DEFAULT_BOUNDS
                  ) -> tuple[str, bool]:
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
        _content(message, role, where)
    _integer(body, "max_tokens", 1, bounds.max_tokens, "max_tokens")
    _integer(body, "max_completion_tokens", 1, bounds.max_tokens, "max_tokens")
    _integer(body, "top_logprobs", 0, bounds.max_top_logprobs, "max_top_logprobs")
    return model, _common(body, bounds)


def _is_token(value: Any) -> bool:
    """A token id: a JSON integer. The JSON parser reads integers beyond 64 bits as whole
    floats; they are still integers to JSON Schema (and to OpenAI's document)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


def _token_count(items: list[Any]) -> int:
    """Token ids in a token-array input (a list of ints, or a list of such lists)."""
    return sum(len(i) if isinstance(i, list) else 1 for i in items
               if isinstance(i, list) or _is_token(i))


def _inputs(value: list[Any], name: str, bounds: BoundsConfig) -> None:
    if len(value) > bounds.max_inputs:
        raise _bad(f"Parameter '{name}' has {len(value)} items; this gateway allows at most "
                   f"{bounds.max_inputs} (server.bounds.max_inputs). Split the request.", name,
                   "bound_exceeded")
    tokens = _token_count(value)
    if tokens > bounds.max_input_tokens:
        raise _bad(f"Parameter '{name}' holds {tokens} token ids; this gateway allows at most "
                   f"{bounds.max_input_tokens} (server.bounds.max_input_tokens). Split the "
                   "request.", name, "bound_exceeded")


def validate_completion(body: dict[str, Any], bounds: BoundsConfig = _DEFAULT_BOUNDS
                        ) -> tuple[str, bool]:
    """Check a legacy completion request; returns (model, stream). `prompt` may be null (the
    model starts a new document) or an empty list, as OpenAI's schema allows."""
    model = _require_model(body)
    if "prompt" not in body:
        raise _bad("Missing required parameter 'prompt'; send a string (or null for a new "
                   "document).", "prompt", "missing_required_parameter")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        ok = all(isinstance(p, str) for p in prompt) or bool(prompt and (
            all(_is_token(p) for p in prompt)
            or all(isinstance(p, list) and p and all(_is_token(t) for t in p)
                   for p in prompt)))
        if not ok:
            raise _bad("Parameter 'prompt' must be a string, a list of strings, a list of token "
                       "ids or a list of token id lists.", "prompt", "invalid_type")
        _inputs(prompt, "prompt", bounds)
    elif prompt is not None and not isinstance(prompt, str):
        raise _bad("Parameter 'prompt' must be a string, a list of strings or a list of token "
                   "ids.", "prompt", "invalid_type")
    _integer(body, "max_tokens", 0, bounds.max_tokens, "max_tokens")
    _integer(body, "logprobs", 0, bounds.max_logprobs, "max_logprobs")
    _integer(body, "best_of", 0, bounds.max_best_of, "max_best_of")
    return model, _common(body, bounds)


def validate_embeddings(body: dict[str, Any], bounds: BoundsConfig = _DEFAULT_BOUNDS) -> str:
    """Check an embeddings request; returns the model."""
    model = _require_model(body)
    value = body.get("input")
    if value is None:
        raise _bad("Missing required parameter 'input'; send a string or a list of strings.",
                   "input", "missing_required_parameter")
    ok = (isinstance(value, str) and value != "") or bool(
        isinstance(value, list) and value and all(
            (isinstance(v, str) and v != "") or _is_token(v)
            or (isinstance(v, list) and v and all(_is_token(t) for t in v))
            for v in value))
    if not ok:
        raise _bad("Parameter 'input' must be a non-empty string, a non-empty list of non-empty "
                   "strings, or token ids.", "input", "invalid_value")
    if isinstance(value, list):
        _inputs(value, "input", bounds)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _bad(f"Parameter 'encoding_format' is {fmt!r}; it must be 'float' or 'base64'.",
                   "encoding_format")
    _integer(body, "dimensions", 1, bounds.max_dimensions, "max_dimensions")
    return model
