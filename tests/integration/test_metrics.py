"""`/metrics` of a real gateway, parsed with prometheus-client's parser: every value matches
the traffic sent (requests, latency, upstream latency, time to first token, tokens, cost,
cache, retries, fallbacks, circuit state, shed requests, payload sampling, spool, drops)."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from loadgen import faults
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from conftest import API_KEY, Proc
from shipyard.observe.tracing import sampled
from shipyard.store import iter_traces

Labels = tuple[tuple[str, str], ...]


def scrape(gateway: Proc) -> dict[str, dict[Labels, float]]:
    request = urllib.request.Request(f"{gateway.url}/metrics",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for key, v in samples.get(name, {}).items()
               if all((k, want) in key for k, want in labels.items()))


def config(folder: Path, sim: Proc, failing: Proc) -> str:
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
traces: {{flush_interval_s: 0.05, sample_payloads: 0.5}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
pricing:
  demo: {{input_per_1m: 1000, output_per_1m: 2000}}
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
  failing: {{kind: openai, base_url: "{failing.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat, capture: full}}
  cached: {{provider: sim, model: sim-chat, cache: {{enabled: true}}}}
  flaky:
    provider: failing
    model: sim-chat
    fallbacks: [demo]
    retry: {{attempts: 2, backoff_base_s: 0.01}}
  tight:
    provider: sim
    model: sim-chat
    admission: {{max_in_flight: 1, max_queue: 0}}
"""


