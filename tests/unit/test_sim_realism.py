"""`shipyard.sim`: n, seed, stop, structured output, tools, logprobs, and the sizes it refuses."""

from __future__ import annotations

import json
import math
import random
from enum import StrEnum
from typing import Any, Literal

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from shipyard.observe.tokens import estimate_text
from shipyard.sim.engine import SimModel, SimRequestError
from shipyard.sim.limits import LIMITS
from shipyard.sim.schema import MAX_VALUES, SchemaTooLarge, draw
from shipyard.sim.tokens import split_tokens


def chat(prompt: str = "Tell me about ships.", **extra: Any) -> dict[str, Any]:
    return {"model": "sim-chat", "messages": [{"role": "user", "content": prompt}], **extra}


def run_chat(body: dict[str, Any]) -> dict[str, Any]:
    SimModel.check("chat", body)
    return SimModel().chat(body)


def stream_chat(body: dict[str, Any]) -> list[dict[str, Any]]:
    SimModel.check("chat", body)
    return list(SimModel().chat_chunks({**body, "stream": True}))


def joined(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"] and c["choices"][0]["index"] == index)


# -- tokens --------------------------------------------------------------------------------
@given(st.text(max_size=200))
def test_split_tokens_rebuilds_the_text_and_matches_usage(text: str) -> None:
    tokens = split_tokens(text)
    assert len(tokens) == estimate_text(text)
    if tokens:
        assert "".join(tokens) == text


# -- n and seed ----------------------------------------------------------------------------
def test_n_gives_n_distinct_choices_and_counts_all_their_tokens() -> None:
    answer = run_chat(chat(n=3))
    contents = [c["message"]["content"] for c in answer["choices"]]
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert len(set(contents)) == 3
    assert contents[0] == run_chat(chat())["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] == sum(estimate_text(c) for c in contents)


def test_streamed_n_choices_match_the_whole_answer() -> None:
    whole = run_chat(chat(n=2, seed=5))
    chunks = stream_chat(chat(n=2, seed=5, stream_options={"include_usage": True}))
    for i in range(2):
        assert joined(chunks, i) == whole["choices"][i]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_seed_is_deterministic_and_changes_the_answer() -> None:
    one = run_chat(chat(seed=42))["choices"][0]["message"]["content"]
    again = SimModel(seed=9).chat(chat(seed=42))["choices"][0]["message"]["content"]
    other = run_chat(chat(seed=43))["choices"][0]["message"]["content"]
    assert one == again
    assert one != other


# -- stop ----------------------------------------------------------------------------------
def test_stop_sequences_cut_answers_and_streams() -> None:
    full = run_chat(chat())["choices"][0]["message"]["content"]
    word = full.split(" ")[3]
    answer = run_chat(chat(stop=[" " + word, "zzz"]))
    text = answer["choices"][0]["message"]["content"]
    assert text == full[: full.index(" " + word)]
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert joined(stream_chat(chat(stop=" " + word))) == text
    unused = run_chat(chat(stop="no such words"))["choices"][0]
    assert unused["message"]["content"] == full and unused["finish_reason"] == "stop"


def test_stop_applies_to_legacy_completions() -> None:
    body = {"model": "sim-chat", "prompt": "Once upon a time", "max_tokens": 50}
    full = SimModel().completion(body)["choices"][0]["text"]
    word = full.split(" ")[2]
    cut = SimModel().completion({**body, "stop": word})["choices"][0]
    assert cut["text"] == full[: full.index(word)] and cut["finish_reason"] == "stop"


# -- structured output ---------------------------------------------------------------------
class Step(BaseModel):
    explanation: str
    output: str


class Math(BaseModel):
    steps: list[Step]
    final_answer: str


class Colour(StrEnum):
    red = "red"
    green = "green"


class Node(BaseModel):
    name: str
    children: list[Node]


class Everything(BaseModel):
    colour: Colour
    mode: Literal["fast", "slow"]
    count: int
    ratio: float
    flag: bool
    maybe: str | None
    tags: list[str]
    tree: Node
    either: int | Step


SCHEMAS: list[dict[str, Any]] = [
    Math.model_json_schema(),
    Everything.model_json_schema(),
    {"type": "object", "properties": {
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "mail": {"type": "string", "format": "email"},
        "id": {"type": "string", "format": "uuid"},
        "short": {"type": "string", "minLength": 3, "maxLength": 5},
        "long": {"type": "string", "minLength": 40},
        "score": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 0.6},
        "even": {"type": "integer", "multipleOf": 2, "minimum": 10, "maximum": 20},
        "few": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 2, "maxItems": 3,
                "uniqueItems": True},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                 "items": False},
        "fixed": {"const": "v1"},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}},
                            "required": ["a"]},
                           {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
        "nullable": {"type": ["integer", "null"]},
        "extra": {"type": "object", "minProperties": 2,
                  "additionalProperties": {"type": "integer"}},
    }, "required": ["when", "day", "mail", "id", "short", "long", "score", "even", "few",
                    "pair", "fixed", "both", "nullable", "extra"],
        "additionalProperties": False},
    {"$ref": "#/definitions/list", "definitions": {"list": {
        "type": "object", "required": ["head", "tail"], "properties": {
            "head": {"type": "integer"},
            "tail": {"anyOf": [{"$ref": "#/definitions/list"}, {"type": "null"}]}}}}},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=["math", "everything", "formats", "recursive"])
