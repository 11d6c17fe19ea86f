"""The chaos suite: a real `shipyard serve` in front of real `shipyard sim` upstreams.

Each test flips sim faults at run time and checks what clients see.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from loadgen import (
    CHAT,
    burst,
    circuit,
    faults,
    open_loop,
    p99,
    rss_kb,
    sim_stats,
    status,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from conftest import API_KEY, Proc
from shipyard.store import iter_traces

pytestmark = pytest.mark.slow


def two_upstream_config(folder: Path, primary: Proc, backup: Proc, *, demo: str = "",
                        provider: str = "", extra: str = "") -> str:
    return f"""
store: {{url: "sqlite:///{folder}/store.db"}}
traces: {{flush_interval_s: 0.05}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  primary:
    kind: openai
    base_url: {primary.url}/v1
    first_byte_timeout_s: 0.5
    {provider}
  backup:
    kind: openai
    base_url: {backup.url}/v1
models:
  demo:
    provider: primary
    model: sim-chat
    fallbacks: [backup]
    {demo}
  backup:
    provider: backup
    model: sim-chat
{extra}
"""


def test_errors_and_hangs_with_a_healthy_fallback(start_sim: Callable[..., Proc],
                                                  start_gateway: Callable[..., Proc],
                                                  tmp_path: Path) -> None:
    primary, backup = start_sim(), start_sim()
    gateway = start_gateway(two_upstream_config(tmp_path, primary, backup))
    faults(primary, error_rates={"500": 0.3}, hang_rate=0.15, hang_s=30)
    # The breaker opens after a few dozen requests, so few reach the primary: 15% hangs make
    # at least one hang all but certain among them (5% left 0 in 56 about 1 run in 18).
    outcomes = burst(gateway, 2000, concurrency=48)
    ok = sum(o.status == 200 for o in outcomes)
    assert ok / len(outcomes) >= 0.999, Counter(o.status for o in outcomes)
    served = Counter(o.headers.get("x-shipyard-model") for o in outcomes if o.status == 200)
    assert served["backup"] > 0 and served["demo"] > 0  # the fallback did real work
    stats = sim_stats(primary)
    assert stats.get("chat:500", 0) > 0 and stats.get("chat:hang", 0) > 0


def test_outage_opens_the_circuit_and_recovery_closes_it(start_sim: Callable[..., Proc],
                                                          start_gateway: Callable[..., Proc],
                                                          tmp_path: Path) -> None:
    primary, backup = start_sim("--latency", "20"), start_sim("--latency", "20")
    gateway = start_gateway(two_upstream_config(
        tmp_path, primary, backup,
        provider="circuit: {window_s: 2, min_requests: 10, failure_rate: 0.5, open_s: 1.5, "
                 "half_open_probes: 2}"))
    healthy = burst(gateway, 200, concurrency=8)
    assert all(o.status == 200 for o in healthy)
    healthy_p99 = p99(healthy)
    time.sleep(2.1)  # let the healthy traffic leave the breaker's window

    faults(primary, error_rates={"503": 1.0}, retry_after_s=None)
    opened_after = None
    outcomes = []
    for i in range(40):
        outcomes += burst(gateway, 5, concurrency=5)
        if circuit(gateway) == "open":
            opened_after = (i + 1) * 5
            break
    assert opened_after is not None and opened_after <= 30, "the circuit never opened"
    assert all(o.status == 200 for o in outcomes)  # the fallback answered meanwhile

    sim_stats(primary, reset=True)
    skipped = burst(gateway, 100, concurrency=8)
    assert all(o.status == 200 for o in skipped)
    assert sim_stats(primary).get("requests", 0) == 0  # the open circuit skips the primary
    assert p99(skipped) <= 2 * healthy_p99 + 0.01, (p99(skipped), healthy_p99)

    faults(primary)  # the primary recovers
    deadline = time.monotonic() + 15
    while circuit(gateway) != "closed" and time.monotonic() < deadline:
        burst(gateway, 4, concurrency=2)
        time.sleep(0.2)
    assert circuit(gateway) == "closed"
    assert sim_stats(primary).get("chat:ok", 0) >= 2  # probes, then traffic, reached it again
    metrics = _metrics(gateway)
    assert 'shipyard_circuit_transitions_total{deployment="primary/sim-chat",state="open"}' in (
        metrics)


def _metrics(gateway: Proc) -> str:
    request = urllib.request.Request(f"{gateway.url}/metrics",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_streams_fail_over_before_the_first_byte_and_error_after_it(
        start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
        tmp_path: Path) -> None:
    primary, backup = start_sim(), start_sim()
    gateway = start_gateway(two_upstream_config(tmp_path, primary, backup))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)

    # Cut before any chunk: nothing reached the client yet, so the fallback serves it.
    faults(primary, cut_rate=1.0, cut_after_chunks=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=CHAT["messages"], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text and raw.headers["x-shipyard-model"] == "backup"

    # Cut after some chunks: the client has bytes, so it gets an explicit error event.
    faults(primary, cut_rate=1.0, cut_after_chunks=3)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="demo", messages=CHAT["messages"],
                                                    stream=True):
            received.append(chunk)
    assert received  # some content arrived, and the end was an error, never a clean [DONE]


def test_overload_sheds_with_retry_after(start_sim: Callable[..., Proc],
                                         start_gateway: Callable[..., Proc],
                                         tmp_path: Path) -> None:
    sim = start_sim("--latency", "100")
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo:
    provider: up
    model: sim-chat
    admission: {{max_in_flight: 2, max_queue: 4, max_queue_ms: 200}}
""")
    healthy = burst(gateway, 20, concurrency=2)
    healthy_p99 = p99(healthy)
    rss_before = rss_kb(gateway.process.pid)
    # Capacity is 2 in flight x 10/s = 20 requests/s; offer 10x that.
    outcomes = open_loop(gateway, rate=200, seconds=4)
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {200, 503, 429}, statuses
    assert statuses[503] > len(outcomes) / 2 and statuses[200] >= 40
    shed = [o for o in outcomes if o.status == 503]
    assert all(o.headers.get("retry-after") for o in shed)
    assert all(o.body["error"]["code"] == "overloaded" for o in shed)
    admitted = [o for o in outcomes if o.status == 200]
    assert p99(admitted) <= 0.2 + healthy_p99 + 0.1, (p99(admitted), healthy_p99)
    assert p99(shed) < 0.5  # refusals are fast
    assert rss_kb(gateway.process.pid) - rss_before < 100_000  # bounded: no unbounded queue


