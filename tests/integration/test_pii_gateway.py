"""Personal data protection through a real `shipyard serve`: what the model sees, what the caller
gets back, what traces keep — for plain and streamed answers, services and conversations."""

from __future__ import annotations

import json
import sqlite3
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
traces:
  flush_interval_s: 0.05
auth:
  api_keys: [{{$env: SHIPYARD_API_KEY}}]
providers:
  py: {{kind: python, function: sample_services:pii_model}}
  py-stream: {{kind: python, function: sample_services:pii_stream_model}}
models:
  pseudo:
    provider: py
    capture: full
    pii: {{mode: pseudonymize}}
  pseudo-stream:
    provider: py-stream
    capture: full
    pii: {{mode: pseudonymize}}
  redacted:
    provider: py
    capture: full
    pii: {{mode: redact}}
  blocked:
    provider: py
    pii: {{mode: block}}
  detected:
    provider: py
    capture: full
    pii: {{mode: detect}}
  plain:
    provider: py
    capture: full
  convo:
    provider: py
    pii: {{mode: pseudonymize, scope: conversation}}
services:
  desk:
    function: sample_services:pii_service
    capture: full
    pii: {{mode: pseudonymize}}
"""

EMAIL = "jane.roe@example.org"
CARD = "4111 1111 1111 1111"
MESSAGE = f"Hi, I am {EMAIL}, card {CARD}, mail {EMAIL} again."


@pytest.fixture
def gateway(start_gateway: Callable[..., Proc], tmp_path: Path) -> Proc:
    return start_gateway(CONFIG.format(folder=tmp_path))


@pytest.fixture
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)


def _chat(client: openai.OpenAI, model: str, text: str, **extra: Any) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **extra)
    return answer.choices[0].message.content or ""


def _stream(client: openai.OpenAI, model: str, text: str) -> str:
    pieces = []
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces)


def _traces(folder: Path, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(folder / "store.db") as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(
                "SELECT * FROM traces ORDER BY started_at")]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_pseudonymize_model_sees_placeholders_caller_sees_values(
        client: openai.OpenAI, tmp_path: Path) -> None:
    answer = _chat(client, "pseudo", MESSAGE)
    said, seen = answer.split(" | seen: ")
    assert said == f"You said: {MESSAGE}"  # restored for the caller
    assert seen == "Hi, I am [EMAIL_1>, card [CREDIT_CARD_1>, mail [EMAIL_1> again."
    (trace,) = _traces(tmp_path, 1)
    stored = (trace["request_body"] or "") + (trace["response_body"] or "")
    assert EMAIL not in stored and "4111" not in stored
    assert "<EMAIL_1>" in trace["request_body"] and "<EMAIL_1>" in trace["response_body"]
    assert json.loads(trace["attributes"])["pii"] == {
        "mode": "pseudonymize", "request": {"EMAIL": 2, "CREDIT_CARD": 1}}


def test_streamed_answer_restored_across_split_placeholders(
        client: openai.OpenAI, tmp_path: Path) -> None:
    answer = _stream(client, "pseudo-stream", MESSAGE)
    said, seen = answer.split(" | seen: ")
    assert said == f"You said: {MESSAGE}"
    assert seen == "Hi, I am [EMAIL_1>, card [CREDIT_CARD_1>, mail [EMAIL_1> again."
    (trace,) = _traces(tmp_path, 1)
    assert EMAIL not in trace["response_body"] and "<EMAIL_1>" in trace["response_body"]


def test_streamed_leak_is_replaced_even_split_in_chunks(client: openai.OpenAI) -> None:
    assert _stream(client, "pseudo-stream", "LEAK please") == "Write to <EMAIL> today."


def test_leak_in_plain_answer_is_replaced(client: openai.OpenAI) -> None:
    assert _chat(client, "pseudo", "LEAK please") == "Write to <EMAIL> today."


def test_redact_keeps_placeholders_for_the_caller(client: openai.OpenAI) -> None:
    said, _ = _chat(client, "redacted", MESSAGE).split(" | seen: ")
    assert said == "You said: Hi, I am <EMAIL_1>, card <CREDIT_CARD_1>, mail <EMAIL_1> again."


def test_block_refuses_with_a_clear_400_without_echoing_the_value(
        gateway: Proc) -> None:
    body = json.dumps({"model": "blocked", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": MESSAGE}]}).encode()
    status, answer = _http("POST", f"{gateway.url}/v1/chat/completions", body)
    assert status == 400
    error = answer["error"]
    assert error["code"] == "pii_detected" and error["param"] == "messages[1].content"
    assert "EMAIL (2)" in error["message"] and "CREDIT_CARD (1)" in error["message"]
    assert "models.blocked.pii.mode" in error["message"]
    assert EMAIL not in error["message"] and "4111" not in error["message"]
    status, _ = _http("POST", f"{gateway.url}/v1/chat/completions", json.dumps(
        {"model": "blocked", "messages": [{"role": "user", "content": "hello"}]}).encode())
    assert status == 200


def test_detect_changes_nothing_but_traces_and_metrics(
        client: openai.OpenAI, gateway: Proc, tmp_path: Path) -> None:
    said, seen = _chat(client, "detected", MESSAGE).split(" | seen: ")
    assert said == f"You said: {MESSAGE}" and seen == MESSAGE  # the model saw the values
    (trace,) = _traces(tmp_path, 1)
    assert EMAIL not in trace["request_body"] and EMAIL not in trace["response_body"]
    status, metrics = _http("GET", f"{gateway.url}/metrics")
    assert status == 200
    assert ('shipyard_pii_findings_total{entity="EMAIL",service="detected",where="request"} 2.0'
            in metrics)


def test_unprotected_model_is_untouched(client: openai.OpenAI, tmp_path: Path) -> None:
    _, seen = _chat(client, "plain", MESSAGE).split(" | seen: ")
    assert seen == MESSAGE
    (trace,) = _traces(tmp_path, 1)
    assert EMAIL in trace["request_body"]
    assert "pii" not in json.loads(trace["attributes"] or "{}")


def test_conversation_keeps_placeholders_across_turns(gateway: Proc) -> None:
    def turn(text: str, conversation: str) -> str:
        status, body = _http("POST", f"{gateway.url}/v1/chat/completions", json.dumps(
            {"model": "convo", "messages": [{"role": "user", "content": text}]}).encode(),
            headers={"x-shipyard-conversation": conversation})
        assert status == 200, body
        return str(body["choices"][0]["message"]["content"].split(" | seen: ")[1])

    assert turn("mail a.one@example.org", "c-1") == "mail [EMAIL_1>"
    # a new value in the same conversation gets the next number; the old keeps its own
    assert turn("mail b.two@example.org then a.one@example.org", "c-1") == (
        "mail [EMAIL_2> then [EMAIL_1>")
    assert turn("mail b.two@example.org", "c-2") == "mail [EMAIL_1>"  # another conversation
    status, body = _http("POST", f"{gateway.url}/v1/chat/completions", json.dumps(
        {"model": "convo", "messages": [{"role": "user", "content": "x"}]}).encode(),
        headers={"x-shipyard-conversation": "bad id!"})
    assert status == 400 and body["error"]["param"] == "x-shipyard-conversation"


def test_service_input_and_output_are_protected(gateway: Proc, tmp_path: Path) -> None:
    status, body = _http("POST", f"{gateway.url}/v1/services/desk/invoke", json.dumps(
        {"note": f"call me at {EMAIL}"}).encode())
    assert status == 200, body
    output = body["output"]
    assert output["seen"] == "call me at [EMAIL_1>"
    assert output["echo"] == f"call me at {EMAIL}"
    assert output["owner"] == "<EMAIL>"  # the service's own PII is a leak
    (trace,) = _traces(tmp_path, 1)
    assert EMAIL not in trace["request_body"] and EMAIL not in trace["response_body"]
