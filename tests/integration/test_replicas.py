"""Replicas that agree: two and four real `shipyard serve` processes on one PostgreSQL database
(created for the test) and Redis (under the test's own key prefix), in front of `shipyard sim`
(known usage) with a price in the config.

- a $0.50 budget under 200 concurrent requests is spent to within one request's cost, never
  beyond it;
- a requests-per-minute and a tokens-per-minute limit hold within 2% over all replicas;
- a breaker opened by one replica is open in the others within a second.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import API_KEY, Proc, launch_gateway, launch_sim

PRICE_PER_1M = 300.0  # input and output: a request of ~17 tokens costs ~$0.005
LIMIT_USD = 0.50
RPM = 100
TPM = 1700
MAX_TOKENS = 8


def replica_config(folder: Path, sim: Proc, postgres_url: str, prefix: str | None) -> str:
    state = (f'{{backend: redis, redis_url: "redis://127.0.0.1:6379/0", key_prefix: "{prefix}"}}'
             if prefix else "{backend: memory}")
    return f"""
store: {{url: "{postgres_url}"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
state: {state}
providers:
  sim:
    kind: openai
    base_url: {sim.url}/v1
    timeout_s: 20
    circuit: {{consecutive_failures: 3, open_s: 30, min_requests: 3}}
models:
  demo: {{provider: sim, model: sim-chat}}
  rpm-demo: {{provider: sim, model: sim-chat, rate_limit: {{rpm: {RPM}}}}}
  tpm-demo: {{provider: sim, model: sim-chat, rate_limit: {{tpm: {TPM}}}}}
pricing:
  demo: {{input_per_1m: {PRICE_PER_1M}, output_per_1m: {PRICE_PER_1M}}}
budgets:
  - {{tenant: default, period: day, limit_usd: {LIMIT_USD}}}
"""


@pytest.fixture
def replicas(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str,
             redis_prefix: str) -> Iterator[tuple[Proc, list[Proc]]]:
    """(sim, replicas): the first replica migrates the database, then the others start."""
    sim = launch_sim(tmp_path)
    config = replica_config(tmp_path, sim, postgres_url, redis_prefix)
    started: list[Proc] = []
    try:
        for _ in range(int(request.param)):
            started.append(launch_gateway(tmp_path, config))
        yield sim, started
    finally:
        for proc in started:
            proc.stop()
        sim.stop()


def _chat(i: int, model: str = "demo") -> dict[str, Any]:
    return {"model": model, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"Question number {i} please"}]}


async def _fire(gateways: list[Proc], bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every body at once, round-robin over the replicas, through the OpenAI SDK; every
    fourth one streams (its cost is settled when the stream ends)."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    clients = [openai.AsyncOpenAI(base_url=f"{g.url}/v1", api_key=API_KEY, max_retries=0,
                                  timeout=60, http_client=httpx.AsyncClient(limits=limits))
               for g in gateways]

    async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
        client = clients[i % len(clients)]
        try:
            if i % 4 == 3:
                stream = await client.chat.completions.create(
                    **body, stream=True, stream_options={"include_usage": True})
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
                assert usage is not None
                return {"status": 200, "usage": usage.model_dump()}
            answer = await client.chat.completions.create(**body)
            assert answer.usage is not None
            return {"status": 200, "usage": answer.usage.model_dump()}
        except openai.APIStatusError as exc:
            return {"status": exc.status_code, "body": exc.body,
                    "retry_after": exc.response.headers.get("retry-after")}

    try:
        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))
    finally:
        for client in clients:
            await client.close()


def _cost(usage: dict[str, Any]) -> float:
    return (usage["prompt_tokens"] + usage["completion_tokens"]) * PRICE_PER_1M / 1e6


def _status(gateway: Proc) -> dict[str, Any]:
    request = urllib.request.Request(f"{gateway.url}/v1/admin/status",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


@pytest.mark.parametrize("replicas", [2, 4], indirect=True)
def test_a_budget_is_never_overspent_across_replicas(replicas: tuple[Proc, list[Proc]]) -> None:
    _check_budget(replicas[1])


def test_without_redis_the_store_ledger_holds_the_budget(tmp_path: Path,
                                                         postgres_url: str) -> None:
    """Replicas on PostgreSQL and no Redis: reservations go through the store's ledger (a
    conditional UPDATE under PostgreSQL's row lock), exact all the same."""
    sim = launch_sim(tmp_path)
    config = replica_config(tmp_path, sim, postgres_url, None)
    gateways: list[Proc] = []
    try:
        for _ in range(2):
            gateways.append(launch_gateway(tmp_path, config))
        assert "budgets stay exact" in gateways[0].output()
        _check_budget(gateways)
    finally:
        for proc in gateways:
            proc.stop()
        sim.stop()


def _check_budget(gateways: list[Proc]) -> None:
    results = asyncio.run(_fire(gateways, [_chat(i) for i in range(200)]))
    statuses = {r["status"] for r in results}
    assert statuses <= {200, 429}, statuses
    refused = [r for r in results if r["status"] == 429]
    assert refused and all(r["body"]["code"] == "budget_exceeded" for r in refused)
    # A second wave uses up what the first one's reservations held back (estimates are an
    # upper bound, so holds were a little larger than the real costs).
    results += asyncio.run(_fire(gateways, [_chat(i) for i in range(200, 260)]))
    costs = [_cost(r["usage"]) for r in results if r["status"] == 200]
    spent = sum(costs)
    largest = max(costs)
    assert spent <= LIMIT_USD + largest, (spent, len(costs))
    assert spent >= LIMIT_USD - 2 * largest, (spent, len(costs))  # and it was all usable
    # Every replica's ledger view agrees with what the clients were charged.
    deadline = time.monotonic() + 5
    while True:
        views = [_status(g)["budgets"][0] for g in gateways]
        if all(abs(v["spent_usd"] - spent) < 1e-6 and v["reserved_usd"] == 0 for v in views):
            break
        assert time.monotonic() < deadline, (views, spent)
        time.sleep(0.2)


@pytest.mark.parametrize("replicas", [2, 4], indirect=True)
def test_rpm_and_tpm_hold_within_two_percent_across_replicas(
        replicas: tuple[Proc, list[Proc]]) -> None:
    _, gateways = replicas
    started = time.monotonic()
    results = asyncio.run(_fire(gateways, [_chat(i, "rpm-demo") for i in range(200)]))
    elapsed = time.monotonic() - started
    assert {r["status"] for r in results} <= {200, 429}
    passed = sum(r["status"] == 200 for r in results)
    refill = elapsed * RPM / 60  # what the bucket earned back while the burst ran
    assert RPM * 0.98 <= passed <= RPM * 1.02 + refill + 1, (passed, refill)

    started = time.monotonic()
    results = asyncio.run(_fire(gateways, [_chat(i, "tpm-demo") for i in range(200)]))
    elapsed = time.monotonic() - started
    assert {r["status"] for r in results} <= {200, 429}
    used = [r["usage"]["total_tokens"] for r in results if r["status"] == 200]
    refill = elapsed * TPM / 60
    assert TPM * 0.98 - max(used) <= sum(used) <= TPM * 1.02 + refill, (sum(used), refill)


@pytest.mark.parametrize("replicas", [2], indirect=True)
def test_a_breaker_opened_by_one_replica_is_open_in_all(
        replicas: tuple[Proc, list[Proc]]) -> None:
    sim, (first, second) = replicas
    request = urllib.request.Request(
        f"{sim.url}/_sim/faults", method="PATCH", data=json.dumps(
            {"error_rates": {"500": 1.0}}).encode(), headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()
    client = openai.OpenAI(base_url=f"{first.url}/v1", api_key=API_KEY, max_retries=0)

    def circuit(gateway: Proc) -> str:
        deployments = _status(gateway)["models"]["demo"]["deployments"]
        return str(deployments[0]["circuit"])

    for i in range(10):  # three failures in a row open the first replica's breaker
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(**_chat(i))
        if circuit(first) == "open":
            break
    opened = time.monotonic()
    assert circuit(first) == "open"
    while circuit(second) != "open":
        assert time.monotonic() - opened < 1.0, "the second replica did not follow in 1 s"
        time.sleep(0.05)
    client.close()
    # The second replica now fails fast without calling the dead upstream.
    with openai.OpenAI(base_url=f"{second.url}/v1", api_key=API_KEY, max_retries=0) as other, \
            pytest.raises(openai.APIStatusError) as refused:
        other.chat.completions.create(**_chat(9))
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "circuit_open"  # type: ignore[index]