def test_retry_budget_holds_when_the_upstream_fails_completely(
        start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
        tmp_path: Path) -> None:
    sim = start_sim("--error-rate", "500=1.0")
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up:
    kind: openai
    base_url: "{sim.url}/v1"
    circuit: {{enabled: false}}
models:
  demo:
    provider: up
    model: sim-chat
    retry: {{attempts: 5, backoff_base_s: 0, budget_ratio: 0.2, budget_window_s: 30,
             budget_min_per_s: 0}}
""")
    outcomes = burst(gateway, 300, concurrency=10)
    assert all(o.status == 502 for o in outcomes)
    attempts = sim_stats(sim)["requests"]
    # Without a budget this would be 5 x 300 = 1500 attempts.
    assert 300 <= attempts <= 300 * 1.2 + 1, attempts
    assert status(gateway)["models"]["demo"]["retry_budget_exhausted"] > 0


def test_cache_sends_one_request_per_ttl_at_peak(start_sim: Callable[..., Proc],
                                                 start_gateway: Callable[..., Proc],
                                                 tmp_path: Path) -> None:
    sim = start_sim("--latency", "50")
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo:
    provider: up
    model: sim-chat
    cache: {{enabled: true, ttl_s: 2}}
""")
    body = {**CHAT, "temperature": 0}
    first = burst(gateway, 300, concurrency=50, body=body)
    assert all(o.status == 200 for o in first)
    assert sim_stats(sim)["requests"] == 1
    answers = {json.dumps(o.body["choices"]) for o in first}
    assert len(answers) == 1
    marks = Counter(o.headers.get("x-shipyard-cache") for o in first)
    assert marks["miss"] == 1 and marks["hit"] == 299
    time.sleep(2.2)
    burst(gateway, 100, concurrency=20, body=body)
    assert sim_stats(sim)["requests"] == 2  # once per TTL
    # temperature > 0 bypasses the cache; a hit can be served as a stream
    burst(gateway, 3, concurrency=1, body={**CHAT, "temperature": 0.7})
    assert sim_stats(sim)["requests"] == 5
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="demo", messages=CHAT["messages"],
                                                 temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first[0].body["choices"][0]["message"]["content"]
    assert sim_stats(sim)["requests"] == 5


