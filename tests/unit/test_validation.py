"""`shipyard.gateway.validation`: rejections name the parameter and say how to fix it."""

from __future__ import annotations

from typing import Any

import pytest

from shipyard.errors import InvalidRequest
from shipyard.gateway.validation import validate_chat, validate_completion, validate_embeddings

USER = [{"role": "user", "content": "Hello"}]


def rejection(validate: Any, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        validate(body)
    exc = info.value
    assert exc.status == 400
    assert exc.message.endswith(".")
    assert exc.to_dict()["error"]["param"] == exc.param
    return exc


CHAT_REJECTIONS = [
    # (body, param, code, words the message must contain)
    ({"messages": USER}, "model", "missing_required_parameter", "GET /v1/models"),
    ({"model": "", "messages": USER}, "model", "invalid_type", "non-empty string"),
    ({"model": 3, "messages": USER}, "model", "invalid_type", "is 3"),
    ({"model": "m"}, "messages", "missing_required_parameter", '"role": "user"'),
    ({"model": "m", "messages": []}, "messages", "invalid_type", "non-empty list"),
    ({"model": "m", "messages": "hi"}, "messages", "invalid_type", "non-empty list"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type", "is str"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "invalid_value", "'robot'; it must be one of"),
    ({"model": "m", "messages": [*USER, {"role": "user"}]}, "messages[1].content",
     "missing_required_parameter", "needs content"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "invalid_type", "string or a list of content parts"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0]", "invalid_type", '"type"'),
    ({"model": "m", "messages": USER, "stream": "yes"}, "stream", "invalid_type",
     "true or false"),
    ({"model": "m", "messages": USER, "stream_options": {"include_usage": True}},
     "stream_options", "invalid_value", "only allowed when 'stream' is true"),
    ({"model": "m", "messages": USER, "stream": True, "stream_options": True},
     "stream_options", "invalid_type", "include_usage"),
    ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value",
     "at least 1"),
    ({"model": "m", "messages": USER, "max_tokens": True}, "max_tokens", "invalid_type",
     "an integer"),
    ({"model": "m", "messages": USER, "max_completion_tokens": 1.5}, "max_completion_tokens",
     "invalid_type", "an integer"),
    ({"model": "m", "messages": USER, "n": -1}, "n", "invalid_value", "at least 1"),
    ({"model": "m", "messages": USER, "n": 1000}, "n", "bound_exceeded",
     "at most 128 (server.bounds.max_n)"),
    ({"model": "m", "messages": USER, "max_tokens": 10**18}, "max_tokens", "bound_exceeded",
     "server.bounds.max_tokens"),
    ({"model": "m", "messages": USER, "top_logprobs": 21}, "top_logprobs", "bound_exceeded",
     "at most 20 (server.bounds.max_top_logprobs)"),
    ({"model": "m", "messages": [{"role": "tool", "tool_call_id": "c"}]},
     "messages[0].content", "missing_required_parameter", "needs content"),
    ({"model": "m", "messages": USER, "temperature": 2.5}, "temperature", "invalid_value",
     "from 0 to 2"),
    ({"model": "m", "messages": USER, "temperature": "hot"}, "temperature", "invalid_value",
     "from 0 to 2"),
    ({"model": "m", "messages": USER, "top_p": 1.1}, "top_p", "invalid_value", "from 0 to 1"),
]


@pytest.mark.parametrize(("body", "param", "code", "words"), CHAT_REJECTIONS)
def test_chat_rejections(body: dict[str, Any], param: str, code: str, words: str) -> None:
    exc = rejection(validate_chat, body)
    assert exc.param == param
    assert exc.code == code
    assert f"'{param}'" in exc.message
    assert words in exc.message


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": "m"}, "prompt", "send a string"),
    ({"model": "m", "prompt": 5}, "prompt", "list of token ids"),
    ({"model": "m", "prompt": [{"x": 1}]}, "prompt", "list of strings"),
    ({"model": "m", "prompt": ["a", 1]}, "prompt", "list of strings"),
    ({"model": "m", "prompt": "hi", "max_tokens": -2}, "max_tokens", "at least 0"),
    ({"model": "m", "prompt": ["x"] * 2049}, "prompt", "server.bounds.max_inputs"),
    ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs", "server.bounds.max_logprobs"),
    ({"model": "m", "prompt": "x", "best_of": 21}, "best_of", "server.bounds.max_best_of"),
    ({"prompt": "hi"}, "model", "GET /v1/models"),
])
def test_completion_rejections(body: dict[str, Any], param: str, words: str) -> None:
    exc = rejection(validate_completion, body)
    assert exc.param == param
    assert words in exc.message


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": "e"}, "input", "string or a list of strings"),
    ({"model": "e", "input": ""}, "input", "non-empty string"),
    ({"model": "e", "input": []}, "input", "non-empty list"),
    ({"model": "e", "input": ["ok", ""]}, "input", "non-empty strings"),
    ({"model": "e", "input": [[1, "a"]]}, "input", "token ids"),
    ({"model": "e", "input": {"text": "x"}}, "input", "non-empty string"),
    ({"model": "e", "input": "x", "encoding_format": "hex"}, "encoding_format",
     "'float' or 'base64'"),
    ({"model": "e", "input": "x", "dimensions": 0}, "dimensions", "at least 1"),
    ({"model": "e", "input": "x", "dimensions": "64"}, "dimensions", "an integer"),
    ({"model": "e", "input": "x", "dimensions": 39928267929292}, "dimensions",
     "at most 65536 (server.bounds.max_dimensions)"),
    ({"model": "e", "input": ["x"] * 2049}, "input", "at most 2048 (server.bounds.max_inputs)"),
    ({"model": "e", "input": [[1] * 1000] * 301}, "input", "server.bounds.max_input_tokens"),
    ({"input": "x"}, "model", "GET /v1/models"),
])
def test_embeddings_rejections(body: dict[str, Any], param: str, words: str) -> None:
    exc = rejection(validate_embeddings, body)
    assert exc.param == param
    assert words in exc.message


