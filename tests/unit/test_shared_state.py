"""Shared-state parts without a running Redis: outage policies (against a port nothing listens
on), fail-fast health, breakers opened by a peer, the workers check, cost estimates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from shipyard.config import parse_config
from shipyard.config.resilience import CircuitConfig
from shipyard.config.server import StateConfig, per_process_state
from shipyard.errors import ConfigError, StateUnavailable
from shipyard.gateway.app import create_app
from shipyard.gateway.server import check_state
from shipyard.resilience.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, SharedCircuits
from shipyard.security.budget_ledger import Account, StoreLedger
from shipyard.security.budgets import estimate_tokens
from shipyard.security.pricing import Price, PriceTable, format_usd
from shipyard.security.ratelimit import Bucket, RedisLimiter
from shipyard.state.redis import FEATURES, OUTAGE_POLICY, RedisState, StateHealth
from shipyard.store import create_store_engine

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_rate_limits_fall_back_to_a_local_limiter_or_fail_closed() -> None:
    async def run(policy: str) -> None:
        state = RedisState(NOWHERE, timeout_s=0.2, rate_limits=policy)
        limiter = RedisLimiter(state)
        bucket = Bucket("requests:key:k", 2.0)
        if policy == "local":
            decisions = [await limiter.take(bucket, 1.0) for _ in range(3)]
            assert [d.allowed for d in decisions] == [True, True, False]  # still limited
            assert limiter.fallbacks == 3
            assert await limiter.acquire_slot("key:k", 1, 60.0)
            assert not await limiter.acquire_slot("key:k", 1, 60.0)
            await limiter.release_slot("key:k")
            assert await limiter.acquire_slot("key:k", 1, 60.0)
        else:
            with pytest.raises(StateUnavailable) as raised:
                await limiter.take(bucket, 1.0)
            assert raised.value.status == 503 and "rate limits fail closed" in str(raised.value)
        await state.close()

    asyncio.run(run("local"))
    asyncio.run(run("closed"))


def test_health_fails_fast_then_tries_again() -> None:
    now = [100.0]
    health = StateHealth(retry_s=1.0, clock=lambda: now[0])
    changes: list[bool] = []
    health.on_change = changes.append
    assert health.should_try()
    health.failed(ConnectionError("refused"))
    assert not health.up and not health.should_try()
    now[0] += 1.1
    assert health.should_try()  # one call tries again...
    assert not health.should_try()  # ...the others still fail fast
    health.succeeded()
    assert health.up and changes == [False, True]


def test_every_feature_has_a_documented_outage_policy() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "resilience.md").read_text()
    assert set(FEATURES) == set(OUTAGE_POLICY)
    for feature, policy in OUTAGE_POLICY.items():
        assert f"| {FEATURES[feature]} | {policy}" in doc, feature


def test_a_breaker_opened_by_a_peer_keeps_the_peers_remaining_time() -> None:
    now = [50.0]
    breaker = CircuitBreaker(CircuitConfig(open_s=10.0, half_open_probes=1),
                             clock=lambda: now[0])
    breaker.force_open(4.0)
    assert breaker.state == OPEN and breaker.opened_by_peer
    assert breaker.retry_after_s() == pytest.approx(4.0)
    assert not breaker.acquire()
    now[0] += 4.1
    assert breaker.acquire() and breaker.state == HALF_OPEN
    breaker.record(True)
    assert breaker.state == CLOSED


def test_several_workers_on_memory_state_are_refused_unless_accepted() -> None:
    problem = per_process_state(StateConfig(), 2)
    assert problem is not None
    assert "server.workers is 2 but state.backend is 'memory'" in problem
    assert "would get 120" in problem and "state.per_process: true" in problem
    assert per_process_state(StateConfig(), 1) is None
    assert per_process_state(StateConfig(per_process=True), 4) is None
    assert per_process_state(StateConfig(backend="redis"), 4) is None


def test_readiness_reports_redis_and_can_be_told_to_only_report(tmp_path: Path) -> None:
    for required, expected in ((True, 503), (False, 200)):
        app = create_app(parse_config(f"""
store: {{url: "sqlite:///{tmp_path}/s{required}.db"}}
state: {{backend: redis, redis_url: "{NOWHERE}", timeout_s: 0.2,
         required_for_ready: {str(required).lower()}}}
"""))
        with TestClient(app) as client:  # type: ignore[arg-type]
            answer = client.get("/readyz")
        assert answer.status_code == expected
        body = answer.json()
        assert body["checks"]["state"] is False
        assert body["status"] == ("not ready" if required else "degraded")
        assert body["state"]["backend"] == "redis" and "error" in body["state"]


def test_cost_estimates_bound_the_answer() -> None:
    chat = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 20, "n": 2}
    assert estimate_tokens("chat/completions", chat, 512) == (9, 40)
    assert estimate_tokens("chat/completions", {"messages": []}, 512) == (3, 512)
    assert estimate_tokens("embeddings", {"input": ["a b", [1, 2, 3]]}, 512) == (5, 0)
    assert estimate_tokens("completions", {"prompt": "Say hi", "max_tokens": 5}, 512) == (2, 5)
    table = PriceTable({"cheap": Price(1.0, 2.0), "dear": Price(3.0, 1.0)})
    assert table.bound(["cheap", "dear", "unknown"]) == Price(3.0, 2.0)
    assert table.bound(["unknown"]) is None


def test_dollar_amounts_keep_small_values_readable() -> None:
    assert [format_usd(v) for v in (0.0, 0.5, 0.01, 0.0006, 0.00123, 1234.5)] == [
        "$0.00", "$0.50", "$0.01", "$0.0006", "$0.00123", "$1,234.50"]


def test_breakers_work_alone_while_redis_is_unreachable() -> None:
    async def run() -> None:
        state = RedisState(NOWHERE, timeout_s=0.2)
        breaker = CircuitBreaker(CircuitConfig(consecutive_failures=2, open_s=5.0), name="p/m")
        shared = SharedCircuits(state, [breaker], interval_s=0.01)
        shared.start()
        for _ in range(2):
            assert breaker.acquire()
            breaker.record(False)
        assert breaker.state == OPEN  # opened locally; publishing it failed quietly
        await asyncio.sleep(0.05)  # the sync loop meets the outage and keeps going
        assert shared._task is not None and not shared._task.done()
        assert not state.health.up
        await shared.stop()
        await state.close()

    asyncio.run(run())


def test_replicas_on_a_shared_store_with_memory_state_are_warned(
        caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config("""
store: {url: "postgresql+psycopg://postgres@127.0.0.1:5432/db"}
""")
    with caplog.at_level("WARNING", logger="shipyard.gateway"):
        check_state(config, 1)
    assert "each keeps its own rate limits" in caplog.text
    assert "budgets stay exact" in caplog.text
    with pytest.raises(ConfigError, match=r"server\.workers is 3"):
        check_state(config, 3)


def test_an_unreachable_store_ledger_is_a_503_not_a_500() -> None:
    engine = create_store_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    account = Account(key="tenant:a:day:2026-05-01", limit=10, soft=5, seed=0,
                      period_end=4_102_444_800.0)

    async def run() -> None:
        with pytest.raises(StateUnavailable) as raised:
            await StoreLedger(engine).reserve([account], "r", 1, 60.0)
        assert raised.value.status == 503 and raised.value.headers["retry-after"] == "2"
        assert "the store (store.url) is unreachable" in raised.value.message

    asyncio.run(run())
    engine.dispose()