def test_load_balancing_by_weight_and_ejection(start_sim: Callable[..., Proc],
                                               start_gateway: Callable[..., Proc],
                                               tmp_path: Path) -> None:
    heavy, light = start_sim(), start_sim()
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  heavy: {{kind: openai, base_url: "{heavy.url}/v1"}}
  light:
    kind: openai
    base_url: "{light.url}/v1"
    circuit: {{window_s: 2, min_requests: 5, failure_rate: 0.5, open_s: 30}}
models:
  demo:
    deployments:
      - {{provider: heavy, model: sim-chat, weight: 3}}
      - {{provider: light, model: sim-chat, weight: 1}}
""")
    burst(gateway, 400, concurrency=1)
    h, li = sim_stats(heavy)["requests"], sim_stats(light)["requests"]
    assert h + li == 400
    assert 2.2 <= h / li <= 4.0, (h, li)
    time.sleep(2.1)  # the healthy history leaves the breaker's window
    faults(light, error_rates={"500": 1.0})
    outcomes = burst(gateway, 200, concurrency=4)
    assert all(o.status == 200 for o in outcomes)  # retries move to the healthy deployment
    assert circuit(gateway, index=1) == "open"  # the failing deployment is ejected


def test_client_deadline_and_limits(start_sim: Callable[..., Proc],
                                    start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    sim = start_sim("--latency", "1500")
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo:
    provider: up
    model: sim-chat
    limits: {{max_messages: 2, max_tokens: 100}}
""")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0,
                           timeout=0.5)
    started = time.monotonic()
    with pytest.raises((openai.APITimeoutError, openai.InternalServerError)):
        client.chat.completions.create(model="demo", messages=CHAT["messages"])
    assert time.monotonic() - started < 1.4
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="demo", messages=CHAT["messages"] * 3)
    assert "limits.max_messages" in str(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="demo", messages=CHAT["messages"], max_tokens=500)
    assert "limits.max_tokens" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo", messages=CHAT["messages"],
                                       extra_headers={"x-shipyard-priority": "urgent"})


