"""SIGTERM during a burst: every request that completed is in the store."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import openai
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from conftest import API_KEY, gateway_config, launch_gateway, launch_sim
from shipyard.store import iter_traces


def test_sigterm_during_burst_loses_no_completed_trace(tmp_path: Path) -> None:
    sim = launch_sim(tmp_path, "--latency", "20")
    store = f"sqlite:///{tmp_path}/store.db"
    # A long flush interval: the traces are still queued when SIGTERM arrives.
    config = gateway_config(sim.port, store).replace("flush_interval_s: 0.05",
                                                     "flush_interval_s: 30")
    gateway = launch_gateway(tmp_path, config)
    completed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0,
                               timeout=10)
        while not stop.is_set():
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="demo", messages=[{"role": "user", "content": "hi"}])
            except openai.APIError:
                continue  # refused or cut by the shutdown: not a completed request
            with lock:
                completed.append(raw.request_id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        # SIGTERM once a burst is under way (a count, not a fixed sleep: CI machines are slow).
        deadline = time.monotonic() + 60
        while len(completed) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        gateway.process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so -SIGTERM is a clean exit.
        assert gateway.process.wait(30) in (0, -signal.SIGTERM)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        stop.set()
        gateway.stop()
        sim.stop()
    assert len(completed) > 50
    engine = create_engine(store)
    try:
        stored = {r["request_id"] for r in iter_traces(engine, limit=None)}
    finally:
        engine.dispose()
    missing = set(completed) - stored
    assert not missing, f"{len(missing)} completed requests have no trace"
    log = gateway.output()
    assert "Finished server process" in log and "traces flushed" in log
    assert "0 dropped, 0 lost" in log


def test_several_workers_serve_and_trace(tmp_path: Path) -> None:
    sim = launch_sim(tmp_path)
    store = f"sqlite:///{tmp_path}/store.db"
    gateway = launch_gateway(tmp_path, gateway_config(sim.port, store,
                                                      extra="state: {per_process: true}"),
                             workers=2)
    try:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
        ids = [client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "hi"}]).request_id
            for _ in range(20)]
        # Whichever worker answers the scrape reports the sum over both workers.
        for _ in range(4):
            request = urllib.request.Request(f"{gateway.url}/metrics",
                                             headers={"authorization": f"Bearer {API_KEY}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                text = response.read().decode()
            total = sum(
                sample.value for family in text_string_to_metric_families(text)
                if family.name == "shipyard_requests" for sample in family.samples
                if sample.name == "shipyard_requests_total" and sample.labels["status"] == "200")
            assert total == 20, text
    finally:
        gateway.stop()
        sim.stop()
    engine = create_engine(store)
    try:
        stored = {r["request_id"] for r in iter_traces(engine, limit=None)}
    finally:
        engine.dispose()
    assert set(ids) <= stored
    assert gateway.output().count("gateway ready") == 2  # two worker processes


def test_keep_alive_requests_right_after_sigterm_get_503_with_connection_close(
        tmp_path: Path) -> None:
    """Clients holding kept-alive connections send their next request just after SIGTERM:
    each gets the documented 503 with Retry-After and `Connection: close`, never a reset."""
    gateway = launch_gateway(tmp_path, gateway_config(None, f"sqlite:///{tmp_path}/s.db"))
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    routes = [("POST", "/v1/chat/completions", body), ("GET", "/v1/models", None),
              ("GET", "/v1/admin/status", None), ("GET", "/v1/traces?limit=1", None)]
    connections = [http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
                   for _ in range(24)]
    try:
        for i, conn in enumerate(connections):
            method, path, payload = routes[i % len(routes)]
            conn.request(method, path, body=payload, headers=headers)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200 and not answer.will_close
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        outcomes: list[tuple[int, str | None, str | None]] = []
        for i, conn in enumerate(connections):
            method, path, payload = routes[i % len(routes)]
            conn.request(method, path, body=payload, headers=headers)  # the same connection
            answer = conn.getresponse()
            data = json.loads(answer.read())
            outcomes.append((answer.status, answer.getheader("connection"),
                             answer.getheader("retry-after")))
            assert data["error"]["code"] == "overloaded", data
        assert outcomes == [(503, "close", "1")] * len(connections)
        with urllib.request.urlopen(f"{gateway.url}/livez", timeout=5) as live:
            assert live.status == 200  # the process is still serving its probes
        # Every client closed its connection after the 503: the shutdown goes on at once
        # instead of waiting out the whole grace.
        for conn in connections:
            conn.close()
        started = time.monotonic()
        assert gateway.process.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
    finally:
        for conn in connections:
            conn.close()
        gateway.stop()
    assert "Traceback" not in gateway.output()


def kill_under_load(tmp_path: Path, durable: str) -> tuple[set[str], set[str]]:
    """SIGKILL a gateway under load, start it again on the same store and spool; returns the
    trace ids of the requests that completed before the kill, and those in the store after."""
    store = f"sqlite:///{tmp_path}/store.db"
    # A long flush interval: most completed requests' traces are still queued at the kill.
    config = gateway_config(None, store).replace(
        "flush_interval_s: 0.05", f"flush_interval_s: 5\n  durable: {durable}")
    gateway = launch_gateway(tmp_path, config)
    completed: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'

    def worker() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            try:
                while not stop.is_set():
                    conn.request("POST", "/v1/chat/completions", body=body, headers={
                        "authorization": f"Bearer {API_KEY}",
                        "content-type": "application/json"})
                    answer = conn.getresponse()
                    answer.read()  # the whole response has arrived: the request completed
                    if answer.status == 200:
                        with lock:
                            completed.add(answer.getheader("x-shipyard-trace-id") or "")
            except (OSError, http.client.HTTPException):
                pass  # cut by the kill: not a completed request
            finally:
                conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        stop.set()
        gateway.stop()
    again = launch_gateway(tmp_path, config)  # replays what the killed process left
    engine = create_engine(store)
    try:
        deadline = time.monotonic() + 30
        while True:
            stored = {r["id"] for r in iter_traces(engine, limit=None)}
            if completed <= stored or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
        again.stop()
    return completed, stored


def test_sigkill_under_load_loses_no_trace_with_durable_traces(tmp_path: Path) -> None:
    completed, stored = kill_under_load(tmp_path, "all")
    assert len(completed) > 100
    missing = completed - stored
    assert not missing, f"{len(missing)} of {len(completed)} completed requests have no trace"