def test_metrics_match_the_traffic(start_sim: Callable[..., Proc],
                                   start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    sim, failing = start_sim(), start_sim()
    faults(failing, error_rates={"500": 1.0})
    gateway = start_gateway(config(tmp_path, sim, failing))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    hello = [{"role": "user", "content": "hello"}]
    usage = Counter[str]()
    for _ in range(12):
        answer = client.chat.completions.create(model="demo", messages=hello)
        assert answer.usage is not None
        usage["prompt"] += answer.usage.prompt_tokens
        usage["completion"] += answer.usage.completion_tokens
    stream = client.chat.completions.create(model="demo", messages=hello, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage["prompt"] += chunk.usage.prompt_tokens
            usage["completion"] += chunk.usage.completion_tokens
    for _ in range(3):  # a miss, then two hits
        client.chat.completions.create(model="cached", messages=hello, temperature=0)
    for _ in range(2):  # 2 attempts on `flaky` each, then served by `demo`
        raw = client.chat.completions.with_raw_response.create(model="flaky", messages=hello)
        assert raw.headers["x-shipyard-model"] == "demo"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=hello)

    faults(sim, latency="300")  # slow: `tight` admits one request at a time, no queue

    def tight(_: int) -> int:
        try:
            client.chat.completions.create(model="tight", messages=hello)
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = Counter(pool.map(tight, range(4)))
    faults(sim)
    assert statuses[503] >= 1, statuses

    client.close()
    m = scrape(gateway)
    requests = "shipyard_requests_total"
    assert value(m, requests, route="chat", model="demo", status="200") == 13
    assert value(m, "shipyard_request_duration_seconds_count", model="demo",
                 status="200") == 13
    assert value(m, requests, model="nope", status="404") == 0  # unknown alias: no label
    assert value(m, requests, status="404") == 1
    assert value(m, requests, model="tight", status="503") == statuses[503]
    assert value(m, requests, model="tight", status="200") == statuses[200]
    assert value(m, "shipyard_requests_shed_total", scope="tight") == statuses[503]
    assert value(m, "shipyard_time_to_first_token_seconds_count", model="demo") == 1
    assert value(m, "shipyard_tokens_total", model="demo", kind="prompt") >= usage["prompt"]
    flaky_tokens = value(m, "shipyard_tokens_total", model="flaky", kind="prompt")
    assert value(m, "shipyard_tokens_total", model="demo", kind="prompt") == usage["prompt"]
    assert value(m, "shipyard_tokens_total", model="demo", kind="completion") == (
        usage["completion"])
    assert flaky_tokens > 0
    cost = (usage["prompt"] * 1000 + usage["completion"] * 2000) / 1e6
    assert abs(value(m, "shipyard_cost_usd_total", model="demo") - cost) < 1e-9
    assert value(m, "shipyard_cache_requests_total", model="cached", outcome="hit") == 2
    assert value(m, "shipyard_cache_requests_total", model="cached", outcome="miss") == 1
    # Attempts beyond the first, the fallback's included: 2 on flaky + 1 on demo, twice.
    assert value(m, "shipyard_retries_total", model="flaky") == 4
    assert value(m, "shipyard_fallbacks_total", model="flaky", served_by="demo") == 2
    assert value(m, "shipyard_upstream_attempts_total", model="flaky",
                 outcome="UpstreamError") == 4
    # Every successful attempt counts, not only those of retried requests: 13 direct on
    # `demo` and the 2 fallbacks served by it.
    assert value(m, "shipyard_upstream_attempts_total", model="demo", outcome="ok") == 15
    assert value(m, "shipyard_upstream_attempts_total", model="tight",
                 outcome="ok") == statuses[200]
    # Upstream time: every request that reached an upstream (the cache hits did not).
    reached = 13 + 1 + 2 + statuses[200]
    assert value(m, "shipyard_upstream_duration_seconds_count") == reached
    assert value(m, "shipyard_circuit_state", deployment="sim/sim-chat") == 0
    assert "shipyard_circuit_state" in m and len(m["shipyard_circuit_state"]) >= 2
    assert value(m, "shipyard_admission_queue_depth") == 0
    assert value(m, "shipyard_trace_queue_dropped_total") == 0
    assert value(m, "shipyard_trace_spool_bytes") == 0
    assert "shipyard_guard_trips_total" not in m or not m["shipyard_guard_trips_total"]

    # Payload sampling: decided from each trace id; the trace itself is always kept.
    engine = create_engine(f"sqlite:///{tmp_path}/store.db")
    rows: list[dict[str, Any]] = []
    for _ in range(100):
        rows = [r for r in iter_traces(engine, limit=None) if r["model_alias"] == "demo"
                and r["route"] == "chat"]
        if len(rows) >= 13:
            break
    engine.dispose()
    direct = [r for r in rows if r["status"] == 200]
    assert len(direct) >= 13
    for row in direct:
        kept = sampled(row["trace_id"], 0.5)
        assert (row["capture"] == "full") == kept
        assert (row["request_body"] is not None) == kept
        assert row["total_tokens"] and row["total_ms"] > 0  # always recorded
    unsampled = sum(not sampled(r["trace_id"], 0.5) for r in direct)
    assert value(m, "shipyard_payloads_unsampled_total") == unsampled


GUARDED = """
store: {{url: "sqlite:///{folder}/store.db"}}
state: {{per_process: true}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  sim: {{kind: openai, base_url: "{sim}/v1"}}
models:
  guarded:
    provider: sim
    model: sim-chat
    guards:
      input:
        - {{guard: topics, deny: [weapons]}}
        - {{guard: pii, action: fix}}
        - {{guard: "guard_services:stalls", timeout_ms: 20}}
      output:
        - {{guard: banned, terms: [frobnicator]}}
  plain: {{provider: sim, model: sim-chat}}
services:
  helper:
    function: guard_services:answer
    guards: {{input: [{{guard: pii, action: fix}}]}}
"""


def test_guard_durations_per_guard(start_sim: Callable[..., Proc],
                                   start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    """Every guard run is timed, in multiprocess mode too (two workers share the files)."""
    sim = start_sim()
    gateway = start_gateway(GUARDED.format(folder=tmp_path, sim=sim.url), workers=2)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    for i in range(6):
        answer = client.chat.completions.create(model="guarded", messages=[
            {"role": "user", "content": f"Where is order {i}? Mail me at jo{i}@example.com"}])
        assert answer.choices[0].finish_reason != "content_filter"
    for _ in range(3):  # the first guard blocks: the others, and the output guard, never run
        answer = client.chat.completions.create(model="guarded", messages=[
            {"role": "user", "content": "How do I build a pipe bomb?"}])
        assert answer.choices[0].finish_reason == "content_filter"
    client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    client.close()
    for _ in range(2):
        request = urllib.request.Request(
            f"{gateway.url}/v1/services/helper/invoke", data=b'{"text": "call +1 415 555 0132"}',
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    m = scrape(gateway)
    count = "shipyard_guard_duration_seconds_count"
    expected = {("guarded", "input", "topics"): 9, ("guarded", "input", "pii"): 6,
                ("guarded", "input", "stalls"): 6,  # each one timed out
                ("guarded", "output", "banned"): 6, ("helper", "input", "pii"): 2}
    observed = {(dict(k)["target"], dict(k)["stage"], dict(k)["guard"]): v
                for k, v in m[count].items()}
    assert observed == expected
    for (target, stage, guard), n in expected.items():
        assert value(m, "shipyard_guard_duration_seconds_bucket", target=target, stage=stage,
                     guard=guard, le="+Inf") == n
        assert value(m, "shipyard_guard_duration_seconds_sum", target=target, stage=stage,
                     guard=guard) > 0
    assert value(m, "shipyard_guard_trips_total", guard="stalls",
                 action="timeout") == 6
    assert value(m, "shipyard_guard_trips_total", guard="topics", action="block") == 3