def test_sigterm_during_steady_load_fails_no_in_flight_request(
        start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
        tmp_path: Path) -> None:
    sim = start_sim("--latency", "300")
    store = f"sqlite:///{tmp_path}/store.db"
    gateway = start_gateway(f"""
store: {{url: "{store}"}}
traces: {{flush_interval_s: 30}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: up, model: sim-chat}}
""")
    results: list[tuple[float, float, int, str]] = []  # sent, done, status, request id
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                request = urllib.request.Request(
                    f"{gateway.url}/v1/chat/completions", data=json.dumps(CHAT).encode(),
                    headers={"authorization": f"Bearer {API_KEY}",
                             "content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                    outcome = (sent, time.monotonic(), response.status,
                               response.headers["x-request-id"])
            except urllib.error.HTTPError as exc:
                exc.close()
                outcome = (sent, time.monotonic(), exc.code, "")
            except OSError:
                outcome = (sent, time.monotonic(), 0, "")
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    signalled = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(30)
    stop.set()
    for thread in threads:
        thread.join(15)
    in_flight = [r for r in results if r[0] < signalled - 0.05 and r[1] > signalled]
    assert in_flight, "no request was in flight at SIGTERM; the test proves nothing"
    assert all(r[2] == 200 for r in in_flight), [r[2] for r in in_flight]
    completed = {r[3] for r in results if r[2] == 200}
    engine = create_engine(store)
    try:
        stored = {t["request_id"] for t in iter_traces(engine, limit=None)}
    finally:
        engine.dispose()
    assert completed <= stored, f"{len(completed - stored)} completed requests lost their trace"


def test_store_down_for_30_seconds_loses_no_trace(start_sim: Callable[..., Proc],
                                                   start_gateway: Callable[..., Proc],
                                                   tmp_path: Path, postgres_url: str) -> None:
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    sim = start_sim()
    try:
        gateway = start_gateway(f"""
store: {{url: "{via_proxy}"}}
traces: {{flush_interval_s: 0.1, spool_dir: "{tmp_path}/spool"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: up, model: sim-chat}}
""")
        request_ids: list[str] = []

        def load(seconds: float) -> None:
            outcomes = open_loop(gateway, rate=40, seconds=seconds)
            assert all(o.status == 200 for o in outcomes)
            request_ids.extend(o.headers["x-request-id"] for o in outcomes)

        load(2)
        proxy.down()  # the database is gone: connections die, new ones are refused
        load(30)
        spooled = status(gateway)["traces"]["spooled"]
        assert spooled > 0
        proxy.up()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            traces = status(gateway)["traces"]
            if traces["replayed"] >= spooled and traces["spool_bytes"] == 0:
                break
            time.sleep(0.5)
        load(2)
        time.sleep(1.0)
        traces = status(gateway)["traces"]
        assert traces["lost"] == 0 and traces["spool_lost"] == 0 and traces["dropped"] == 0
        engine = create_engine(postgres_url)
        try:
            stored = {t["request_id"] for t in iter_traces(engine, limit=None)}
        finally:
            engine.dispose()
        missing = set(request_ids) - stored
        assert not missing, f"{len(missing)} of {len(request_ids)} traces lost"
        assert 'shipyard_traces_replayed_total' in _metrics(gateway)
    finally:
        proxy.close()


def test_replicas_share_the_cache_through_redis(start_sim: Callable[..., Proc],
                                                start_gateway: Callable[..., Proc],
                                                tmp_path: Path, redis_prefix: str) -> None:
    sim = start_sim()
    config = f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
state: {{backend: redis, redis_url: "redis://127.0.0.1:6379/0", key_prefix: "{redis_prefix}"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  up: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo:
    provider: up
    model: sim-chat
    cache: {{enabled: true, ttl_s: 30}}
"""
    first, second = start_gateway(config), start_gateway(config)
    body = {**CHAT, "temperature": 0}
    [a] = burst(first, 1, body=body)
    [b] = burst(second, 1, body=body)
    assert a.status == b.status == 200
    assert a.headers["x-shipyard-cache"] == "miss" and b.headers["x-shipyard-cache"] == "hit"
    assert a.body["choices"] == b.body["choices"]
    assert sim_stats(sim)["requests"] == 1


def test_adaptive_concurrency_finds_the_upstream_capacity(start_gateway: Callable[..., Proc],
                                                          tmp_path: Path) -> None:
    gateway = start_gateway(f"""
store: {{url: "sqlite:///{tmp_path}/store.db"}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
providers:
  model: {{kind: python, function: "sample_services:capacity_model"}}
models:
  demo:
    provider: model
    admission: {{max_in_flight: 64, max_queue: 256, max_queue_ms: 5000, adaptive: true}}
""")
    outcomes = burst(gateway, 600, concurrency=40)
    assert all(o.status == 200 for o in outcomes)
    [admission] = status(gateway)["models"]["demo"]["admission"]
    assert admission["adaptive"]
    # The model has room for 4: the limit settles near that, far below the ceiling of 64,
    # so requests wait in Shipyard's queue (cheap, bounded, prioritised) not in the model.
    assert 2 <= admission["max_in_flight"] <= 12, admission
