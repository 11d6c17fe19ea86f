"""Feedback through a real gateway: validation (422 naming the field), tenant isolation,
aggregation per service and version, and the labelled-dataset export."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from openai import OpenAI
from test_openai_sdk import _http

from conftest import REPO, Proc, gateway_config
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store


def _key(engine: Any, tenant: str, role: str) -> str:
    return store.create_key(engine, tenant_id=tenant, name=f"{tenant}-{role}", role=role)[1]


def _call(gw: Proc, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    raw = None if body is None else json.dumps(body).encode()
    return _http(method, f"{gw.url}{path}", raw, headers={"authorization": f"Bearer {key}"},
                 auth=False)


def _chat(gw: Proc, key: str, model: str, text: str) -> str:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}])
    return str(raw.headers["x-shipyard-trace-id"])


@pytest.fixture
def stack(store_url: str, start_sim: Callable[..., Proc],
          start_gateway: Callable[..., Proc]) -> dict[str, Any]:
    engine = create_store_engine(store_url)
    migrate(engine)
    for tenant in ("acme", "globex"):
        store.create_tenant(engine, tenant)
    keys = {f"{t}:{r}": _key(engine, t, r) for t in ("acme", "globex")
            for r in ("admin", "client", "viewer")}
    engine.dispose()
    sim = start_sim()
    gw = start_gateway(gateway_config(sim.port, store_url))
    return {"gw": gw, "keys": keys, "url": store_url}


def test_feedback_end_to_end(stack: dict[str, Any]) -> None:
    gw, keys = stack["gw"], stack["keys"]
    client = keys["acme:client"]
    trace = _chat(gw, client, "demo-full", "where is my parcel?")
    # Sent right after the answer: the gateway waits for the trace writer if it must.
    status, body = _call(gw, "POST", "/v1/feedback", client, {
        "trace_id": trace, "score": 1, "label": "helpful", "comment": "spot on", "by": "u-1"})
    assert status == 201, body
    assert body["trace_id"] == trace and body["tenant"] == "acme"
    # A model alias's version is its configuration's (docs/lifecycle.md).
    assert body["service"] == "demo-full" and body["version"] == "1"
    assert (body["score"], body["label"], body["comment"], body["by"]) == (
        1.0, "helpful", "spot on", "u-1")

    # More traffic and feedback: two versions' worth is not needed, two services are.
    for i, (model, score) in enumerate([("demo-full", 0), ("demo-full", 1), ("demo", 0.5)]):
        trace_id = _chat(gw, client, model, f"question {i}")
        status, _ = _call(gw, "POST", "/v1/feedback", client,
                          {"trace_id": trace_id, "score": score})
        assert status == 201
    status, _ = _call(gw, "POST", "/v1/feedback", client,
                      {"trace_id": trace, "label": "wrong_tone"})
    assert status == 201

    status, summary = _call(gw, "GET", "/v1/feedback/summary?bucket=day", keys["acme:admin"])
    assert status == 200, summary
    by_service = {(b["service"], b["version"]): b for b in summary["data"]}
    full = by_service[("demo-full", "1")]
    assert (full["count"], full["scored"]) == (4, 3)
    assert full["mean_score"] == pytest.approx(2 / 3)
    assert full["labels"] == {"helpful": 1, "wrong_tone": 1}
    assert by_service[("demo", "1")]["mean_score"] == 0.5

    status, listed = _call(gw, "GET", "/v1/feedback?limit=2", keys["acme:admin"])
    assert status == 200 and len(listed["data"]) == 2
    status, listed = _call(gw, "GET", "/v1/feedback?service=demo", keys["acme:admin"])
    assert [f["score"] for f in listed["data"]] == [0.5]

    # Tenant isolation: another tenant's trace is "not found", their listings stay empty.
    status, body = _call(gw, "POST", "/v1/feedback", keys["globex:client"],
                         {"trace_id": trace, "score": 0})
    assert status == 404 and body["error"]["param"] == "trace_id"
    status, listed = _call(gw, "GET", "/v1/feedback", keys["globex:admin"])
    assert status == 200 and listed["data"] == []
    status, _ = _call(gw, "GET", "/v1/feedback?tenant=acme", keys["globex:admin"])
    assert status == 403
    status, _ = _call(gw, "GET", "/v1/feedback", keys["acme:viewer"])
    assert status == 403
    status, _ = _call(gw, "POST", "/v1/feedback", keys["acme:viewer"],
                      {"trace_id": trace, "score": 1})
    assert status == 403

    # The labelled dataset carries the captured request and response.
    out = subprocess.run([sys.executable, "-m", "shipyard", "feedback", "export",
                          "--store-url", stack["url"], "--tenant", "acme"],
                         capture_output=True, check=True, cwd=REPO, timeout=60)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 5
    first = rows[0]
    assert first["trace_id"] == trace and first["label"] == "helpful"
    assert "where is my parcel?" in first["request"] and first["response"]
    assert {r["model"] for r in rows} == {"demo-full", "demo"}
    out = subprocess.run([sys.executable, "-m", "shipyard", "feedback", "export",
                          "--store-url", stack["url"], "--format", "csv", "--service", "demo"],
                         capture_output=True, check=True, cwd=REPO, timeout=60)
    table = list(csv.DictReader(io.StringIO(out.stdout.decode())))
    assert [(r["service"], r["score"], r["request"]) for r in table] == [("demo", "0.5", "")]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_invalid_feedback_is_a_422_naming_the_field(stack: dict[str, Any]) -> None:
    gw, key = stack["gw"], stack["keys"]["acme:client"]
    trace = _chat(gw, key, "demo", "hi")
    cases: list[tuple[Any, str]] = [
        ({}, "trace_id"),
        ({"score": 1}, "trace_id"),
        ({"trace_id": 5, "score": 1}, "trace_id"),
        ({"trace_id": trace}, "score"),
        ({"trace_id": trace, "score": "5"}, "score"),
        ({"trace_id": trace, "score": True}, "score"),
        ({"trace_id": trace, "score": 1e300}, "score"),
        ({"trace_id": trace, "label": ""}, "label"),
        ({"trace_id": trace, "label": "x" * 65}, "label"),
        ({"trace_id": trace, "score": 1, "comment": 7}, "comment"),
        ({"trace_id": trace, "score": 1, "by": "a\x00b"}, "by"),
        ({"trace_id": trace, "score": 1, "stars": 5}, "stars"),
    ]
    for body, field in cases:
        status, answer = _call(gw, "POST", "/v1/feedback", key, body)
        assert status == 422, (body, answer)
        error = answer["error"]
        assert error["param"] == field and f"'{field}'" in error["message"], (body, error)
        assert error["code"] == "validation_error"
    status, answer = _call(gw, "POST", "/v1/feedback", key, {"trace_id": "nope", "score": 1})
    assert status == 404 and "nope" in answer["error"]["message"]
    status, answer = _http("POST", f"{gw.url}/v1/feedback", b"[1]",
                           headers={"authorization": f"Bearer {key}"}, auth=False)
    assert status == 400
    status, answer = _call(gw, "GET", "/v1/feedback/summary?bucket=week",
                           stack["keys"]["acme:admin"])
    assert status == 400 and answer["error"]["param"] == "bucket"