def test_json_schema_answers_validate_for_many_seeds(schema: dict[str, Any]) -> None:
    for seed in range(40):
        body = chat(seed=seed, response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema, "strict": True}})
        content = run_chat(body)["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), schema,
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        assert joined(stream_chat(body)) == content
    Math.model_validate_json(run_chat(chat(response_format={
        "type": "json_schema", "json_schema": {"name": "m", "schema": Math.model_json_schema()}}
    )) ["choices"][0]["message"]["content"])


@given(seed=st.integers(0, 2**32))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_drawn_values_validate(seed: int) -> None:
    for schema in SCHEMAS:
        value = draw(schema, random.Random(seed))
        jsonschema.validate(value, schema)


def test_json_object_needs_the_word_json_and_answers_an_object() -> None:
    with pytest.raises(SimRequestError) as info:
        run_chat(chat("hello", response_format={"type": "json_object"}))
    assert info.value.param == "messages" and "json" in info.value.message
    content = run_chat(chat("answer in JSON", response_format={"type": "json_object"}))[
        "choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)


def test_max_tokens_cuts_structured_output_with_finish_length() -> None:
    body = chat(max_tokens=5, response_format={"type": "json_schema", "json_schema": {
        "name": "m", "schema": Math.model_json_schema()}})
    choice = run_chat(body)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert estimate_text(choice["message"]["content"]) <= 5


# -- tools ---------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}


def test_auto_tool_choice_calls_a_tool_with_valid_arguments() -> None:
    answer = run_chat(chat("Weather in Oslo?", tools=[WEATHER, TIME]))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        tool["function"]["parameters"])  # type: ignore[index]
    assert answer["usage"]["completion_tokens"] > 0


def test_named_tool_choice_and_none_and_after_a_tool_result() -> None:
    named = run_chat(chat(tools=[WEATHER, TIME], tool_choice={
        "type": "function", "function": {"name": "get_time"}}))["choices"][0]
    assert named["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    assert named["finish_reason"] == "stop"  # as OpenAI answers a forced call
    none = run_chat(chat(tools=[WEATHER], tool_choice="none"))["choices"][0]
    assert none["message"]["content"] and "tool_calls" not in none["message"]
    followed = run_chat({"model": "m", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}]})["choices"][0]
    assert followed["finish_reason"] == "stop" and followed["message"]["content"]


