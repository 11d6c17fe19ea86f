"""Hosted Python services and python/sim providers, through a real `shipyard serve`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from test_openai_sdk import _http

from conftest import API_KEY, Proc

CONFIG = """
store:
  url: sqlite:///{folder}/store.db
auth:
  api_keys: [{{$env: SHIPYARD_API_KEY}}]
providers:
  py:
    kind: python
    function: sample_services:echo_model
  py-stream:
    kind: python
    function: sample_services:stream_model
  py-astream:
    kind: python
    function: sample_services:async_stream_model
  local:
    kind: sim
models:
  echo: {{provider: py}}
  words: {{provider: py-stream}}
  async-words: {{provider: py-astream}}
  inproc: {{provider: local, model: sim-chat}}
services:
  loan:
    function: sample_services:score_loan
    input_model: sample_services:Loan
    description: Scores a loan application.
  classify:
    function: sample_services:classify
    capture: full
    input_schema:
      type: object
      required: [text]
      additionalProperties: false
      properties:
        text: {{type: string, minLength: 1}}
  slow-sync:
    function: sample_services:slow_sync
  slow-async:
    function: sample_services:slow_async
  broken:
    function: sample_services:broken
  short:
    function: sample_services:slow_sync
    timeout_s: 0.2
"""


@pytest.fixture
def gateway(start_gateway: Callable[..., Proc], tmp_path: Path) -> Proc:
    return start_gateway(CONFIG.format(folder=tmp_path))


def invoke(gateway: Proc, name: str, body: Any) -> tuple[int, Any]:
    return _http("POST", f"{gateway.url}/v1/services/{name}/invoke", json.dumps(body).encode())


def test_pydantic_service(gateway: Proc) -> None:
    status, body = invoke(gateway, "loan", {"amount": 12000, "term_months": 24})
    assert status == 200
    assert body["object"] == "service.result" and body["service"] == "loan"
    assert body["output"] == {"risk": 0.5, "approved": False}


def test_pydantic_validation_names_field_value_and_type(gateway: Proc) -> None:
    status, body = invoke(gateway, "loan", {"amount": "lots", "term_months": 24})
    assert status == 422
    message = body["error"]["message"]
    assert "'amount'" in message and "'lots'" in message and "number" in message
    assert body["error"]["param"] == "amount"
    status, body = invoke(gateway, "loan", {"amount": 5})
    assert status == 422 and "'term_months' is required" in body["error"]["message"]


def test_json_schema_service(gateway: Proc) -> None:
    status, body = invoke(gateway, "classify", {"text": "I want a refund"})
    assert status == 200 and body["output"]["label"] == "complaint"
    status, body = invoke(gateway, "classify", {"text": 42})
    assert status == 422
    assert "'text' is 42; expected type string" in body["error"]["message"]
    status, body = invoke(gateway, "classify", {})
    assert status == 422 and "'text' is required" in body["error"]["message"]
    status, body = invoke(gateway, "classify", {"text": "x", "extra": 1})
    assert status == 422 and "extra" in body["error"]["message"]


def test_unknown_service_and_listing(gateway: Proc) -> None:
    status, body = invoke(gateway, "nope", {})
    assert status == 404 and "classify" in body["error"]["message"]
    status, body = _http("GET", f"{gateway.url}/v1/services")
    assert status == 200
    loan = next(s for s in body["data"] if s["id"] == "loan")
    assert loan["input_schema"]["required"] == ["amount", "term_months"]


def test_service_errors_are_clear(gateway: Proc) -> None:
    status, body = invoke(gateway, "broken", {})
    assert status == 500
    assert body["error"]["type"] == "service_error"
    assert "RuntimeError: the model file is missing" in body["error"]["message"]
    status, body = invoke(gateway, "short", {"seconds": 1})
    assert status == 504 and "0.2s" in body["error"]["message"]


@pytest.mark.parametrize("service", ["slow-sync", "slow-async"])
def test_slow_functions_do_not_block_the_loop(gateway: Proc, service: str) -> None:
    results: list[int] = []

    def call() -> None:
        results.append(invoke(gateway, service, {"seconds": 1.0})[0])

    threads = [threading.Thread(target=call) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    probe_started = time.monotonic()
    status, _ = _http("GET", f"{gateway.url}/livez", auth=False)
    probe_s = time.monotonic() - probe_started
    for thread in threads:
        thread.join()
    assert status == 200 and probe_s < 0.5  # the loop answered while 4 calls were running
    assert results == [200] * 4
    assert time.monotonic() - started < 2.5  # they ran side by side, not one after another


def test_python_provider_as_model(gateway: Proc) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "ping"}])
    assert completion.choices[0].message.content == "echo: ping"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    words = client.chat.completions.create(
        model="words", messages=[{"role": "user", "content": "go"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(words)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "one two three")
    assert chunks[-1].usage is not None
    async_words = client.chat.completions.create(
        model="async-words", messages=[{"role": "user", "content": "go"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in async_words if c.choices) == (
        "alpha beta")


def test_in_process_sim_provider(gateway: Proc) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="inproc", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "sim-chat" and completion.choices[0].message.content


def test_service_admission_sheds_with_retry_after(start_gateway: Callable[..., Proc],
                                                  tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
services:
  slow:
    function: sample_services:slow_async
    admission: {{max_in_flight: 1, max_queue: 1, max_queue_ms: 2000}}
""")
    results: list[tuple[int, Any]] = []

    def call() -> None:
        results.append(invoke(gateway, "slow", {"seconds": 0.5}))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503, 503], statuses
    shed = [body for status, body in results if status == 503]
    assert all(body["error"]["code"] == "overloaded" for body in shed)
    assert "Service 'slow' is at capacity" in shed[0]["error"]["message"]
