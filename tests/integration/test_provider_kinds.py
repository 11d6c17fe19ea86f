"""Every translating provider kind end to end: the official `openai` SDK against a real
`shipyard serve`, whose upstreams are real `shipyard sim --format KIND` processes speaking the
Anthropic, Gemini, Bedrock (SigV4-checked), Ollama and Azure OpenAI wire APIs.

Chat, streams, tools, JSON output, errors, usage and cost, traces and cross-kind failover go
through the same gateway code paths as `kind: openai`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import create_engine

from conftest import API_KEY, Proc, launch_gateway, launch_sim
from shipyard.store import TraceFilter, iter_traces

KEYS = {"anthropic": "sk-ant-sim", "gemini": "gemini-sim-key", "bedrock": "aws-secret-sim",
        "ollama": "ollama-sim-key", "azure": "azure-sim-key"}
# alias → (sim format, upstream model)
ALIASES = {
    "claude": ("anthropic", "claude-sonnet-4-5-20250929"),
    "gem": ("gemini", "gemini-2.5-flash"),
    "bed": ("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0"),
    "oll": ("ollama", "llama3.2"),
    "az": ("azure", "gpt-4o"),
}
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
HELLO = [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Hello there"}]


def _config(sims: dict[str, Proc], store: str) -> str:
    return f"""
store:
  url: {store}
traces:
  flush_interval_s: 0.05
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
pricing:
  llama3.2: {{input_per_1m: 0.5, output_per_1m: 1.0}}
providers:
  anthropic:
    kind: anthropic
    base_url: {sims['anthropic'].url}/v1
    api_key: {{$env: SIM_ANTHROPIC_KEY}}
  gemini:
    kind: gemini
    base_url: {sims['gemini'].url}/v1beta
    api_key: {{$env: SIM_GEMINI_KEY}}
  bedrock:
    kind: bedrock
    region: us-east-1
    base_url: {sims['bedrock'].url}
    aws_access_key_id: {{$env: SIM_AWS_KEY_ID}}
    aws_secret_access_key: {{$env: SIM_AWS_SECRET}}
  ollama:
    kind: ollama
    base_url: {sims['ollama'].url}
    api_key: {{$env: SIM_OLLAMA_KEY}}
  azure:
    kind: azure
    base_url: {sims['azure'].url}
    api_key: {{$env: SIM_AZURE_KEY}}
    deployments: {{gpt-4o: prod-gpt4o}}
  azure-entra:
    kind: azure
    base_url: {sims['azure'].url}
    entra_token: {{$env: SIM_AZURE_KEY}}
    api_version: v1
  anthropic-badkey:
    kind: anthropic
    base_url: {sims['anthropic'].url}/v1
    api_key: {{$env: SIM_WRONG_KEY}}
models:
""" + "".join(f"""  {alias}:
    provider: {kind}
    model: {model}
    retry: {{attempts: 1}}
""" for alias, (kind, model) in ALIASES.items()) + """  az-entra:
    provider: azure-entra
    model: gpt-4o
  claude-badkey:
    provider: anthropic-badkey
    model: claude-sonnet-4-5
  claude-or-gem:
    provider: anthropic
    model: claude-sonnet-4-5
    retry: {attempts: 1}
    fallbacks: [gem]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("kinds")
    sims: dict[str, Proc] = {}
    try:
        for kind, key in KEYS.items():
            sims[kind] = launch_sim(folder, "--format", kind, "--api-key", key)
        store = f"sqlite:///{folder}/store.db"
        env = {"SIM_ANTHROPIC_KEY": KEYS["anthropic"], "SIM_GEMINI_KEY": KEYS["gemini"],
               "SIM_AWS_KEY_ID": "AKIDSIMULATED", "SIM_AWS_SECRET": KEYS["bedrock"],
               "SIM_OLLAMA_KEY": KEYS["ollama"], "SIM_AZURE_KEY": KEYS["azure"],
               "SIM_WRONG_KEY": "sk-ant-wrong"}
        gateway = launch_gateway(folder, _config(sims, store), env=env)
        try:
            yield {"sims": sims, "gateway": gateway, "store": store}
        finally:
            gateway.stop()
    finally:
        for sim in sims.values():
            sim.stop()


@pytest.fixture
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['gateway'].url}/v1", api_key=API_KEY, max_retries=0)


