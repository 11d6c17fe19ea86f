"""Redis killed under a running gateway: a private `redis-server` (its own free port, no
persistence) is killed mid-run with SIGKILL and started again on the same port.

While it is down: rate limits fall back to a per-process limiter (200s), the cache misses
(200s), budgets fail closed (503 with Retry-After, `state_unavailable`), `/readyz` says so, and
the gateway never answers a 5xx of its own beyond those 503s. When it is back: readiness
recovers, budgets reserve again, and the ledger (rebuilt in the empty Redis) holds exactly the
spend of every request that was answered, the ones in flight at the kill included.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from loadgen import burst

from conftest import API_KEY, REQUIRE_SERVICES, Proc, free_port, launch_gateway, launch_sim
from shipyard.store import create_store_engine, migrate
from shipyard.store import tenants as store

PRICE = 300.0


class PrivateRedis:
    """`redis-server` on a port of its own, started and killed by the test."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " and SHIPYARD_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.kill()


def _get(gateway: Proc, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"{gateway.url}{path}",
                                     headers={"authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_redis_killed_mid_run(tmp_path: Path, private_redis: PrivateRedis) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    engine = create_store_engine(url)
    migrate(engine)
    store.create_tenant(engine, "acme")
    _, acme = store.create_key(engine, tenant_id="acme", name="acme", role="client")
    engine.dispose()
    sim = launch_sim(tmp_path, "--latency", "20")
    cipher_key = Fernet.generate_key().decode()
    gateway = launch_gateway(tmp_path, f"""
store: {{url: "{url}"}}
traces: {{flush_interval_s: 0.05, encryption_keys: [{{$env: PAYLOAD_KEY}}]}}
auth: {{api_keys: [{{$env: SHIPYARD_API_KEY}}]}}
state:
  backend: redis
  redis_url: "redis://127.0.0.1:{private_redis.port}/0"
  timeout_s: 0.5
providers:
  sim: {{kind: openai, base_url: "{sim.url}/v1"}}
models:
  demo: {{provider: sim, model: sim-chat, rate_limit: {{rpm: 100000}}}}
  cached: {{provider: sim, model: sim-chat, cache: {{enabled: true, ttl_s: 60}}}}
  private:
    provider: sim
    model: sim-chat
    pii: {{mode: pseudonymize, scope: conversation}}
pricing:
  demo: {{input_per_1m: {PRICE}, output_per_1m: {PRICE}}}
budgets:
  - {{tenant: acme, period: day, limit_usd: 100}}
""", env={"PAYLOAD_KEY": cipher_key})
    chat = {"model": "demo", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello outage"}]}
    acme_headers = {"authorization": f"Bearer {acme}"}
    charged: list[float] = []
    seen: list[tuple[int, Any, dict[str, str]]] = []

    def record(outcomes: list[Any]) -> list[Any]:
        seen.extend((o.status, o.body, o.headers) for o in outcomes)
        return outcomes

    def acme_burst(n: int) -> list[Any]:
        outcomes = record(burst(gateway, n, concurrency=8, body=chat, headers=acme_headers))
        for o in outcomes:
            if o.status == 200:
                usage = o.body["usage"]
                charged.append(usage["total_tokens"] * PRICE / 1e6)
        return outcomes

    try:
        # Redis up: everything works, readiness is green.
        assert {o.status for o in acme_burst(20)} == {200}
        record(burst(gateway, 20, concurrency=8, body=chat))
        assert _get(gateway, "/readyz")[0] == 200

        # Kill it while acme's requests are in flight.
        killer = threading.Timer(0.3, private_redis.kill)
        killer.start()
        during = acme_burst(200)
        killer.join()
        assert {o.status for o in during} <= {200, 503}
        assert any(o.status == 503 for o in during)

        # Down: rate-limited and cached routes fail open, budgets fail closed with a 503.
        limited = record(burst(gateway, 50, concurrency=8, body=chat))
        assert {o.status for o in limited} == {200}, {o.status for o in limited}
        cached = record(burst(gateway, 10, concurrency=4, body={**chat, "model": "cached"}))
        assert {o.status for o in cached} == {200}
        private = {**chat, "model": "private",
                   "messages": [{"role": "user", "content": "I am Jane Roe, jane@example.com"}]}
        turns = record(burst(gateway, 4, concurrency=2, body=private,
                             headers={"x-shipyard-conversation": "c-1"}))
        assert {o.status for o in turns} == {503}  # conversation tables fail closed
        assert turns[0].body["error"]["code"] == "state_unavailable"
        refused = acme_burst(10)
        assert {o.status for o in refused} == {503}
        error = refused[0].body["error"]
        assert error["code"] == "state_unavailable" and "budgets fail closed" in error["message"]
        assert refused[0].headers["retry-after"] == "2"
        status, ready = _get(gateway, "/readyz")
        assert status == 503 and ready["checks"]["state"] is False
        assert ready["state"]["policy"]["rate_limits"] == "local"
        metrics = _get(gateway, "/metrics")[1]
        assert "shipyard_state_up 0.0" in metrics
        assert 'shipyard_state_outage_total{feature="rate_limits",policy="local"}' in metrics

        # Back (empty: nothing was persisted): readiness, budgets and the ledger recover.
        private_redis.start()
        _wait(lambda: _get(gateway, "/readyz")[0] == 200, "readiness did not recover")
        _wait(lambda: {o.status for o in acme_burst(4)} == {200}, "budgets did not recover")
        assert {o.status for o in acme_burst(20)} == {200}

        def ledger_matches() -> bool:
            budget = _get(gateway, "/v1/admin/status")[1]["budgets"][0]
            return bool(abs(budget["spent_usd"] - sum(charged)) < 1e-6
                        and budget["reserved_usd"] == 0)

        _wait(ledger_matches, f"the ledger does not hold the {sum(charged)} charged")
        # No 5xx of Shipyard's own other than the documented 503s.
        for status, body, headers in seen:
            assert status in (200, 503), (status, body)
            if status == 503:
                assert body["error"]["code"] == "state_unavailable"
                assert headers["retry-after"] == "2"
        assert "Traceback" not in gateway.output()
    finally:
        gateway.stop()
        sim.stop()