def test_valid_chat_with_unknown_params_passes() -> None:
    body = {
        "model": "demo",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "top_p": 1,
        "max_completion_tokens": 10,
        "n": 1,
        "response_format": {"type": "json_object"},
        "some_future_openai_param": {"anything": [1, 2, 3]},
    }
    before = repr(body)
    assert validate_chat(body) == ("demo", True)
    assert repr(body) == before  # validation never rewrites the request


def test_stream_defaults_to_false() -> None:
    assert validate_chat({"model": "m", "messages": USER}) == ("m", False)
    assert validate_chat({"model": "m", "messages": USER, "stream": None}) == ("m", False)


def test_valid_completion_forms() -> None:
    for prompt in ("hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert validate_completion({"model": "c", "prompt": prompt, "logprobs": 2,
                                    "echo": True}) == ("c", False)


def test_valid_embeddings_forms() -> None:
    for value in ("text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        assert validate_embeddings({"model": "e", "input": value, "encoding_format": "base64",
                                    "dimensions": 256, "user": "u-1"}) == "e"


@pytest.mark.parametrize("message", [
    {"role": "assistant"},
    {"role": "assistant", "tool_calls": []},
    {"role": "assistant", "audio": {"id": "audio_abc123"}},
    {"role": "assistant", "content": None, "refusal": "No."},
    {"role": "function", "name": "f", "content": None},
    {"role": "function", "name": "f"},
])
def test_messages_openai_accepts_without_content_are_accepted(message: dict[str, Any]) -> None:
    assert validate_chat({"model": "m", "messages": [*USER, message]}) == ("m", False)


@pytest.mark.parametrize("body", [
    {"model": "m", "prompt": None},
    {"model": "m", "prompt": []},
    {"model": "m", "prompt": "score me", "max_tokens": 0, "echo": True, "logprobs": 0},
    {"model": "m", "prompt": [[1, 2], [3]]},
    {"model": "m", "prompt": [1, 2, 3]},
])
def test_completions_openai_accepts_are_accepted(body: dict[str, Any]) -> None:
    assert validate_completion(body) == ("m", False)


def test_whole_number_floats_are_integers_and_forwarded_as_integers() -> None:
    chat = {"model": "m", "messages": USER, "n": 1.0, "max_tokens": 16.0,
            "max_completion_tokens": 8.0, "top_logprobs": 2.0, "seed": 7.0}
    validate_chat(chat)
    assert [type(chat[k]) for k in ("n", "max_tokens", "max_completion_tokens",
                                    "top_logprobs", "seed")] == [int] * 5
    assert chat["max_tokens"] == 16
    embed = {"model": "e", "input": "x", "dimensions": 64.0}
    validate_embeddings(embed)
    assert embed["dimensions"] == 64 and type(embed["dimensions"]) is int
    completion = {"model": "m", "prompt": "x", "max_tokens": 0.0, "logprobs": 1.0}
    validate_completion(completion)
    assert completion["max_tokens"] == 0 and type(completion["max_tokens"]) is int


def test_bounds_come_from_the_config() -> None:
    from shipyard.config.server import BoundsConfig

    bounds = BoundsConfig(max_n=4, max_dimensions=1024)
    assert validate_chat({"model": "m", "messages": USER, "n": 4}, bounds) == ("m", False)
    with pytest.raises(InvalidRequest, match=r"at most 4 \(server.bounds.max_n\)"):
        validate_chat({"model": "m", "messages": USER, "n": 5}, bounds)
    with pytest.raises(InvalidRequest, match=r"server\.bounds\.max_dimensions"):
        validate_embeddings({"model": "e", "input": "x", "dimensions": 1025}, bounds)