def test_streamed_tool_calls_reassemble() -> None:
    body = chat(tools=[WEATHER], tool_choice="required")
    whole = run_chat(body)["choices"][0]["message"]["tool_calls"][0]
    chunks = stream_chat(body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant" and deltas[0]["tool_calls"][0]["id"]
    arguments = "".join(d["tool_calls"][0]["function"].get("arguments", "")
                        for d in deltas if d.get("tool_calls"))
    assert arguments == whole["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# -- logprobs ------------------------------------------------------------------------------
def test_chat_logprobs_follow_the_tokens_and_are_probabilities() -> None:
    answer = run_chat(chat(logprobs=True, top_logprobs=3))
    choice = answer["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    assert len(content) == answer["usage"]["completion_tokens"]
    for entry in content:
        assert entry["logprob"] < 0 and bytes(entry["bytes"]).decode() == entry["token"]
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and tops[0]["token"] == entry["token"]
        assert sum(math.exp(t["logprob"]) for t in tops) <= 1.0 + 1e-9
        assert len({t["token"] for t in tops}) == 3
    streamed = [e for c in stream_chat(chat(logprobs=True, top_logprobs=3)) if c["choices"]
                and c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert streamed == content
    assert run_chat(chat())["choices"][0]["logprobs"] is None


def test_legacy_completion_logprobs_and_echo() -> None:
    body = {"model": "sim-chat", "prompt": "Say this", "max_tokens": 0, "echo": True,
            "logprobs": 2}
    SimModel.check("completions", body)
    choice = SimModel().completion(body)["choices"][0]
    assert choice["text"] == "Say this"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["Say", " this"] and logprobs["token_logprobs"][0] is None
    assert logprobs["text_offset"] == [0, 3]


# -- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize(("route", "body", "param", "words"), [
    ("embeddings", {"input": "x", "dimensions": 39928267929292}, "dimensions",
     f"maximum of {LIMITS['dimensions']}"),
    ("embeddings", {"input": ["x"] * 3000}, "input", "maximum is 2048"),
    ("embeddings", {"input": "word " * 9000}, "input", "maximum context length is 8192"),
    ("embeddings", {"input": "x", "dimensions": 0}, "dimensions", "minimum of 1"),
    ("chat", chat(n=1000), "n", "maximum of 128"),
    ("chat", chat(n=1.5), "n", "expected an integer"),
    ("chat", chat(max_tokens=10**12), "max_tokens", "maximum of 16384"),
    ("chat", chat(max_completion_tokens=10**9), "max_completion_tokens", "maximum of 16384"),
    ("chat", chat(logprobs=True, top_logprobs=21), "top_logprobs", "maximum of 20"),
    ("chat", chat(top_logprobs=2), "top_logprobs", "needs 'logprobs'"),
    ("chat", chat(stop=["a", "b", "c", "d", "e"]), "stop", "maximum is 4"),
    ("chat", chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name",
     "Missing"),
    ("chat", chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}),
     "tool_choice", "no tool named 'x'"),
    ("chat", chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
     "response_format.json_schema.name", "Missing"),
    ("chat", chat(response_format={"type": "yaml"}), "response_format.type", "'yaml'"),
    ("completions", {"prompt": "x", "logprobs": 6}, "logprobs", "maximum of 5"),
    ("completions", {"prompt": "x", "n": 3, "best_of": 2}, "best_of", "at least n"),
])
def test_absurd_or_malformed_requests_are_refused(route: str, body: dict[str, Any],
                                                  param: str, words: str) -> None:
    with pytest.raises(SimRequestError) as info:
        SimModel.check(route, {"model": "m", **body})
    assert info.value.param == param
    assert words in info.value.message


@pytest.mark.parametrize(("schema", "pointer"), [
    ({"type": "array", "minItems": 10**9}, ""),
    ({"type": "object", "properties": {"s": {"type": "string", "minLength": 10**8}}},
     "/properties/s"),
    ({"type": "object", "required": ["me"], "properties": {"me": {"$ref": "#"}}}, ""),
    ({"type": "array", "minItems": 5000, "items": {"type": "array", "minItems": 5000}}, ""),
])
def test_schemas_asking_for_absurd_sizes_are_refused(schema: dict[str, Any],
                                                      pointer: str) -> None:
    with pytest.raises(SchemaTooLarge) as info:
        draw(schema, random.Random(0))
    assert info.value.pointer.startswith(pointer)
    body = chat(response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                        "schema": schema}})
    with pytest.raises(SimRequestError) as refused:
        SimModel().chat(body)
    assert refused.value.param == "response_format.json_schema.schema"
    assert str(MAX_VALUES) in refused.value.message or "deeper" in refused.value.message or \
        "characters" in refused.value.message


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
KEYS = st.sampled_from(["n", "max_tokens", "max_completion_tokens", "logprobs",
                        "top_logprobs", "stop", "seed", "tools", "tool_choice",
                        "response_format", "messages", "input", "dimensions", "prompt", "echo",
                        "encoding_format", "stream_options", "best_of"])


@given(route=st.sampled_from(["chat", "completions", "embeddings"]),
       body=st.dictionaries(KEYS, JSON, max_size=6))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_body_is_answered_or_refused_never_crashes(route: str,
                                                            body: dict[str, Any]) -> None:
    model = SimModel()
    try:
        SimModel.check(route, body)
        if route == "chat":
            model.chat(body)
            list(model.chat_chunks(body))
        elif route == "completions":
            model.completion(body)
            list(model.completion_chunks(body))
        else:
            model.embeddings(body)
    except SimRequestError as exc:
        assert exc.param and exc.message
