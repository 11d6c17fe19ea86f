"""Hosted services that retrieve, redact and call back: grounding on the context a function
returns, cleaned payloads in the store (SQLite and PostgreSQL), and linked traces."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_openai_sdk import _http
from test_pipeline_parity import call, trace

from conftest import Proc


def test_grounding_checks_the_context_a_service_returns(start_gateway: Callable[..., Proc],
                                                        tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
services:
  rag:
    function: parity_services:rag
    guards: {{output: [{{guard: grounding, action: remove}}]}}
  bare:
    function: parity_services:no_context
    guards: {{output: [grounding]}}
""")
    status, body, headers = call(gateway, "service", "rag", "How long do refunds take?")
    assert status == 200
    answer = body["output"]["answer"]
    assert "14 days" in answer and "voucher" not in answer  # the invented sentence is gone
    stored = trace(gateway, headers["x-shipyard-trace-id"])
    attributes = json.loads(stored["attributes"])
    verdict = next(r for r in attributes["guards"] if r["guard"] == "grounding")
    assert verdict["action"] == "fix" and "not supported" in verdict["reason"]
    assert attributes["citations"] == ["kb-1", "kb-2"]
    assert stored["outcome"] == "fixed"

    status, body, headers = call(gateway, "service", "bare", "How long do refunds take?")
    assert status == 200 and "voucher" in body["output"]["answer"]
    attributes = json.loads(trace(gateway, headers["x-shipyard-trace-id"])["attributes"])
    verdict = next(r for r in attributes["guards"] if r["guard"] == "grounding")
    assert verdict["reason"] == "skipped: no context" and verdict["code"] == "skipped"
    assert "service bare has a grounding guard" in gateway.output()  # warned at start-up
    assert "service rag has a grounding guard" not in gateway.output()


def test_stored_payloads_are_the_cleaned_ones(start_gateway: Callable[..., Proc],
                                              store_url: str) -> None:
    gateway = start_gateway(f"""
store: {{url: "{store_url}"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  py: {{kind: python, function: "sample_services:echo_model"}}
models:
  echo: {{provider: py, capture: full, pii: {{mode: redact}}}}
services:
  echo: {{function: parity_services:echo, capture: full, pii: {{mode: redact}}}}
""")
    for kind in ("model", "service"):
        status, body, headers = call(gateway, kind, "echo",
                                     "I am jane.doe@example.com, card 4111 1111 1111 1111")
        assert status == 200, body
        stored = trace(gateway, headers["x-shipyard-trace-id"])
        for field in ("request_body", "response_body"):
            assert "jane.doe@example.com" not in stored[field], (kind, field)
            assert "4111 1111 1111 1111" not in stored[field], (kind, field)
        assert "<EMAIL_1>" in stored["request_body"]


def test_a_service_calling_a_model_is_one_trace_tree(start_gateway: Callable[..., Proc],
                                                     tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
traces: {{flush_interval_s: 0.05, sample_spans: 1.0}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  py: {{kind: python, function: "sample_services:echo_model"}}
models:
  echo: {{provider: py}}
services:
  ask:
    function: parity_services:ask_model
    gateway_key: {{$env: SHIPYARD_API_KEY}}
""")
    status, body, headers = call(gateway, "service", "ask", "ping")
    assert status == 200, body
    assert body["output"]["answer"] == "echo: ping"
    parent = trace(gateway, headers["x-shipyard-trace-id"])
    children: list[dict[str, Any]] = []
    for _ in range(100):
        status, listing = _http("GET", f"{gateway.url}/v1/traces?limit=20")
        children = [t for t in listing["data"]
                    if t["route"] == "chat" and t["trace_id"] == parent["trace_id"]]
        if children:
            break
        time.sleep(0.05)
    assert len(children) == 1, "the nested call is not in the service's trace"
    status, tree = _http("GET", f"{gateway.url}/v1/traces/{parent['id']}/tree")
    assert status == 200, tree
    records = {r["id"]: r for r in tree["records"]}
    assert set(records) == {parent["id"], children[0]["id"]}
    service_span = next(s for s in tree["spans"] if s["name"] == "service"
                        and s["record_id"] == parent["id"])
    child_root = next(s for s in tree["spans"] if s["record_id"] == children[0]["id"]
                      and s["name"] == "chat")
    assert child_root["parent_id"] == service_span["span_id"]
