"""The wire-format translators against request/response shapes recorded from the providers'
public API references (tests/fixtures/providers, each file names its source), streamed event
sequences included, and round trips through the reverse direction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer

from shipyard.errors import InvalidRequest, UpstreamError
from shipyard.providers.formats import anthropic, bedrock, gemini, ollama
from shipyard.providers.formats.openai import ChunkWriter, ndjson_lines, sse_events

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"},
                                 {"type": "image_url",
                                  "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 7}'},
]


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


async def _source(data: bytes, size: int = 37) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):  # odd-sized pieces: events split across reads
        yield data[i:i + size]


def _sse(name: str) -> list[tuple[str | None, dict[str, Any]]]:
    async def read() -> list[tuple[str | None, dict[str, Any]]]:
        raw = (FIXTURES / name).read_bytes()
        return [(event, json.loads(data))
                async for event, data in sse_events(_source(raw), provider="p")]
    return asyncio.run(read())


def _writer() -> ChunkWriter:
    return ChunkWriter(id="chatcmpl-x", model="m", created=1)


def _collect(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in chunks:
        delta = c["choices"][0]["delta"]
        for call in delta.get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] = call.get("id") or entry["id"]
            entry["name"] += (call.get("function") or {}).get("name") or ""
            entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
        finish = c["choices"][0]["finish_reason"] or finish
    return {"text": text, "calls": [calls[i] for i in sorted(calls)], "finish": finish}


# -- Anthropic ------------------------------------------------------------------------------
def test_anthropic_request() -> None:
    body = anthropic.to_anthropic({"model": "claude", "messages": CONVERSATION, "tools": TOOLS,
                                   "tool_choice": "required", "stop": "END", "user": "u1",
                                   "max_completion_tokens": 300, "temperature": 0.2})
    assert body["system"] == "Be brief." and body["max_tokens"] == 300
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u1"}
    user, assistant, result = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert assistant["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                     "input": {"city": "Oslo"}}]
    assert result == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp_c": 7}'}]}
    assert body["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    assert body["tool_choice"] == {"type": "any"}


def test_anthropic_answers() -> None:
    data = fixture("anthropic.json")
    plain = anthropic.from_anthropic(data["response"])
    assert plain["choices"][0]["message"]["content"] == "Hi! My name is Claude."
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["usage"] == {"prompt_tokens": 2195, "completion_tokens": 503,
                              "total_tokens": 2698, "prompt_tokens_details": {"cached_tokens": 100}}
    tool = anthropic.from_anthropic(data["tool_response"])
    call = tool["choices"][0]["message"]["tool_calls"][0]
    assert tool["choices"][0]["finish_reason"] == "tool_calls"
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA",
                                                         "unit": "celsius"}
    assert anthropic.error_message(json.dumps(data["error"]).encode()) == (
        "Overloaded", "overloaded_error")


def test_anthropic_stream() -> None:
    reader = anthropic.StreamReader(_writer())
    chunks = [c for _, event in _sse("anthropic_stream.sse") for c in reader.feed(event)]
    got = _collect(chunks)
    assert got["text"] == "Okay, let's check the weather for San Francisco, CA:"
    assert got["calls"] == [{"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
                             "arguments": '{"location": "San Francisco, CA"}'}]
    assert got["finish"] == "tool_calls" and reader.done
    assert reader.usage is not None and reader.usage["total_tokens"] == 472 + 89
    assert chunks[0]["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U"
    with pytest.raises(UpstreamError, match="overloaded_error"):
        reader.feed(fixture("anthropic.json")["stream_error"])


def test_anthropic_json_output_rides_a_forced_tool() -> None:
    payload = {"model": "c", "messages": [{"role": "user", "content": "x"}],
               "response_format": {"type": "json_schema", "json_schema": {
                   "name": "weather", "schema": {"type": "object"}}}}
    body = anthropic.to_anthropic(payload)
    assert body["tool_choice"] == {"type": "tool", "name": "weather"}
    answer = anthropic.from_anthropic({"content": [{"type": "tool_use", "id": "t", "name":
                                                    "weather", "input": {"sunny": True}}],
                                       "stop_reason": "tool_use"},
                                      json_tool=anthropic.forced_json_tool(payload))
    assert answer["choices"][0]["message"]["content"] == '{"sunny":true}'
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_anthropic_reverse_round_trip() -> None:
    request = anthropic.to_anthropic({"model": "claude", "messages": CONVERSATION,
                                      "tools": TOOLS})
    back = anthropic.to_openai(request)
    assert [m["role"] for m in back["messages"]] == ["system", "user", "assistant", "tool"]
    assert back["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    answer = anthropic.from_anthropic(fixture("anthropic.json")["tool_response"])
    native = anthropic.to_anthropic_response(answer, model="claude")
    assert native["stop_reason"] == "tool_use"
    assert native["content"][1]["input"] == {"location": "San Francisco, CA", "unit": "celsius"}


# -- Gemini ---------------------------------------------------------------------------------
def test_gemini_request() -> None:
    body = gemini.to_gemini({"model": "g", "messages": CONVERSATION, "tools": TOOLS,
                             "tool_choice": {"type": "function",
                                             "function": {"name": "get_weather"}},
                             "response_format": {"type": "json_object"}, "max_tokens": 64})
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    user, model, response = body["contents"]
    assert user["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert model == {"role": "model", "parts": [{"functionCall": {
        "name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1"}}]}
    assert response["parts"][0]["functionResponse"] == {
        "id": "call_1", "name": "get_weather", "response": {"temp_c": 7}}
    assert body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"] == "object"


def test_gemini_tool_result_needs_its_call() -> None:
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        gemini.to_gemini({"messages": [{"role": "tool", "tool_call_id": "nope",
                                        "content": "x"}]})


def test_gemini_answers() -> None:
    data = fixture("gemini.json")
    plain = gemini.from_gemini(data["response"])
    assert plain["choices"][0]["message"]["content"] == "AI learns patterns from data."
    # Thinking tokens are billed as output: they count as completion tokens.
    assert plain["usage"]["prompt_tokens"] == 8 and plain["usage"]["completion_tokens"] == 32
    call = gemini.from_gemini(data["function_call"])
    assert call["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])[
        "topic"] == "Q3 planning"
    assert gemini.from_gemini(data["blocked"])["choices"][0]["finish_reason"] == "content_filter"
    assert gemini.from_gemini(data["max_tokens"])["choices"][0]["finish_reason"] == "length"
    assert gemini.error_message(json.dumps(data["error"]).encode()) == (
        "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")


def test_gemini_stream() -> None:
    reader = gemini.StreamReader(_writer())
    chunks = [c for _, event in _sse("gemini_stream.sse") for c in reader.feed(event)]
    got = _collect(chunks)
    assert got["text"] == "The sky is blue because of Rayleigh scattering."
    assert got["finish"] == "stop" and reader.done
    assert reader.usage == {"prompt_tokens": 9, "completion_tokens": 36, "total_tokens": 45}


# -- Bedrock --------------------------------------------------------------------------------
def test_bedrock_request() -> None:
    body = bedrock.to_converse({"model": "m", "messages": CONVERSATION, "tools": TOOLS,
                                "tool_choice": "auto", "max_tokens": 100, "top_p": 0.9})
    assert body["system"] == [{"text": "Be brief."}]
    assert body["inferenceConfig"] == {"maxTokens": 100, "topP": 0.9}
    user, assistant, result = body["messages"]
    assert user["content"][1] == {"image": {"format": "png",
                                            "source": {"bytes": "iVBORw0KGgo="}}}
    assert assistant["content"][0]["toolUse"] == {"toolUseId": "call_1", "name": "get_weather",
                                                  "input": {"city": "Oslo"}}
    assert result["content"][0]["toolResult"]["toolUseId"] == "call_1"
    assert body["toolConfig"]["toolChoice"] == {"auto": {}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"] == "object"


def test_bedrock_answers() -> None:
    data = fixture("bedrock.json")
    plain = bedrock.from_converse(data["response"], model="m")
    assert plain["choices"][0]["message"]["content"] == "Hello! How can I help you today?"
    assert plain["usage"]["total_tokens"] == 21
    tool = bedrock.from_converse(data["tool_response"], model="m")
    assert tool["choices"][0]["finish_reason"] == "tool_calls"
    assert tool["choices"][0]["message"]["tool_calls"][0]["id"] == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"


def test_bedrock_event_stream_frames_decode_with_botocore() -> None:
    events = fixture("bedrock.json")["stream"]
    raw = b"".join(bedrock.encode_event(kind, payload) for kind, payload in events)
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    decoded = [(m.headers[":event-type"], json.loads(m.payload)) for m in buffer]
    assert decoded == [tuple(e) for e in events]
    reader = bedrock.StreamReader(_writer())
    got = _collect([c for kind, payload in decoded for c in reader.feed(kind, payload)])
    assert got["text"] == "I'll look up the top song."
    assert got["calls"] == [{"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "top_song",
                             "arguments": '{"sign": "WZPZ"}'}]
    assert got["finish"] == "tool_calls" and reader.done
    assert reader.usage is not None and reader.usage["total_tokens"] == 437


def test_bedrock_images_by_url_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="data: URLs"):
        bedrock.to_converse({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]})


# -- Ollama ---------------------------------------------------------------------------------
def test_ollama_request_and_answers() -> None:
    body = ollama.to_ollama({"model": "llama3.2", "messages": CONVERSATION, "tools": TOOLS,
                             "stop": ["x"], "seed": 3,
                             "response_format": {"type": "json_schema", "json_schema": {
                                 "name": "w", "schema": {"type": "object", "properties": {}}}}},
                            stream=True, keep_alive="5m")
    assert body["messages"][1]["images"] == ["iVBORw0KGgo="]
    assert body["messages"][2]["tool_calls"] == [{"function": {"name": "get_weather",
                                                               "arguments": {"city": "Oslo"}}}]
    assert body["messages"][3]["tool_name"] == "get_weather"
    assert body["options"] == {"seed": 3, "stop": ["x"]} and body["keep_alive"] == "5m"
    assert body["format"] == {"type": "object", "properties": {}}
    data = fixture("ollama.json")
    plain = ollama.from_ollama(data["response"], {"messages": []})
    assert plain["usage"] == {"prompt_tokens": 26, "completion_tokens": 298,
                              "total_tokens": 324}
    tool = ollama.from_ollama(data["tool_response"], {"messages": []})
    assert tool["choices"][0]["finish_reason"] == "tool_calls"
    cached = ollama.from_ollama(data["cached_prompt"], {"messages": [
        {"role": "user", "content": "Say hi"}]})
    assert cached["usage"]["estimated"] is True and cached["usage"]["completion_tokens"] == 2
    assert cached["choices"][0]["finish_reason"] == "length"
    assert "not found" in ollama.error_message(json.dumps(data["error"]).encode())


def test_ollama_stream() -> None:
    async def read() -> list[dict[str, Any]]:
        raw = (FIXTURES / "ollama_stream.ndjson").read_bytes()
        return [json.loads(line) async for line in ndjson_lines(_source(raw))]

    reader = ollama.StreamReader(_writer(), {"messages": []})
    got = _collect([c for line in asyncio.run(read()) for c in reader.feed(line)])
    assert got["text"] == "The sky is blue." and got["finish"] == "stop" and reader.done
    assert reader.usage == {"prompt_tokens": 26, "completion_tokens": 282, "total_tokens": 308}


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "bedrock", "ollama"])
def test_unsupported_options_are_refused(kind: str) -> None:
    translate = {"anthropic": anthropic.to_anthropic, "gemini": gemini.to_gemini,
                 "bedrock": bedrock.to_converse,
                 "ollama": lambda p: ollama.to_ollama(p, stream=False)}[kind]
    with pytest.raises(InvalidRequest, match="'n' is 3"):
        translate({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3})