def set_faults(sim: Proc, **knobs: Any) -> None:
    request = urllib.request.Request(f"{sim.url}/_sim/faults", method="PUT",
                                     data=json.dumps(knobs).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def trace_of(store: str, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    engine = create_engine(store)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for row in iter_traces(engine, TraceFilter(), limit=500):
                if row["request_id"] == request_id:
                    return dict(row)
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"no trace for {request_id}")


@pytest.mark.parametrize("alias", [*ALIASES, "az-entra"])
def test_chat_usage_cost_and_trace(client: openai.OpenAI, stack: dict[str, Any],
                                   alias: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=alias, messages=HELLO,
                                                           max_tokens=200)
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content and answer.choices[0].message.content.endswith(".")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert "x-shipyard-usage-estimated" not in raw.headers
    trace = trace_of(stack["store"], raw.request_id or "")
    kind = ALIASES.get(alias, ("azure",))[0]
    assert trace["provider"] == ("azure-entra" if alias == "az-entra" else kind)
    assert trace["status"] == 200 and not trace["tokens_estimated"]
    assert trace["prompt_tokens"] == answer.usage.prompt_tokens
    assert trace["cost_usd"] is not None and trace["cost_usd"] > 0


@pytest.mark.parametrize("alias", list(ALIASES))
def test_stream_matches_the_complete_answer(client: openai.OpenAI, stack: dict[str, Any],
                                            alias: str) -> None:
    complete = client.chat.completions.create(model=alias, messages=HELLO, max_tokens=200)
    chunks = list(client.chat.completions.create(
        model=alias, messages=HELLO, max_tokens=200, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == complete.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.total_tokens == complete.usage.total_tokens  # type: ignore[union-attr]
    # Without include_usage the client gets no usage event, yet the trace has exact tokens.
    raw = client.chat.completions.with_raw_response.create(model=alias, messages=HELLO,
                                                           max_tokens=200, stream=True)
    plain = list(raw.parse())
    assert all(c.usage is None for c in plain)
    trace = trace_of(stack["store"], raw.request_id or "")
    assert trace["total_tokens"] == complete.usage.total_tokens  # type: ignore[union-attr]
    assert not trace["tokens_estimated"] and trace["cost_usd"] > 0


@pytest.mark.parametrize("alias", list(ALIASES))
def test_tool_calls_both_ways(client: openai.OpenAI, alias: str) -> None:
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    answer = client.chat.completions.create(model=alias, messages=ask,  # type: ignore[arg-type]
                                            tools=WEATHER, tool_choice=forced)  # type: ignore[arg-type]
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    # OpenAI (and Azure) end a turn whose tool_choice names the function with `stop`; the
    # other kinds' APIs end any tool-calling turn in their own tool-use reason.
    expected = "stop" if alias == "az" else "tool_calls"
    assert answer.choices[0].finish_reason == expected
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    # Streamed, the call arrives in pieces that add up to the same arguments.
    parts: dict[str, str] = {"name": "", "arguments": ""}
    for chunk in client.chat.completions.create(
            model=alias, messages=ask, tools=WEATHER, tool_choice=forced,  # type: ignore[arg-type]
            stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            parts["name"] += delta.function.name or "" if delta.function else ""
            parts["arguments"] += delta.function.arguments or "" if delta.function else ""
    assert parts["name"] == "get_weather" and json.loads(parts["arguments"]) == arguments
    # The tool's result goes back upstream in the kind's own shape, and the model answers.
    follow = client.chat.completions.create(model=alias, tools=WEATHER, messages=[  # type: ignore[arg-type]
        *ask, {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": call.function.arguments}}]},  # type: ignore[union-attr]
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 7}'}])
    assert follow.choices[0].message.content and follow.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("alias", list(ALIASES))
def test_json_output(client: openai.OpenAI, alias: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"]}
    answer = client.chat.completions.create(
        model=alias, messages=[{"role": "user", "content": "Weather in Oslo as JSON"}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "weather", "schema": schema}})
    value = json.loads(answer.choices[0].message.content or "")
    assert set(value) == {"city", "sunny"} and isinstance(value["sunny"], bool)
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("alias", list(ALIASES))
def test_provider_errors_keep_their_message(client: openai.OpenAI, stack: dict[str, Any],
                                            alias: str) -> None:
    sim = stack["sims"][ALIASES[alias][0]]
    try:
        set_faults(sim, error_rates={"429": 1.0}, retry_after_s=7)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=alias, messages=HELLO)
        assert "Simulated 429 error." in limited.value.message
        assert limited.value.response.headers.get("retry-after") == "7"
        set_faults(sim, error_rates={"500": 1.0})
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model=alias, messages=HELLO, stream=True)
        assert failed.value.status_code == 502
        assert "Simulated 500 error." in failed.value.message
        set_faults(sim, cut_rate=1.0, cut_after_chunks=3)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model=alias, messages=HELLO, stream=True))
    finally:
        set_faults(sim)


def test_bad_credentials_name_the_key(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="claude-badkey", messages=HELLO)
    assert failed.value.status_code == 502
    assert "providers.anthropic-badkey.api_key" in failed.value.message
    assert "Invalid API key" in failed.value.message  # the upstream's own words


def test_failover_crosses_kinds(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    sim = stack["sims"]["anthropic"]
    try:
        set_faults(sim, error_rates={"503": 1.0})  # Anthropic answers 529 overloaded
        raw = client.chat.completions.with_raw_response.create(model="claude-or-gem",
                                                               messages=HELLO)
        assert raw.headers["x-shipyard-model"] == "gem"
        assert raw.parse().choices[0].message.content
        trace = trace_of(stack["store"], raw.request_id or "")
        assert trace["provider"] == "gemini"
    finally:
        set_faults(sim)


def test_unsupported_options_are_the_callers_mistake(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="claude", messages=HELLO, n=2)
    assert "'n' is 2" in bad.value.message


def test_sims_count_requests_by_format(stack: dict[str, Any]) -> None:
    with urllib.request.urlopen(f"{stack['sims']['bedrock'].url}/_sim/stats") as response:
        stats = json.loads(response.read())
    assert stats.get("requests", 0) > 0 and any(k.startswith("converse:") for k in stats)

