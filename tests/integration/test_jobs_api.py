"""The jobs API on a real `shipyard serve` with `shipyard sim` upstream: validation at
creation, per-target concurrency, timeouts and the dead letter, cancelling queued and running
jobs, retrying, the generic `/v1/jobs` route, model jobs (chat and embeddings), metrics and
the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from conftest import API_KEY, REPO, Proc, gateway_config

HEADERS = {"authorization": f"Bearer {API_KEY}"}


def _wait(client: httpx.Client, job_id: str, statuses: tuple[str, ...],
          timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_jobs_api(start_sim: Callable[..., Proc], start_gateway: Callable[..., Proc],
                  tmp_path: Path) -> None:
    sim = start_sim()
    gateway = start_gateway(gateway_config(sim.port, f"sqlite:///{tmp_path}/store.db", extra="""
services:
  sleeper: {function: "sample_services:slow_async"}
  classify: {function: "sample_services:classify",
             input_schema: {type: object, required: [text]}}
work: {lease_s: 3, poll_interval_s: 0.1}
jobs:
  max_attempts: 3
  backoff_base_s: 0.1
  backoff_max_s: 0.2
  targets:
    sleeper: {concurrency: 2}
"""))
    with httpx.Client(base_url=gateway.url, headers=HEADERS, timeout=30) as client:
        # Refused at creation, as the synchronous route would refuse them.
        assert client.post("/v1/services/nope/jobs", json={}).status_code == 404
        bad = client.post("/v1/services/classify/jobs", json={"wrong": 1})
        assert bad.status_code == 422 and "text" in bad.json()["error"]["message"]
        streamed = client.post("/v1/models/demo/jobs", json={
            "messages": [{"role": "user", "content": "x"}], "stream": True})
        assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
        too_long = client.post("/v1/services/classify/jobs?timeout_s=99999", json={"text": "x"})
        assert too_long.status_code == 400 and "jobs.timeout_s" in too_long.json()[
            "error"]["message"]
        assert client.post("/v1/jobs", json={"endpoint": "/v1/nope", "body": {}}).json()[
            "error"]["param"] == "endpoint"

        # Per-target concurrency: at most 2 sleepers run at once, and another target's job
        # is not held up behind them.
        sleepers = [client.post("/v1/services/sleeper/jobs", json={"seconds": 0.6}).json()["id"]
                    for _ in range(6)]
        quick = client.post("/v1/services/classify/jobs", json={"text": "refund"}).json()["id"]
        most = 0
        deadline = time.monotonic() + 30
        while True:
            running = client.get("/v1/jobs", params={"status": "running",
                                                     "target": "sleeper"}).json()["data"]
            most = max(most, len(running))
            states = [client.get(f"/v1/jobs/{j}").json()["status"] for j in sleepers]
            if all(s == "succeeded" for s in states):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        assert 1 <= most <= 2
        first = client.get(f"/v1/jobs/{quick}").json()
        last_sleeper = max(client.get(f"/v1/jobs/{j}").json()["finished_at"] for j in sleepers)
        assert first["status"] == "succeeded" and first["finished_at"] <= last_sleeper

        # A timeout is retried, then dead-lettered with its error; retry runs it again.
        slow = client.post("/v1/services/sleeper/jobs?timeout_s=0.3&max_attempts=2",
                           json={"seconds": 3}).json()
        dead = _wait(client, slow["id"], ("dead",))
        assert dead["attempts"] == 2 and "timed out" in dead["error"]["message"]
        again = client.post(f"/v1/jobs/{slow['id']}/retry")
        assert again.status_code == 202 and again.json()["status"] in ("queued", "running")
        assert again.json()["attempts"] == 0 or again.json()["status"] == "running"
        _wait(client, slow["id"], ("dead",))

        # Cancel a running job, and a queued one behind the limit.
        long = [client.post("/v1/services/sleeper/jobs", json={"seconds": 20}).json()["id"]
                for _ in range(3)]
        _wait(client, long[0], ("running",))
        queued = client.post(f"/v1/jobs/{long[2]}/cancel").json()
        assert queued["status"] == "cancelled"
        asked = client.post(f"/v1/jobs/{long[0]}/cancel").json()
        assert asked["status"] == "running" and asked["cancel_requested"] is True
        assert _wait(client, long[0], ("cancelled",), timeout=10)["error"]["message"]
        client.post(f"/v1/jobs/{long[1]}/cancel")
        finished = client.post(f"/v1/jobs/{long[2]}/cancel")
        assert finished.status_code == 409 and "cancelled" in finished.json()["error"][
            "message"]

        # Model jobs (chat and embeddings) and the generic route; the trace is the job's.
        chat = client.post("/v1/models/demo/jobs", json={
            "messages": [{"role": "user", "content": "hello"}]}).json()
        embed = client.post("/v1/models/demo-embed/jobs", json={"input": "hello"}).json()
        generic = client.post("/v1/jobs", json={
            "endpoint": "/v1/chat/completions", "metadata": {"ticket": "42"},
            "body": {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}}).json()
        done = {j: client.get(f"/v1/jobs/{j}", params={"wait": 20}).json()
                for j in (chat["id"], embed["id"], generic["id"])}
        assert done[chat["id"]]["result"]["choices"][0]["message"]["content"]
        assert done[embed["id"]]["endpoint"] == "/v1/embeddings"
        assert done[embed["id"]]["result"]["data"][0]["embedding"]
        assert done[generic["id"]]["metadata"] == {"ticket": "42"}
        deadline = time.monotonic() + 20  # traces are written off the hot path
        while (found := client.get(f"/v1/traces/{done[chat['id']]['trace_id']}")
               ).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        trace = found.json()
        assert trace["route"] == "job" and trace["status"] == 200, trace

        metrics = client.get("/metrics").text
        assert 'shipyard_jobs_finished_total{status="succeeded",target="sleeper"}' in metrics
        time.sleep(5.5)  # the gauge is counted every 5 s
        assert 'shipyard_jobs{status="dead",target="sleeper"} 1.0' in client.get(
            "/metrics").text

    # The CLI, on the same store.
    shown = subprocess.run([sys.executable, "-m", "shipyard", "jobs", "list", "--status", "dead",
                            "--store-url", f"sqlite:///{tmp_path}/store.db"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
                                "PYTHONPATH": str(REPO / "src")})
    assert shown.returncode == 0 and slow["id"] in shown.stdout, shown.stderr
